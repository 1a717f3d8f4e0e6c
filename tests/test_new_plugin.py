"""tools/new_plugin.py makes, for every component kind, a plugin that passes its conformance check,
loads as a distribution, and trains in a spec that uses all of them."""

import pytest

import json
import os
import subprocess
import sys

from helpers import ROOT, kinlm, make_dist

from kinlm_core.api import KINDS


@pytest.mark.slow
def test_a_skeleton_of_every_kind_passes_conformance_registers_and_trains(tmp_path):
    roots = {}
    for kind in KINDS:
        r = subprocess.run([sys.executable, str(ROOT / "tools/new_plugin.py"), f"toy_{kind}", "--kind", kind,
                            "--dir", str(tmp_path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        roots[kind] = tmp_path / f"toy_{kind}"
        assert r.stdout.startswith(f"created {roots[kind]}: one {kind}, `toy_{kind}`")
    pyproject = (roots["model"] / "pyproject.toml").read_text()
    assert pyproject.count('toy_model = "kinlm_toy_model.plugin"') == 1 and 'test = ["pytest' in pyproject
    path = os.pathsep.join(str(r) for r in roots.values())
    t = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        *[str(r / "tests") for r in roots.values()]],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, cwd=tmp_path)
    assert t.returncode == 0 and f"{len(KINDS)} passed" in t.stdout, t.stdout[-3000:]
    # installed (a dist-info with the entry point each), kinlm lists them
    for kind in KINDS:
        make_dist(tmp_path / "site", f"kinlm-toy-{kind.replace('_', '-')}", f"toy_{kind}_shim", f"from kinlm_toy_{kind}.plugin import *\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), path]),
           "KINLM_CACHE": os.environ.get("KINLM_CACHE", str(tmp_path / "cache"))}
    infos = {p["name"]: p for p in json.loads(kinlm("plugins", "--json", env=env).stdout)}
    for kind in KINDS:
        assert infos[f"kinlm-toy-{kind.replace('_', '-')}"]["components"] == {kind: [f"toy_{kind}"]}
    # every skeleton but the model (the curriculum's default prefixes name gpt's embeddings) in one run
    spec = {"name": "toys", "seed": 1, "data": {"type": "toy_data_source"}, "tokenizer": {"type": "toy_tokenizer"},
            "model": {"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16, "block_size": 8},
            "objective": {"type": "toy_objective", "skip": 2}, "regularizers": [{"type": "toy_regularizer"}],
            "curriculum": {"type": "toy_curriculum", "first_fraction": 0.5},
            "train": {"max_steps": 2, "batch_size": 2, "block_size": 8, "warmup_steps": 0, "log_every": 1},
            "eval": {"every": 2, "batches": 1}, "analyzers": [{"type": "toy_analyzer"}],
            "generate": [{"type": "toy_generator", "prompt": "The", "max_new_tokens": 4}]}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    r = kinlm("run", str(tmp_path / "s.json"), "--run-dir", str(tmp_path / "run"), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ms = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["train/phase"] for m in ms if "train/phase" in m] == [0, 1]
    assert all("reg/toy_regularizer" in m for m in ms if "train/loss" in m)
    assert json.loads(next((tmp_path / "run" / "analysis" / "toy_analyzer").glob("step_*/metrics.json")).read_text())[
        "tokens"] > 0
    assert subprocess.run([sys.executable, str(ROOT / "tools/new_plugin.py"), "toy_model", "--dir", str(tmp_path)],
                          capture_output=True).returncode == 2
