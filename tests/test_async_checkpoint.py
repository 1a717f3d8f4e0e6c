"""Issue 34 item 4: asynchronous checkpoints. The same files as a synchronous save, written by a thread
from host copies taken at the step; the hook fires after the rename; a failed write stops the run (exit
3); a kill -9 during a write leaves the older checkpoints, and resuming from them is exact."""
import json
import os
import signal

import pytest
import torch

import kinlm_core
from helpers import kinlm, make_dist
from kinlm_core import hookimpl
from kinlm_core.engine import checkpoint as ckpt
from kinlm_core.engine.train import RunStopped, run
from kinlm_core.plugins import get_manager
from kinlm_core.spec import validate


def files(step_dir):
    return {f.name: f.read_bytes() for f in sorted(step_dir.iterdir())}


def test_async_checkpoints_are_the_synchronous_ones_and_the_hook_sees_them_renamed(tmp_path, tiny_spec):
    seen = []

    class Watch:
        @hookimpl
        def kinlm_checkpoint(self, run, step, path):
            tmp = path.parent / f".tmp-{path.name}"
            seen.append((step, path.name, (path / ckpt.MANIFEST).is_file(), tmp.exists()))

    sync = run(validate(tiny_spec), tmp_path / "sync", log=lambda m: None)
    tiny_spec["train"]["async_checkpoint"] = True
    pm = get_manager().pm
    pm.register(Watch(), name="watch-async")
    try:
        asy = run(validate(tiny_spec), tmp_path / "async", log=lambda m: None)
    finally:
        pm.unregister(name="watch-async")
    assert seen == [(3, "step_0000003", True, False), (6, "step_0000006", True, False)]
    assert asy["eval/loss"] == sync["eval/loss"]
    for name in ("step_0000003", "step_0000006"):  # the same weights byte for byte, the same state but the clocks
        a, s = tmp_path / "async" / "checkpoints" / name, tmp_path / "sync" / "checkpoints" / name
        ckpt.verify(a)
        assert (a / "model.safetensors").read_bytes() == (s / "model.safetensors").read_bytes()
        sa, ss = ckpt.load_state(a), ckpt.load_state(s)
        for k in ("train_seconds", "wall_seconds"):
            sa.pop(k), ss.pop(k)
        assert same(sa, ss)


def same(x, y) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
    if torch.is_tensor(x):
        return torch.is_tensor(y) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y


def test_host_copies_keep_tied_weights_and_reuse_their_buffers():
    model = kinlm_core.component("model", "gpt")(n_layer=1, n_head=2, d_model=16, block_size=8).build(40)
    sd = model.state_dict()
    tied = [k for k in sd if sd[k].untyped_storage().data_ptr() == sd["lm_head.weight"].untyped_storage().data_ptr()] \
        if "lm_head.weight" in sd else []
    copier = ckpt.HostCopier()
    first, cuda = copier.copy(sd)
    assert not cuda and all(torch.equal(first[k], sd[k]) for k in sd)
    if len(tied) > 1:
        assert len({first[k].untyped_storage().data_ptr() for k in tied}) == 1
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the copy is a copy: later updates do not reach it
    assert not all(torch.equal(first[k], model.state_dict()[k]) for k in sd)
    second, _ = copier.copy(model.state_dict())
    assert [second[k].untyped_storage().data_ptr() for k in sd] == [first[k].untyped_storage().data_ptr() for k in sd]


def test_a_failed_background_write_stops_the_run(tmp_path, tiny_spec, monkeypatch):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    tiny_spec["train"]["async_checkpoint"] = True
    rd = tmp_path / "run"
    with pytest.raises(RunStopped, match=r"step_0000003: cannot write the checkpoint \(No space left on device\); "
                                         r"no checkpoint was written"):
        run(validate(tiny_spec), rd, log=lambda m: None)
    assert json.loads((rd / "result.json").read_text())["status"] == "stopped: cannot write the checkpoint of step 3"
    assert ckpt.all_checkpoints(rd / "checkpoints") == [] and not list((rd / "checkpoints").glob(".tmp-*"))


SLOW_WRITER = """
import os, signal, time
from kinlm_core import hookimpl
from kinlm_core.engine import checkpoint as ckpt

_save_model = ckpt.save_model

def slow_save_model(model, path):
    _save_model(model, path)
    if "step_0000006" in str(path):
        time.sleep(20)  # the write of step 6 is still in flight when step 8 kills the process

ckpt.save_model = slow_save_model

@hookimpl
def kinlm_step_end(run, step, metrics):
    if step == 8:
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_kill_during_an_async_write_resumes_exactly(tmp_path, tiny_spec):
    tiny_spec["train"].update(max_steps=9, async_checkpoint=True)
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(tiny_spec))
    make_dist(tmp_path / "site", "kinlm-slow-writer", "kinlm_slow_writer", SLOW_WRITER)
    rd = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    r = kinlm("run", str(spec_file), "--run-dir", str(rd), env=env)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert ckpt.latest(rd / "checkpoints").name == "step_0000003"  # training went on to step 8 during the write
    assert (rd / "checkpoints" / ".tmp-step_0000006" / "model.safetensors").exists()
    r = kinlm("run", str(spec_file), "--resume", str(rd))
    assert r.returncode == 0, r.stderr
    resumed = json.loads(r.stdout.strip().splitlines()[-1])
    tiny_spec["train"]["async_checkpoint"] = False
    full = run(validate(tiny_spec), tmp_path / "full", log=lambda m: None)
    assert resumed["status"] == "finished" and resumed["eval/loss"] == full["eval/loss"]
    final = {k: v for k, v in files(rd / "checkpoints" / "step_0000009").items() if k == "model.safetensors"}
    assert final == {k: v for k, v in files(tmp_path / "full" / "checkpoints" / "step_0000009").items()
                     if k == "model.safetensors"}


def test_sigterm_with_async_checkpoints_waits_for_the_write_and_resumes_exactly(tmp_path, tiny_spec):
    """SIGTERM at step 4: the run waits for its checkpoint's write before it stops; resume = uninterrupted."""
    class StopAt4:
        @hookimpl
        def kinlm_step_end(self, run, step, metrics):
            if step == 4:
                os.kill(os.getpid(), signal.SIGTERM)

    full = run(validate(tiny_spec), tmp_path / "full", log=lambda m: None)
    tiny_spec["train"]["async_checkpoint"] = True
    spec = validate(tiny_spec)
    pm = get_manager().pm
    pm.register(StopAt4(), name="stop-at-4")
    try:
        part = run(spec, tmp_path / "part", log=lambda m: None)
    finally:
        pm.unregister(name="stop-at-4")
    assert part["status"] == "preempted (SIGTERM) at step 4"
    ckpt.verify(tmp_path / "part" / "checkpoints" / "step_0000004")
    assert not list((tmp_path / "part" / "checkpoints").glob(".tmp-*"))
    resumed = run(spec, tmp_path / "part", resume=True, log=lambda m: None)
    assert resumed["step"] == 6 and resumed["eval/loss"] == full["eval/loss"]
