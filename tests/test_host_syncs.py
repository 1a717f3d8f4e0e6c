"""Issue 34 item 3: the training step makes no host sync between logging steps; result.json reports
steady-state throughput apart from the warm-up; a non-finite loss, now read at logging, evaluation and
checkpoint steps, still stops the run with the last good checkpoint named."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from kinlm_core.engine import train as train_mod
from kinlm_core.engine.perf import Throughput, flops_per_token, peak_tflops
from kinlm_core.engine.train import RunStopped, run
from kinlm_core.spec import validate

TORCH_DIR = str(Path(torch.__file__).parent)
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "__format__")


def count_reads(monkeypatch, window):
    """Count the tensor-to-Python reads (each a host sync on a GPU) made by code outside torch while
    ``window()`` is true; returns the list of (method, caller file:line) it fills."""
    seen = []
    for name in READS:
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            f = sys._getframe(1)
            if window() and not f.f_code.co_filename.startswith(TORCH_DIR):
                seen.append((_name, f"{f.f_code.co_filename}:{f.f_lineno}"))
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return seen


def test_non_logging_steps_read_no_tensor(tmp_path, tiny_spec, monkeypatch):
    """Steps 2-7 of a run that logs, evaluates and saves only at step 8: no .item()/float()/format of a
    tensor anywhere in the engine, objectives, model or hooks (the old step read the loss, each term and
    the grad norm every step: at least 3 reads per step)."""
    tiny_spec["train"].update(max_steps=8, log_every=8, checkpoint_every=8, grad_accum=2)
    tiny_spec["eval"]["every"] = 8
    state = {"on": False}
    seen = count_reads(monkeypatch, lambda: state["on"])
    real = train_mod.Trainer.timed_step

    def timed_step(self, pr):
        state["on"] = 1 <= self.step < 7  # from the start of step 2 to the start of step 8
        return real(self, pr)

    monkeypatch.setattr(train_mod.Trainer, "timed_step", timed_step)
    result = run(validate(tiny_spec), tmp_path / "run", log=lambda m: None)
    assert result["status"] == "finished"
    assert seen == []


def test_logging_steps_still_log_the_step_values(tmp_path, tiny_spec):
    """The values read at a logging step are that step's: loss, grad norm and terms as floats."""
    tiny_spec["train"].update(max_steps=4, log_every=2)
    rd = tmp_path / "run"
    run(validate(tiny_spec), rd, log=lambda m: None)
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [2, 4]
    for r in train:
        assert isinstance(r["train/loss"], float) and math.isfinite(r["train/loss"])
        assert isinstance(r["train/grad_norm"], float) and r["train/grad_norm"] > 0
        assert r["train/token_loss"] == pytest.approx(r["train/loss"])


def test_result_reports_steady_state_apart_from_warmup(tmp_path, tiny_spec):
    tiny_spec["train"]["max_steps"] = 7
    r = run(validate(tiny_spec), tmp_path / "run", log=lambda m: None)
    assert r["warmup_steps"] == 3 and r["warmup_seconds"] > 0 and r["compile_seconds"] >= 0
    assert r["steady_tokens_per_s"] > 0
    n, mc = r["params"], tiny_spec["model"]
    assert r["flops_per_token"] == 6 * n + 12 * mc["n_layer"] * mc["d_model"] * tiny_spec["train"]["block_size"]
    assert r["mfu"] is None and r["mfu_note"] == "no peak FLOP/s for a cpu device"


def test_a_short_run_has_no_steady_state(tmp_path, tiny_spec):
    tiny_spec["train"].update(max_steps=2, checkpoint_every=2)
    tiny_spec["eval"]["every"] = 2
    r = run(validate(tiny_spec), tmp_path / "run", log=lambda m: None)
    assert r["steady_tokens_per_s"] is None and r["mfu"] is None and "no steady state" in r["mfu_note"]


def test_throughput_meter_by_hand():
    class Dev:
        type = "cuda-less"

    t = Throughput(Dev(), flops_token=100.0, peak_flops=1000.0, mfu_note=None, warmup_steps=2)
    t.start(0)
    for sec, tok in [(5.0, 10), (1.0, 20), (0.5, 30), (0.5, 40)]:
        t.step(sec, tok)
    s = t.summary()
    # steady: 20 tokens in 1.0 s; warm-up 6 s, of which 2 x 0.5 s would have been steady
    assert s["steady_tokens_per_s"] == 20.0
    assert s["warmup_seconds"] == pytest.approx(6.0, abs=1e-3) and s["compile_seconds"] == pytest.approx(5.0, abs=1e-3)
    assert s["mfu"] == 20.0 * 100.0 / 1000.0


def test_peak_table_and_flops():
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0 and peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("Tesla T4") is None
    assert flops_per_token(10, 2, 3, 4) == 60 + 12 * 2 * 3 * 4


def test_a_non_finite_loss_between_logs_stops_before_the_next_checkpoint(tmp_path, tiny_spec, monkeypatch):
    """A NaN at step 4 (not a logging step) is read at step 6's checkpoint: no checkpoint of step 6, the
    message names step 4 and the kept checkpoint of step 3, exit status 3's RunStopped."""
    tiny_spec["train"].update(max_steps=8, log_every=100, checkpoint_every=3)
    tiny_spec["eval"]["every"] = 100
    real = train_mod.Trainer.standard_step

    def nan_at_4(self, pr):
        m = real(self, pr)
        if self.step == 3:  # the step that becomes step 4
            m["train/loss"] = m["train/loss"] * float("nan")
        return m

    monkeypatch.setattr(train_mod.Trainer, "standard_step", nan_at_4)
    rd = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        run(validate(tiny_spec), rd, log=lambda m: None)
    assert str(e.value).startswith("step 4: loss is nan; stopped.")
    assert f"The last good checkpoint is kept: {rd / 'checkpoints' / 'step_0000003'}" in str(e.value)
    assert sorted(p.name for p in (rd / "checkpoints").iterdir()) == ["step_0000003"]
    assert json.loads((rd / "result.json").read_text())["status"] == "stopped: non-finite loss"
