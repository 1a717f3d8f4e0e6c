"""Phase 2's batch: micro_tokens (accumulated passes, "auto" with an injected out-of-memory) and the
source's batch_tokens "free_memory" rule, by hand and through the engine."""

import json
import os
from pathlib import Path

import pytest
import torch

from kinlm_core import load_spec, train

from kinlm_cvfp import training
from kinlm_cvfp.model import CVFP

SPEC = Path(__file__).resolve().parents[3] / "specs" / "cvfp_tiny.json"
# test_training.py's small setting: bytes, d 16, K 2, 600 training tokens; one phase-1 step, then phase 2
BASE = ['tokenizer={"type": "byte"}', "model.d_model=16", "model.n_layer=2", "curriculum.train_tokens=600",
        'curriculum.validation="split"', "curriculum.validation_tokens=200", "curriculum.chunk_tokens=200",
        "curriculum.batch_tokens=100", "curriculum.max_epochs=3", "curriculum.patience=3", "curriculum.phase2_lr=0.01",
        "curriculum.max_iterations=2", "curriculum.min_iterations=2",
        "train.batch_size=2", "train.block_size=32", "train.checkpoint_every=1000", "train.log_every=1",
        "train.max_steps=9", "eval.every=1000", "eval.batches=1", "generate=[]", "analyzers=[]"]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    os.environ.setdefault("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def phase2(rd, *sets):
    """(result, phase-2 metric rows) of the small setting plus ``sets``."""
    result = train(load_spec(SPEC, BASE + list(sets)), rd, progress=False, log=lambda *a, **k: None)
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    return result, [r for r in rows if "token_prediction/loss" in r]


class Memory:
    """Phase-2 passes (cached contexts given) over ``limit`` positions run out of memory; ``limits``:
    {optimizer step: a new limit from then on}."""

    def __init__(self, monkeypatch, limit, limits=None):
        self.limit, self.limits, self.step = limit, limits or {}, 0
        orig = CVFP.forward
        orig_step = training.phase2_step

        def forward(model, input_ids, *a, contexts=None, **k):
            lim = self.limit
            for at, v in sorted(self.limits.items()):
                if self.step >= at:
                    lim = v
            if contexts is not None and input_ids.shape[1] > lim:
                raise torch.OutOfMemoryError(f"planted: {input_ids.shape[1]} positions > {lim}")
            return orig(model, input_ids, *a, contexts=contexts, **k)

        def phase2_step(cfg, ctx):
            self.step = ctx.step + 1
            return orig_step(cfg, ctx)

        monkeypatch.setattr(CVFP, "forward", forward)
        monkeypatch.setattr(training, "phase2_step", phase2_step)


def losses(rows):
    return [r["token_prediction/loss"] for r in rows]


def test_accumulated_passes_give_the_whole_minibatchs_step(tmp_path):
    _, whole = phase2(tmp_path / "whole")
    _, parts = phase2(tmp_path / "parts", "curriculum.micro_tokens=30")
    assert [r["token_prediction/micro_tokens"] for r in parts] == [30.0] * len(parts)
    assert [r["token_prediction/batch_tokens"] for r in parts] == [100.0] * len(parts)
    assert len(whole) == len(parts) == 8
    assert losses(parts) == pytest.approx(losses(whole), rel=1e-5)


def test_auto_takes_the_largest_pass_that_fits_and_backs_off_once(tmp_path, monkeypatch):
    _, whole = phase2(tmp_path / "whole")
    Memory(monkeypatch, limit=60, limits={5: 30})  # 100 does not fit, 50 does; from step 5 only 25
    result, rows = phase2(tmp_path / "auto", 'curriculum.micro_tokens="auto"')
    assert result["status"] == "finished"
    micro = {r["step"]: r["token_prediction/micro_tokens"] for r in rows}
    assert micro == {2: 50.0, 3: 50.0, 4: 50.0, 5: 25.0, 6: 25.0, 7: 25.0, 8: 25.0, 9: 25.0}
    assert losses(rows) == pytest.approx(losses(whole), rel=1e-5)


def test_a_second_out_of_memory_is_raised(tmp_path, monkeypatch):
    Memory(monkeypatch, limit=60, limits={4: 30, 6: 10})
    with pytest.raises(torch.OutOfMemoryError, match="planted: 25 positions > 10"):
        phase2(tmp_path / "auto", 'curriculum.micro_tokens="auto"')


def test_free_memory_batch_follows_the_sources_rule(monkeypatch):
    cpu, v = torch.device("cpu"), 257  # per position: 257 x 4 B x 3.5 = 3,598 B
    monkeypatch.setattr(training, "available_memory", lambda: 10**9)
    # 1e9 x 0.25 / 3,598 = 69,483, clamped to 16,384 and to int(1 GB x 500 x 0.8) = 400
    assert training.free_memory_batch(v, cpu) == 400
    monkeypatch.setattr(training, "available_memory", lambda: 40 * 10**9)
    assert training.free_memory_batch(v, cpu) == 16000  # 2.8M; the cap int(40 x 500 x 0.8) is below 16,384
    monkeypatch.setattr(training, "available_memory", lambda: 50 * 10**9)
    assert training.free_memory_batch(v, cpu) == 16384  # 3.5M; the cap 20,000: the source's ceiling
    monkeypatch.setattr(training, "available_memory", lambda: 10**6)
    assert training.free_memory_batch(v, cpu) == 256  # 69, raised to the source's floor


def test_free_memory_sizes_the_phase_through_the_engine(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "available_memory", lambda: 10**9)
    _, rows = phase2(tmp_path / "free", 'curriculum.batch_tokens="free_memory"')
    assert {r["token_prediction/batch_tokens"] for r in rows} == {400.0}
