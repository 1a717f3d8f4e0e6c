"""tools/new_plugin.py makes a plugin that passes the conformance kit and loads as a distribution."""

import json
import os
import subprocess
import sys

from helpers import ROOT, kinlm, make_dist


def test_skeleton_passes_conformance_and_registers(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools/new_plugin.py"), "toy_method", "--dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "toy_method"
    assert (root / "pyproject.toml").read_text().count('toy_method = "kinlm_toy_method.plugin"') == 1
    env = {**os.environ, "PYTHONPATH": str(root)}
    t = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert t.returncode == 0, t.stdout[-2000:]
    # installed (a dist-info with the entry point), kinlm lists it
    make_dist(tmp_path / "site", "kinlm-toy-method", "toy_shim", "from kinlm_toy_method.plugin import *\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(root)])}
    infos = {p["name"]: p for p in json.loads(kinlm("plugins", "--json", env=env).stdout)}
    assert infos["kinlm-toy-method"]["components"] == {"model": ["toy_method"]}
    assert subprocess.run([sys.executable, str(ROOT / "tools/new_plugin.py"), "toy_method", "--dir", str(tmp_path)],
                          capture_output=True).returncode == 2
