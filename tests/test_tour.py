"""The README tour, verbatim, in order, in a fresh folder holding only `specs/` (what a new user
has after cloning). `KINLM_SET` (docs/specs.md) shrinks every run to a few steps; the README's
text is read from the file, so a tour that stops working fails here."""

import pytest

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from helpers import ROOT

SHRINK = "train.max_steps=4 train.batch_size=4 eval.every=2 eval.batches=2"  # fields every spec has
INTERRUPTED = "train.max_steps=16 train.batch_size=4 eval.every=8 eval.batches=2 train.log_every=1"  # stopped, resumed
EXTENDED = "train.max_steps=8 train.batch_size=4 eval.every=2 eval.batches=2"  # the 4-step run, extended


def interrupted(cmd: str, cwd, env) -> subprocess.CompletedProcess:
    """Run a `kinlm run SPEC` line, send it SIGINT (Ctrl-C) once its first step is logged, return how it ended."""
    name = json.loads((cwd / cmd.split()[2]).read_text())["name"]
    proc = subprocess.Popen(["bash", "-c", "exec " + cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(p.stat().st_size for p in cwd.glob(f"runs/{name}-*/metrics.jsonl")):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def tour_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## A tour\n+```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no '## A tour' bash block"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_readme_tour_works_verbatim(tmp_path, tmp_path_factory):
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    port = _free_port()
    env = {**os.environ, "KINLM_SET": SHRINK, "KINLM_TENSORBOARD_PORT": str(port),
           "KINLM_CACHE": str(tmp_path_factory.getbasetemp() / "cache"), "PYTHON_FOR_KINLM": sys.executable}
    prelude = 'kinlm() { "$PYTHON_FOR_KINLM" -m kinlm_core.cli "$@"; }\n'
    commands = tour_commands()
    assert len(commands) >= 8
    for cmd in commands:
        if cmd.startswith("kinlm run") and "Ctrl-C" in cmd:  # a real interruption: SIGINT once it trains, then the next line resumes it
            r = interrupted(cmd.split("#")[0].strip(), tmp_path, {**env, "KINLM_SET": INTERRUPTED})
            assert r.returncode == 75 and "checkpoint saved at step" in r.stderr, f"{cmd}\n{r.stderr[-3000:]}"
            continue
        if cmd.startswith("kinlm tensorboard"):
            proc = subprocess.Popen(["bash", "-c", prelude + "exec " + cmd], cwd=tmp_path, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            deadline = time.time() + 120
            while not _listening(port) and time.time() < deadline and proc.poll() is None:
                time.sleep(0.3)
            assert _listening(port), f"{cmd}: TensorBoard never listened on {port}"
            proc.send_signal(signal.SIGTERM)  # to kinlm only: it must stop its server itself
            assert proc.wait(timeout=30) == 0
            deadline = time.time() + 15
            while _listening(port) and time.time() < deadline:
                time.sleep(0.2)
            assert not _listening(port), f"{cmd}: the TensorBoard server outlived kinlm"
            continue
        cmd_env = {**env, "KINLM_SET": INTERRUPTED if "--resume" in cmd and "--extend" not in cmd
                   else EXTENDED if "--extend" in cmd else SHRINK}
        r = subprocess.run(["bash", "-c", prelude + cmd], cwd=tmp_path, env=cmd_env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"{cmd}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, f"{cmd}\n{r.stderr[-3000:]}"
        check(cmd, r, tmp_path)
    # the tour leaves nothing in the clone but runs/ and the editor's schema, which .gitignore ignores
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "spec.schema.json", "specs"]
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "runs/" in ignored and "spec.schema.json" in ignored


def check(cmd: str, r, root) -> None:
    """What each kind of tour command must have done."""
    words = cmd.split()
    if words[1] == "run" and "--extend" in words:
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["status"] == "finished" and result["step"] == 8 and result["extended_from"] == [4]
        assert result["schedule_steps"] == 4
    elif words[1] == "run" and "--resume" in words:
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert "resuming" in r.stderr and result["status"] == "finished" and result["step"] == 16, r.stderr[-2000:]
    elif words[1] == "run":
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["status"] == "finished" and result["step"] == 4
        name = json.loads((root / words[2]).read_text())["name"]
        assert (root / "runs" / f"{name}@latest" / "result.json").exists()
        assert f"latest run of {name}: runs/{name}@latest" in r.stderr
    elif words[1] == "generate":
        assert r.stdout.startswith("ROMEO:") and len(r.stdout) > len("ROMEO:\n")
    elif words[1] == "compare":
        rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in r.stdout.splitlines()
                if ln.startswith("| ") and not ln.startswith("| rank")]
        assert sorted(row[1].split("/")[1].rsplit("-", 2)[0] for row in rows) == ["hamiltonian-tiny", "quickstart"]
        assert all(row[4] == "finished" for row in rows)
    elif words[1] == "eval" and "--blimp" in words:
        out = json.loads(r.stdout)
        assert out["pairs"] == 67 * 50 and 0 <= out["blimp/overall"] <= 1 and "blimp/syntax" in out
        assert list((root / "runs" / "quickstart@latest" / "analysis" / "blimp").glob("step_*/blimp.png"))
    elif words[1] == "eval":
        out = json.loads(r.stdout)
        assert out["split"] == "test" and out["bpb"] > 0
    elif words[1] == "analyze":
        assert list((root / "runs" / "quickstart@latest" / "hidden_stats").rglob("*.png")), "no figure written"
    elif words[1] == "validate":
        assert r.stdout.count("ok: ") == len(list((root / "specs").glob("*.json")))
        assert json.loads((root / "spec.schema.json").read_text())["title"] == "kinlm experiment spec"
