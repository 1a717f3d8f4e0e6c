"""The run engine end to end on tiny settings: outputs, resume, faults."""

import json
import os
import signal

import pytest

from helpers import TermAt, kinlm, make_dist
from kinlm_core.engine import checkpoint as ckpt
from kinlm_core.engine.train import RunError, run
from kinlm_core.plugins import get_manager
from kinlm_core.spec import validate


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]



def test_run_writes_everything(tmp_path, tiny_spec):
    tiny_spec["generate"] = [{"type": "sample", "prompt": "ROMEO:", "max_new_tokens": 8}]
    tiny_spec["analyzers"] = [{"type": "hidden_stats", "at": ["end"]}]
    rd = tmp_path / "run"
    result = run(validate(tiny_spec), rd, log=lambda m: None)
    assert result["status"] == "finished" and result["step"] == 6
    for f in ("spec.json", "env.json", "metrics.jsonl", "samples.md", "result.json", "final/model.safetensors"):
        assert (rd / f).exists(), f
    assert list((rd / "tb").glob("events.out.tfevents.*"))
    assert not [p for p in (rd / "tb").iterdir() if p.is_dir()], "hparams must not create a sub-run"
    evals = [m for m in metrics(rd) if "eval/loss" in m]
    assert [m["step"] for m in evals] == [3, 6]
    assert {"eval/ppl", "eval/bpb"} <= set(evals[0])
    assert any("perf/tokens_per_s" in m for m in metrics(rd))
    assert (rd / "analysis/hidden_stats/step_0000006/hidden_stats.png").exists()
    env = json.loads((rd / "env.json").read_text())
    assert env["torch"] and "kinlm-core" in env["plugins"]
    assert ckpt.latest(rd / "checkpoints").name == "step_0000006"
    # the saved spec repeats the run
    assert validate(json.loads((rd / "spec.json").read_text())) == validate(tiny_spec)


def test_never_overwrites_a_run_dir(tmp_path, tiny_spec):
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "precious.txt").write_text("keep")
    with pytest.raises(RunError, match="exists and is not empty"):
        run(validate(tiny_spec), rd, log=lambda m: None)
    assert (rd / "precious.txt").read_text() == "keep"


def test_sigterm_then_resume_matches_uninterrupted(tmp_path, tiny_spec):
    spec = validate(tiny_spec)
    full = run(spec, tmp_path / "full", log=lambda m: None)
    stopper = TermAt(4)
    get_manager().pm.register(stopper)
    try:
        part = run(spec, tmp_path / "part", log=lambda m: None)
    finally:
        get_manager().pm.unregister(stopper)
    assert part["status"].startswith("preempted") and part["step"] == 4
    resumed = run(spec, tmp_path / "part", resume=True, log=lambda m: None)
    assert resumed["step"] == 6
    assert resumed["eval/loss"] == full["eval/loss"]
    steps = [m["step"] for m in metrics(tmp_path / "part") if "train/loss" in m]
    assert steps == sorted(steps), "metrics double back after resume"


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path, tiny_spec):
    killer = ("import os, signal\nfrom kinlm_core import hookimpl\n@hookimpl\ndef kinlm_step_end(run, step, metrics):\n"
              "    if step == 5:\n        os.kill(os.getpid(), signal.SIGKILL)\n")
    make_dist(tmp_path / "site", "kinlm-killer", "kinlm_killer", killer)
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(tiny_spec))
    rd = tmp_path / "run"
    env = {"PYTHONPATH": str(tmp_path / "site"), "KINLM_CACHE": os.environ["KINLM_CACHE"]}
    r = kinlm("run", str(spec_file), "--run-dir", str(rd), env=env)
    assert r.returncode == -signal.SIGKILL
    assert ckpt.latest(rd / "checkpoints").name == "step_0000003"
    r = kinlm("run", str(spec_file), "--resume", str(rd))
    assert r.returncode == 0, r.stderr
    resumed = json.loads(r.stdout.strip().splitlines()[-1])
    full = run(validate(tiny_spec), tmp_path / "full", log=lambda m: None)
    assert resumed["eval/loss"] == full["eval/loss"]


