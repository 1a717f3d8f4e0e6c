"""train.precision "fp16": float16 autocast with a GradScaler, on every first-party model (on CPU).

The models are the repository's tiny specs and the quickstart, shrunk to a few steps of 32 tokens.
Tolerance: with no skipped step, the fp16 run's eval loss is within 0.1% (relative) of the fp32
run's. A GradScaler starts at 2**16 and halves on each step whose gradients overflow, so a model with
large early gradients (context_vector) skips its first steps; such a run is compared with an fp32
run of as many updates (constant learning rate), within 5%: the skipped steps consumed batches, so
the updates saw other data.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import TermAt, ROOT
from kinlm_core.engine import checkpoint as ckpt
from kinlm_core.engine.runtime import resolve_precision
from kinlm_core.engine.train import Trainer, run
from kinlm_core.plugins import get_manager
from kinlm_core.spec import validate

SPECS = sorted(p.name for p in (ROOT / "specs").glob("*_tiny.json")) + ["quickstart.json"]
FAST = {"quickstart.json"}  # the rest run in the slow tier
MODELS = [pytest.param(s, marks=() if s in FAST else pytest.mark.slow) for s in SPECS]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def shrunk(name: str, steps: int, **train) -> dict:
    """specs/NAME at test size: byte tokenizer, 32-token blocks, 2 sequences, no samples or analyzers."""
    d = json.loads((ROOT / "specs" / name).read_text())
    d.pop("generate", None)
    d.pop("analyzers", None)
    seq2seq = name.startswith("vt_t5")  # its tasks need the spec's tokenizer and documents
    d["data"]["max_docs"] = 400 if seq2seq else 200
    if not seq2seq:
        d["tokenizer"] = {"type": "byte"}
        if "block_size" in d["model"]:
            d["model"]["block_size"] = 32
        d["train"]["block_size"] = 32
    if (d.get("curriculum") or {}).get("type") == "cvfp_two_phase":  # both phases within the steps
        d["curriculum"].update(max_iterations=3, min_iterations=2, train_tokens=2000, batch_tokens=256)
    d["train"].update({"max_steps": steps, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "warmup_steps": 1,
                       **train})
    d["eval"] = {"every": steps, "batches": 20 if seq2seq else 2}
    return d


def metrics(rd):
    return [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]


def quiet(spec, rd, **kw):
    return run(validate(spec), rd, log=lambda m: None, **kw)


@pytest.mark.parametrize("name", MODELS)
def test_fp16_loss_is_within_tolerance_of_fp32(tmp_path, name):
    steps, const = 8, {"schedule": "constant", "warmup_steps": 0}
    r16 = quiet(shrunk(name, steps, precision="fp16", **const), tmp_path / "fp16")
    skipped = r16["skipped_steps"]
    assert r16["status"] == "finished" and r16["precision"] == {"requested": "fp16", "used": "fp16"}
    assert skipped < steps // 2
    r32 = quiet(shrunk(name, steps - skipped, precision="fp32", **const), tmp_path / "fp32")
    rel = abs(r16["eval/loss"] - r32["eval/loss"]) / r32["eval/loss"]
    assert rel < (1e-3 if skipped == 0 else 0.05), (skipped, r16["eval/loss"], r32["eval/loss"])
    if skipped == 0:  # fp16 autocast did run: the numbers are close, not bit-identical
        assert r16["eval/loss"] != r32["eval/loss"]


class InfAt:
    """Puts an infinite gradient into the first parameter at one optimizer step."""

    def __init__(self, monkeypatch, step: int):
        orig = Trainer._clip_and_step

        def clip_and_step(trainer):
            if trainer.step == step - 1:  # the step being taken
                p = next(p for g in trainer.opt.param_groups for p in g["params"] if p.grad is not None)
                p.grad.view(-1)[0] = float("inf")
            return orig(trainer)

        monkeypatch.setattr(Trainer, "_clip_and_step", clip_and_step)



def by_step(rd, key):
    return {m["step"]: m[key] for m in metrics(rd) if key in m}


@pytest.mark.parametrize("name", MODELS)
def test_fp16_infinite_gradient_skips_the_step_halves_the_scale_and_resumes_exactly(tmp_path, name, monkeypatch):
    InfAt(monkeypatch, 3)
    spec = shrunk(name, 6, precision="fp16")
    full = quiet(spec, tmp_path / "full")
    scale, skipped = by_step(tmp_path / "full", "train/loss_scale"), by_step(tmp_path / "full", "train/skipped_steps")
    assert skipped[3] == skipped[2] + 1 and scale[3] == scale[2] / 2
    # the weights did not move at the skipped step
    kept = tmp_path / "kept"
    w2 = None
    stopper = TermAt(2)
    get_manager().pm.register(stopper)
    try:
        quiet(spec, kept)
    finally:
        get_manager().pm.unregister(stopper)
    w2 = load_file(str(kept / "checkpoints" / "step_0000002" / "model.safetensors"))
    # interrupted at step 4 (after the skip), resumed: the same scale, counts, losses and weights
    stopper = TermAt(4)
    get_manager().pm.register(stopper)
    try:
        part = quiet(spec, tmp_path / "part")
    finally:
        get_manager().pm.unregister(stopper)
    assert part["status"].startswith("preempted") and part["step"] == 4
    state = ckpt.load_state(tmp_path / "part" / "checkpoints" / "step_0000004")
    assert state["scaler"]["scale"] == scale[4] and state["skipped_steps"] == skipped[4]
    resumed = quiet(spec, tmp_path / "part", resume=True)
    assert resumed["eval/loss"] == full["eval/loss"] and resumed["skipped_steps"] == full["skipped_steps"]
    assert by_step(tmp_path / "part", "train/loss_scale") == scale
    assert by_step(tmp_path / "part", "train/loss") == by_step(tmp_path / "full", "train/loss")
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_0000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "step_0000006" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # step 3 was skipped: resuming the step-2 checkpoint with the injection gives step 3's weights = step 2's
    stopper = TermAt(3)
    get_manager().pm.register(stopper)
    try:
        quiet(spec, kept, resume=True)
    finally:
        get_manager().pm.unregister(stopper)
    w3 = load_file(str(kept / "checkpoints" / "step_0000003" / "model.safetensors"))
    assert all(torch.equal(w2[k], w3[k]) for k in w2)


def test_env_json_records_the_precision(tmp_path, tiny_spec):
    tiny_spec["train"].update(precision="fp16", max_steps=2)
    rd = tmp_path / "run"
    quiet(tiny_spec, rd)
    assert json.loads((rd / "env.json").read_text())["precision"] == {"requested": "fp16", "used": "fp16"}
    assert json.loads((rd / "result.json").read_text())["skipped_steps"] == 0
    tiny_spec["train"]["precision"] = "auto"
    quiet(tiny_spec, tmp_path / "auto")
    assert json.loads((tmp_path / "auto" / "env.json").read_text())["precision"] == {"requested": "auto",
                                                                                       "used": "fp32"}


def test_auto_on_a_gpu_without_bf16_trains_fp32_and_says_fp16_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    used, note = resolve_precision("auto", torch.device("cuda"))
    assert used == "fp32"
    assert note == ('train.precision auto: Tesla T4 has no bf16, training in fp32; train.precision "fp16" trains in '
                    'float16 with a GradScaler (about twice as fast there)')
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == ("bf16", None)
    assert resolve_precision("auto", torch.device("cpu")) == ("fp32", None)
    assert resolve_precision("fp16", torch.device("cpu")) == ("fp16", None)
