"""Checkpoints you can trust, full disks and signals (issue 31): checksums and fallback, disk-full
stops with exit 3, atomic small files, SIGTERM during the final evaluation or an analyzer."""

import errno
import json
import os
import shutil
import signal
import time
from collections import namedtuple

import pytest
import torch

from helpers import TermAt, kinlm, make_dist
from kinlm_core import hookimpl
from kinlm_core.engine import checkpoint as ckpt
from kinlm_core.engine import train as train_mod
from kinlm_core.engine.train import run
from kinlm_core.errors import CheckpointError, RunStopped
from kinlm_core.plugins import get_manager
from kinlm_core.spec import validate


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def flip(path, at=None, n=4096):
    """Invert n bytes of a file in place (a bit-rotted disk block)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    n = min(n, len(data) - at)
    data[at:at + n] = bytes(b ^ 0xFF for b in data[at:at + n])
    path.write_bytes(bytes(data))


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))


def saved(tmp_path, *steps):
    model = tiny_model()
    root = tmp_path / "checkpoints"
    for s in steps:
        ckpt.save(root, s, model, {"step": s, "blob": torch.randn(2048)}, keep=5)
    return root


def metrics(rd):
    return [json.loads(ln) for ln in (rd / "metrics.jsonl").read_text().splitlines()]


# --- checksums --------------------------------------------------------------------------------------------


def test_the_manifest_records_every_file_s_size_and_sha256(tmp_path):
    import hashlib

    path = saved(tmp_path, 3) / "step_0000003"
    man = json.loads((path / "manifest.json").read_text())
    assert man["step"] == 3 and sorted(man["files"]) == ["model.safetensors", "state.pt"]
    for name, rec in man["files"].items():
        data = (path / name).read_bytes()
        assert rec == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ckpt.verify(path)  # intact: no error


@pytest.mark.parametrize("name", ["model.safetensors", "state.pt"])
def test_flipped_bytes_are_named_in_one_line(tmp_path, name):
    path = saved(tmp_path, 3) / "step_0000003"
    flip(path / name)
    with pytest.raises(CheckpointError) as e:
        ckpt.verify(path)
    assert str(e.value) == f"{path / name}: damaged (its sha256 differs from the one in manifest.json)"


def test_a_truncated_file_is_named_with_its_size(tmp_path):
    path = saved(tmp_path, 3) / "step_0000003"
    f = path / "state.pt"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"state\.pt: damaged \(100 bytes, the manifest says {size}"):
        ckpt.verify(path)


def test_a_checkpoint_without_manifest_from_an_older_kinlm_still_loads(tmp_path):
    path = saved(tmp_path, 3) / "step_0000003"
    (path / "manifest.json").unlink()
    ckpt.verify(path)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    assert ckpt.load(path, model)["step"] == 3
    assert torch.equal(model[0].weight, tiny_model()[0].weight)
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:50])
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or truncated"):
        ckpt.verify(path)  # without a manifest, truncation is still caught by decoding


def test_newest_intact_skips_the_damaged_newest_with_a_warning_or_refuses_when_strict(tmp_path):
    root = saved(tmp_path, 3, 6)
    flip(root / "step_0000006" / "state.pt")
    warnings = []
    assert ckpt.newest_intact(root, warn=warnings.append) == root / "step_0000003"
    assert len(warnings) == 1 and str(root / "step_0000006" / "state.pt") in warnings[0]
    assert warnings[0].endswith(f"using {root / 'step_0000003'}")
    with pytest.raises(CheckpointError, match="step_0000006/state.pt: damaged .*--strict-checkpoint"):
        ckpt.newest_intact(root, strict=True)
    flip(root / "step_0000003" / "model.safetensors")
    with pytest.raises(CheckpointError, match="no intact checkpoint: .*step_0000006.*step_0000003"):
        ckpt.newest_intact(root)


# --- fallback, end to end ------------------------------------------------------------------------------------



def preempted_at(spec, rd, step):
    stopper = TermAt(step)
    get_manager().pm.register(stopper)
    try:
        return run(spec, rd, log=lambda m: None)
    finally:
        get_manager().pm.unregister(stopper)


def test_resume_falls_back_from_a_bit_flipped_checkpoint_to_the_uninterrupted_loss(tmp_path, tiny_spec):
    spec = validate(tiny_spec)
    full = run(spec, tmp_path / "full", log=lambda m: None)
    rd = tmp_path / "part"
    assert preempted_at(spec, rd, 5)["status"].startswith("preempted")
    damaged = rd / "checkpoints" / "step_0000005" / "state.pt"
    flip(damaged)
    with pytest.raises(CheckpointError, match=f"{damaged}: damaged"):
        run(spec, rd, resume=True, strict_checkpoint=True, log=lambda m: None)
    said = []
    resumed = run(spec, rd, resume=True, log=said.append)
    assert any(m.startswith("warning: skipped 1 damaged checkpoint") and str(damaged) in m for m in said)
    assert any(m.startswith(f"resuming {rd} from step_0000003") for m in said)
    assert resumed["step"] == 6 and resumed["eval/loss"] == full["eval/loss"]


def test_eval_and_export_fall_back_with_a_warning_or_refuse_with_the_flag(tmp_path, tiny_spec):
    rd = tmp_path / "run"
    run(validate(tiny_spec), rd, log=lambda m: None)
    shutil.rmtree(rd / "final")
    weights = rd / "checkpoints" / "step_0000006" / "model.safetensors"
    flip(weights)
    r = kinlm("eval", str(rd), "--batches", "1")
    assert r.returncode == 0, r.stderr
    assert f"kinlm: warning: skipped 1 damaged checkpoint ({weights}: damaged" in r.stderr
    assert json.loads(r.stdout)["step"] == 3
    r = kinlm("export", str(rd), "--strict-checkpoint")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"kinlm: {weights}: damaged (its sha256 differs from the one in "
                                             "manifest.json) (--strict-checkpoint: not falling back to an older "
                                             "checkpoint)"]


# --- full disks ------------------------------------------------------------------------------------------------

Usage = namedtuple("Usage", "total used free")


def test_a_full_disk_stops_before_the_checkpoint_keeping_the_last(tmp_path, tiny_spec, monkeypatch):
    rd = tmp_path / "run"
    first = rd / "checkpoints" / "step_0000003"
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: Usage(10**9, 10**9, 1000 if first.exists() else 10**9))  # full after the first
    with pytest.raises(RunStopped) as e:
        run(validate(tiny_spec), rd, log=lambda m: None)
    size = ckpt.size_of(first)
    assert str(e.value) == (f"{rd / 'checkpoints'}: disk full: 0.0 MB free, the last checkpoint (step_0000003) takes "
                            f"{size / 1e6:.1f} MB; stopped before writing the next one (the last checkpoint {first} "
                            "is kept)")
    assert sorted(p.name for p in (rd / "checkpoints").iterdir()) == ["step_0000003"]
    ckpt.verify(first)
    result = json.loads((rd / "result.json").read_text())
    assert result["status"] == "stopped: cannot write the checkpoint of step 6" and result["step"] == 6


def test_an_oserror_while_writing_removes_the_tmp_folder_and_keeps_the_earlier_checkpoint(tmp_path, monkeypatch):
    root = saved(tmp_path, 3)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(ckpt.CheckpointWriteError) as e:
        ckpt.save(root, 6, tiny_model(), {"step": 6})
    assert str(e.value) == (f"{root / 'step_0000006'}: cannot write the checkpoint (No space left on device); "
                            f"the last checkpoint {root / 'step_0000003'} is kept")
    assert [p.name for p in root.iterdir()] == ["step_0000003"]


def test_small_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    f = tmp_path / "result.json"
    ckpt.atomic_write_text(f, '{"status": "finished"}\n')
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError):
        ckpt.atomic_write_text(f, '{"status": "stopped"}\n')
    assert f.read_text() == '{"status": "finished"}\n' and [p.name for p in tmp_path.iterdir()] == ["result.json"]


DISK_FULL_PLUGIN = """
import errno, os, shutil
from collections import namedtuple