def test_resume_refuses_a_different_spec(tmp_path, tiny_spec):
    rd = tmp_path / "run"
    run(validate(tiny_spec), rd, log=lambda m: None)
    changed = json.loads(json.dumps(tiny_spec))
    changed["model"]["d_model"] = 64
    changed["train"]["lr"] = 1e-3
    changed["train"]["max_steps"] = 8  # allowed to change
    with pytest.raises(RunError, match=r"model\.d_model, train\.lr"):
        run(validate(changed), rd, resume=True, log=lambda m: None)
    longer = json.loads(json.dumps(tiny_spec))
    longer["train"]["max_steps"] = 8
    with pytest.raises(RunError, match=r"train\.max_steps changed from 6 to 8; --resume continues a stopped run .* "
                                       r"add --extend"):
        run(validate(longer), rd, resume=True, log=lambda m: None)


def test_extend_trains_on_at_the_final_learning_rate(tmp_path, tiny_spec):
    """Extending a finished cosine run does not stretch its schedule: steps past the original end run at
    lr x min_lr_ratio, and result.json records the history, which a straight longer run does not share."""
    rd = tmp_path / "run"
    first = run(validate(tiny_spec), rd, log=lambda m: None)
    assert first["schedule_steps"] == 6 and "extended_from" not in first
    lrs_before = {m["step"]: m["train/lr"] for m in metrics(rd) if "train/lr" in m}
    longer = json.loads(json.dumps(tiny_spec))
    longer["train"]["max_steps"] = 9
    longer["train"]["log_every"] = 1
    result = run(validate(longer), rd, resume=True, extend=True, log=lambda m: None)
    assert result["step"] == 9 and result["schedule_steps"] == 6 and result["extended_from"] == [6]
    tc = validate(tiny_spec).train
    final_lr = tc.lr * tc.min_lr_ratio
    lrs = {m["step"]: m["train/lr"] for m in metrics(rd) if "train/lr" in m}
    assert [lrs[s] for s in (7, 8, 9)] == pytest.approx([final_lr] * 3)
    assert {s: lrs[s] for s in lrs_before} == lrs_before  # the first 6 steps' log is kept as it was
    with pytest.raises(RunError, match="train.max_steps 5 is not past the checkpoint's step 9"):
        shorter = json.loads(json.dumps(longer))
        shorter["train"]["max_steps"] = 5
        run(validate(shorter), rd, resume=True, extend=True, log=lambda m: None)


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path, tiny_spec):
    tiny_spec["train"]["lr"] = 1e6
    tiny_spec["train"]["grad_clip"] = 0
    tiny_spec["train"]["max_steps"] = 60
    rd = tmp_path / "run"
    with pytest.raises(RunError, match="loss is (nan|inf)"):
        run(validate(tiny_spec), rd, log=lambda m: None)
    assert json.loads((rd / "result.json").read_text())["status"] == "stopped: non-finite loss"


def test_corrupt_checkpoint_names_the_file(tmp_path, tiny_spec):
    rd = tmp_path / "run"
    run(validate(tiny_spec), rd, log=lambda m: None)
    weights = ckpt.latest(rd / "checkpoints") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    r = kinlm("generate", str(rd), "--prompt", "Hi", "--strict-checkpoint")  # else: the older one (test_checkpoints.py)
    assert r.returncode == 2 and str(weights) in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_distributed_two_cpu_processes(tmp_path, tiny_spec):
    import subprocess
    import sys

    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(tiny_spec))
    rd = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "kinlm_core.cli",
                        "run", str(spec_file), "--run-dir", str(rd)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    results = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(results) == 1 and results[0]["status"] == "finished"  # rank 0 alone reports and writes
    assert "2 ranks" in r.stderr
    steps = [m["step"] for m in metrics(rd) if "train/loss" in m]
    assert steps == sorted(set(steps))
    assert ckpt.latest(rd / "checkpoints").name == "step_0000006"
