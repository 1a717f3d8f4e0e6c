"""The plugin's specs end to end: the tiny spec trains, steering is measurable on the trained
model, and the paper spec fails offline in one line before any model is built."""

import json
import os
from pathlib import Path

import pytest

from kinlm_core import load_run, load_spec, train
from kinlm_core.testing import check_fails_offline

SPECS = Path(__file__).resolve().parents[3] / "specs"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """specs/hamiltonian_tiny.json, shortened to 150 steps (the full spec is 400)."""
    os.environ.setdefault("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    rd = tmp_path_factory.mktemp("ham") / "run"
    spec = load_spec(SPECS / "hamiltonian_tiny.json",
                     ["train.max_steps=150", "eval.every=50", "train.log_every=10", "generate=[]"])
    result = train(spec, rd, log=lambda m: None)
    return rd, result


@pytest.mark.slow
def test_tiny_spec_trains_and_loss_falls(tiny_run):
    rd, result = tiny_run
    assert result["status"] == "finished"
    rows = [json.loads(l) for l in (rd / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert len(evals) == 3 and evals[0] > evals[1] > evals[2]
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    assert train[-1] < train[0] - 1.0


@pytest.mark.slow
def test_steering_moves_the_target_frequency(tiny_run):
    """Source setting (q pushed, word encoded without a leading space): the target token's
    expected frequency in samples rises with strength > 0 and falls with strength < 0,
    averaged over several seeds."""
    from kinlm_hamiltonian.steer_check import steer_frequencies

    loaded = load_run(tiny_run[0])
    res = steer_frequencies(loaded.model, loaded.tokenizer, "love", [-2.0, 0.0, 2.0], range(4), max_new_tokens=40)
    assert res[2.0]["expected"] > res[0.0]["expected"] > res[-2.0]["expected"], res


def test_paper_spec_fails_offline_in_one_line(tmp_path):
    check_fails_offline(SPECS / "hamiltonian_fineweb.json", tmp_path, "fineweb-edu", "parquet")


def test_paper_spec_is_the_124m_setting():
    import torch

    spec = load_spec(SPECS / "hamiltonian_fineweb.json")
    m, t = spec.model, spec.train
    assert (m.d_model, m.n_layer, m.n_head, m.block_size) == (640, 12, 10, 1024)
    assert (t.batch_size, t.grad_accum, t.lr, t.max_steps) == (8, 16, 6e-4, 10000)
    # torch.optim.AdamW's defaults over model.parameters(), constant lr, clip 1.0, the source's init
    assert (t.betas, t.weight_decay, t.schedule, t.warmup_steps, t.grad_clip) == ((0.9, 0.999), 0.01, "constant", 0, 1.0)
    assert (m.init, m.decay, m.dropout, m.beta, m.reset_strength) == ("source", "all", 0.1, 0.9, 0.5)
    with torch.device("meta"):
        model = m.build(50257)
    assert model.num_parameters() == 123_511_160
    from kinlm_core.engine.optim import param_groups

    decay, no_decay = param_groups(model, t.weight_decay)
    assert sum(p.numel() for p in decay["params"]) == 123_511_160 and not no_decay["params"]  # every parameter
