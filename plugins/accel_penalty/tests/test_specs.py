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


@pytest.mark.slow
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
                      "model.init_std=0",
                      'model.inner={"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 128}'])
    assert train(spec, rd, log=lambda *a, **k: None)["status"] == "finished"
    model = load_run(rd).model
    assert model.beta.abs().max() > 0 and model.gamma.abs().max() > 0  # moved from (1, 0, 0)
    assert any("reg/accel_penalty" in x for x in rows(rd))


@pytest.mark.slow
def test_paper_spec_fails_offline_in_one_line(tmp_path):
    check_fails_offline(SPECS / "accel_distilgpt2_wikitext103.json", tmp_path, "wikitext-103-raw-v1", "parquet")


def test_paper_spec_is_distilgpt2_with_the_source_settings():
    import torch

    spec = load_spec(SPECS / "accel_distilgpt2_wikitext103.json")
    c, t, reg = spec.model.config, spec.train, spec.regularizers[0]
    assert (c["model_type"], c["n_layer"], c["n_head"], c["n_embd"]) == ("gpt2", 6, 12, 768)
    assert (t.batch_size, t.block_size, t.lr, t.weight_decay, t.warmup_steps) == (16, 128, 5e-5, 0.01, 0)
    assert (reg.layers, reg.weight, reg.mask) == ("first_middle_last", 1e-4, "none")  # the source masks nothing
    assert (tuple(t.betas), t.grad_clip, t.schedule) == ((0.9, 0.999), 1.0, "linear")  # HF Trainer's defaults
    assert t.decay == "transformers"  # HF Trainer decays the embeddings, not biases or LayerNorms
    assert spec.curriculum.phases[0].epochs == 2
    with torch.device("meta"):
        model = spec.model.build(50257)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 81.9e6) < 0.1e6, n  # DistilGPT-2: 82M with the tied head


def test_mode_specs_have_the_source_optimizer_init_and_unmasked_penalty():
    modes = {m: load_spec(SPECS / "accel_diffwrapper_modes" / f"{m}.json")
             for m in ("plain", "diffwrapper", "diffwrapper_penalty")}
    for spec in modes.values():  # AdamW(lr=4e-4) with torch's defaults, no clipping, cosine with 10% warmup
        t = spec.train
        assert (t.lr, t.weight_decay, tuple(t.betas), t.grad_clip, t.schedule, t.min_lr_ratio) == (
            4e-4, 0.01, (0.9, 0.999), 0.0, "cosine", 0.0)
        assert t.warmup_steps == t.max_steps // 10
    assert modes["plain"].train.decay == "all"  # AdamW(model.parameters()) in every mode
    for m in ("diffwrapper", "diffwrapper_penalty"):
        model = modes[m].model
        assert (model.init, model.init_std, model.decay, model.inner.n_layer, model.inner.d_model,
                model.inner.dropout) == ((1.0, 0.0, 0.0), 0.02, "all", 6, 192, 0.1)
    reg = modes["diffwrapper_penalty"].regularizers[0]
    assert (reg.weight, reg.layers, reg.mask) == (0.1, "weighted", "none")


@pytest.mark.parametrize("path", OURS, ids=[p.stem for p in OURS])
def test_every_spec_validates(path):
    spec = load_spec(path)
    assert spec.name and (spec.regularizers or spec.model.type in ("diff_wrapper", "gpt"))