# a full disk from the start (env KINLM_TEST_FULL=1): no room for a checkpoint, the lock's pid unwritable
if os.environ.get("KINLM_TEST_FULL") == "1":
    shutil.disk_usage = lambda p: namedtuple("U", "total used free")(10**9, 10**9, 0)

    def pwrite(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    os.pwrite = pwrite
"""


@pytest.mark.slow
def test_cli_on_a_full_disk_exits_3_in_one_line_and_resume_too(tmp_path, tiny_spec):
    make_dist(tmp_path / "site", "kinlm-full-disk", "kinlm_full_disk", DISK_FULL_PLUGIN)
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(tiny_spec))
    rd = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    r = kinlm("run", str(spec_file), "--run-dir", str(rd), "--set", "train.max_steps=3", env={**env, "KINLM_TEST_FULL": "1"})
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"kinlm: {rd / 'checkpoints'}: disk full: 0.0 MB free, a "
                                                        "checkpoint (estimated: 3x the weights) takes")
    assert json.loads((rd / "result.json").read_text())["status"].startswith("stopped")
    r = kinlm("run", str(spec_file), "--run-dir", str(tmp_path / "ok"), "--set", "train.max_steps=3", env=env)
    assert r.returncode == 0, r.stderr
    r = kinlm("run", str(spec_file), "--resume", str(tmp_path / "ok"), "--set", "train.max_steps=6", "--extend",
              env={**env, "KINLM_TEST_FULL": "1"})  # the lock's pid and the next checkpoint: no room
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "disk full" in r.stderr.strip().splitlines()[-1]
    assert [p.name for p in (tmp_path / "ok" / "checkpoints").iterdir()] == ["step_0000003"]


# --- non-finite loss --------------------------------------------------------------------------------------------


def test_a_non_finite_loss_names_the_checkpoint_only_when_one_exists(tmp_path, tiny_spec):
    tiny_spec["train"].update(lr=1e6, grad_clip=0, max_steps=60, checkpoint_every=50)
    rd = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        run(validate(tiny_spec), rd, log=lambda m: None)
    assert "No checkpoint was written (the first was due at step 50)" in str(e.value)
    assert "kept" not in str(e.value) and not (rd / "checkpoints").exists()


# --- signals during evaluation and analyzers -------------------------------------------------------------------


def term_in(monkeypatch, name, when):
    """Make train.py's ``name`` (evaluate, run_analyzers) send SIGTERM and then take long, on the call for
    which ``when(n, args)`` (n counts the calls from 1) is true."""
    real = getattr(train_mod, name)
    calls = []

    def slow(*a, **k):
        calls.append(1)
        if when(len(calls), a):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # a long BLiMP: without the fix, the run ends after this and exits 0
            raise AssertionError("the signal did not stop the evaluation")
        return real(*a, **k)

    monkeypatch.setattr(train_mod, name, slow)


def test_sigterm_during_the_final_evaluation_stops_and_resume_evaluates_again(tmp_path, tiny_spec, monkeypatch):
    spec = validate(tiny_spec)
    full = run(spec, tmp_path / "full", log=lambda m: None)
    rd = tmp_path / "run"
    with monkeypatch.context() as m:
        term_in(m, "evaluate", lambda n, a: n == 2)  # the evaluations of steps 3 and 6
        t0 = time.time()
        part = run(spec, rd, log=lambda m: None)
    assert time.time() - t0 < 25 and part["status"] == "preempted (SIGTERM) at step 6"
    state = ckpt.load_state(rd / "checkpoints" / "step_0000006")
    assert state["eval_pending"] and state["step"] == 6
    resumed = run(spec, rd, resume=True, log=lambda m: None)
    assert resumed["status"] == "finished" and resumed["eval/loss"] == full["eval/loss"]
    assert [r["step"] for r in metrics(rd) if "eval/loss" in r] == [3, 6]
    assert json.loads((rd / "result.json").read_text())["eval/loss"] == full["eval/loss"]


def test_sigterm_during_an_end_analyzer_stops_and_resume_runs_it(tmp_path, tiny_spec, monkeypatch):
    tiny_spec["analyzers"] = [{"type": "hidden_stats", "at": ["end"]}]
    spec = validate(tiny_spec)
    rd = tmp_path / "run"
    with monkeypatch.context() as m:
        term_in(m, "run_analyzers", lambda n, a: a[6] == "end")
        part = run(spec, rd, log=lambda m: None)
    assert part["status"] == "preempted (SIGTERM) at step 6" and "eval/loss" in part
    assert not (rd / "final").exists()
    resumed = run(spec, rd, resume=True, log=lambda m: None)
    assert resumed["status"] == "finished" and resumed["eval/loss"] == part["eval/loss"]
    assert (rd / "analysis/hidden_stats/step_0000006/metrics.json").exists() and (rd / "final").is_dir()


def test_a_run_killed_after_its_last_checkpoint_resumes_with_its_eval_results(tmp_path, tiny_spec, monkeypatch):
    """kill -9 during the end analyzers: the resumed run's result.json has eval/* (from the checkpoint)."""
    spec = validate(tiny_spec)
    rd = tmp_path / "run"

    class Killed(BaseException):
        pass

    with monkeypatch.context() as m:
        m.setattr(train_mod.Trainer, "finish", lambda self: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            run(spec, rd, log=lambda m: None)
    (rd / "result.json").unlink()  # a kill -9 writes nothing more
    resumed = run(spec, rd, resume=True, log=lambda m: None)
    assert resumed["status"] == "finished" and "eval/loss" in resumed
    assert json.loads((rd / "result.json").read_text())["eval/loss"] == resumed["eval/loss"]


TERM_IN_EVAL = """
import os, signal, time
from kinlm_core import hookimpl

@hookimpl
def kinlm_eval(run, step, metrics):
    if step == int(os.environ.get("KINLM_TEST_TERM_AT", "-1")):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
"""


@pytest.mark.slow
def test_cli_sigterm_during_the_final_evaluation_exits_75_and_resume_completes(tmp_path, tiny_spec):
    make_dist(tmp_path / "site", "kinlm-term", "kinlm_term", TERM_IN_EVAL)
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(tiny_spec))
    rd = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    r = kinlm("run", str(spec_file), "--run-dir", str(rd), env={**env, "KINLM_TEST_TERM_AT": "6"})
    assert r.returncode == 75, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["status"] == "preempted (SIGTERM) at step 6"
    r = kinlm("run", str(spec_file), "--resume", str(rd), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((rd / "result.json").read_text())
    assert result["status"] == "finished" and "eval/loss" in result
