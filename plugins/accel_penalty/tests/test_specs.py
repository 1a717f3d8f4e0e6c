"""The plugin's specs end to end: the tiny spec trains with the penalty logged and the trajectory
analyzer run, a DiffWrapper spec trains its scalars, the paper spec is DistilGPT-2 and fails
offline in one line before any model is built, and every spec validates."""

import json
from pathlib import Path

import pytest

from kinlm_core import load_run, load_spec, train
from kinlm_core.testing import check_fails_offline

SPECS = Path(__file__).resolve().parents[3] / "specs"
OURS = sorted(SPECS.glob("accel_*.json")) + sorted((SPECS / "accel_diffwrapper_modes").glob("*.json"))


def rows(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_spec_trains_with_the_penalty_logged(tmp_path):
    rd = tmp_path / "run"
    spec = load_spec(SPECS / "accel_penalty_tiny.json",
                     ["train.max_steps=40", "eval.every=20", "train.log_every=10", "generate=[]"])
    result = train(spec, rd, log=lambda *a, **k: None)
    assert result["status"] == "finished"
    r = rows(rd)
    reg = [x["reg/accel_penalty"] for x in r if "reg/accel_penalty" in x]
    assert len(reg) == 4 and all(v > 0 for v in reg)
    evals = [x["eval/loss"] for x in r if "eval/loss" in x]
    assert evals[-1] < evals[0]
    m = json.loads(next((rd / "analysis" / "trajectory").glob("step_*/metrics.json")).read_text())
    assert m["layers"] == 5 and m["accel/layer_4"] > 0  # gpt with 4 blocks: embeddings + 4


def test_diffwrapper_spec_trains_its_scalars(tmp_path):
    rd = tmp_path / "run"
    spec = load_spec(SPECS / "accel_diffwrapper_modes" / "diffwrapper_penalty.json",
                     ["train.max_steps=8", "eval.every=8", "eval.batches=2", "train.log_every=4", "analyzers=[]",
                      'model.inner={"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 128}'])
    assert train(spec, rd, log=lambda *a, **k: None)["status"] == "finished"
    model = load_run(rd).model
    assert model.beta.abs().max() > 0 and model.gamma.abs().max() > 0  # moved from (1, 0, 0)
    assert any("reg/accel_penalty" in x for x in rows(rd))


def test_paper_spec_fails_offline_in_one_line(tmp_path):
    check_fails_offline(SPECS / "accel_distilgpt2_wikitext103.json", tmp_path, "wikitext-103-raw-v1", "parquet")


def test_paper_spec_is_distilgpt2_with_the_source_settings():
    import torch

    spec = load_spec(SPECS / "accel_distilgpt2_wikitext103.json")
    c, t, reg = spec.model.config, spec.train, spec.regularizers[0]
    assert (c["model_type"], c["n_layer"], c["n_head"], c["n_embd"]) == ("gpt2", 6, 12, 768)
    assert (t.batch_size, t.block_size, t.lr, t.weight_decay, t.warmup_steps) == (16, 128, 5e-5, 0.01, 0)
    assert (reg.layers, reg.weight) == ("first_middle_last", 1e-4)
    assert spec.curriculum.phases[0].epochs == 2
    with torch.device("meta"):
        model = spec.model.build(50257)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 81.9e6) < 0.1e6, n  # DistilGPT-2: 82M with the tied head


@pytest.mark.parametrize("path", OURS, ids=[p.stem for p in OURS])
def test_every_spec_validates(path):
    spec = load_spec(path)
    assert spec.name and (spec.regularizers or spec.model.type in ("diff_wrapper", "gpt"))
