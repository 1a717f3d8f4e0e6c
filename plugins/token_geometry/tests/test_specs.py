"""The plugin's specs: they validate, the paper spec fails offline in one line before any model
is built, the PreLN/PostLN pair differs only in the preset, and a shortened tiny run writes the
analyzer's start/eval/end analyses, the before/after figures and its scalars; the six presets
are compared with that trained run in one command."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kinlm_core import load_spec, train
from kinlm_core.testing import check_fails_offline

SPECS = Path(__file__).resolve().parents[3] / "specs"
ALL = sorted(SPECS.glob("token_geometry_*.json")) + sorted((SPECS / "token_geometry_prepost").glob("*.json"))


def test_specs_validate_and_say_what_they_are():
    assert len(ALL) == 5
    specs = {p.relative_to(SPECS).as_posix(): load_spec(p) for p in ALL}
    wt = specs["token_geometry_wikitext2.json"]
    m, t = wt.model, wt.train
    # train_postln_model.sh: --ln postln, no --use-swiglu (so GELU: Standard-PostLN); train.py: dropout 0.1
    assert (m.preset, m.placement, m.norm, m.mlp, m.n_layer, m.n_head, m.d_model, m.block_size, m.dropout) == \
        ("Standard-PostLN", "postln", "rmsnorm", "gelu", 6, 6, 384, 256, 0.1)
    assert (m.residual_init, m.decay, t.min_lr_ratio, t.grad_clip) == ("source", "all", 0.0, 0.0)
    assert (wt.analyzers[0].layers, wt.analyzers[0].max_tokens) == ("source", None)
    assert (t.max_steps, t.warmup_steps, t.batch_size, t.lr, t.weight_decay, t.checkpoint_every, wt.eval.every) == \
        (1000, 100, 8, 5e-4, 0.1, 200, 50)
    assert (wt.data.path, wt.data.name) == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    ev = specs["token_geometry_evolution.json"]
    assert ev.analyzers[0].at == ["start", "eval", "end"] and len(ev.analyzers[0].prompts) == 1
    em, et = ev.model, ev.train    # model_evolution_experiment.py: LLaMA-style postln, d 512, 8 heads, block 1024, dropout 0
    assert (em.preset, em.n_layer, em.n_head, em.d_model, em.block_size, em.dropout, em.decay) == \
        ("LLaMA-PostLN", 6, 8, 512, 1024, 0.0, "all")
    assert (et.lr, et.schedule, et.warmup_steps, et.weight_decay, et.batch_size, et.block_size, et.max_steps) == \
        (1e-5, "constant", 0, 0.01, 8, 128, 100)
    pre, post = (json.loads((SPECS / "token_geometry_prepost" / f).read_text()) for f in ("preln.json", "postln.json"))
    assert pre["model"].pop("preset") == "LLaMA-PreLN" and post["model"].pop("preset") == "LLaMA-PostLN"
    pre.pop("name"), post.pop("name")
    assert pre == post


def test_paper_spec_fails_offline_in_one_line(tmp_path):
    check_fails_offline(SPECS / "token_geometry_wikitext2.json", tmp_path, "Salesforce/wikitext", "parquet")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """specs/token_geometry_tiny.json shortened to 40 steps with the byte tokenizer (no BPE training),
    the analyzer also at every eval."""
    os.environ.setdefault("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    rd = tmp_path_factory.mktemp("tg") / "run"
    spec = load_spec(SPECS / "token_geometry_tiny.json", [
        "train.max_steps=40", "eval.every=20", 'tokenizer={"type": "byte"}', "eval.batches=2", "train.log_every=10", "generate=[]",
        'analyzers=[{"type": "token_geometry", "at": ["start", "eval", "end"], "packaged_prompts": true, '
        '"max_prompts": 6, "max_tokens": 48, "heatmap_layers": [-1], "heatmap_tokens": 12}]'])
    result = train(spec, rd, log=lambda m: None)
    return rd, result


@pytest.mark.slow  # trains end to end (the shared tiny run)
def test_tiny_run_analyses_start_eval_end_with_a_before_after_figure(tiny_run):
    rd, result = tiny_run
    assert result["status"] == "finished"
    root = rd / "analysis" / "token_geometry"
    steps = sorted(p.name for p in root.glob("step_*"))
    assert steps[0] == "step_0000000" and steps[-1] == "step_0000040" and len(steps) >= 3
    first = json.loads((root / steps[0] / "metrics.json").read_text())
    last = json.loads((root / steps[-1] / "metrics.json").read_text())
    assert first["layers"] == last["layers"] == 5 and first["prompts"] == 6
    assert last["pairwise_cosine_last_change"] == pytest.approx(last["pairwise_cosine_last"] - first["pairwise_cosine_last"])
    assert (root / steps[-1] / "evolution.png").exists() and (root / steps[-1] / "evolution_heatmaps.png").exists()
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "analysis/token_geometry/pairwise_cosine_last" in r]
    assert logged and logged[-1]["analysis/token_geometry/pairwise_cosine_last"] == pytest.approx(last["pairwise_cosine_last"])
    assert logged[-1]["analysis/token_geometry/anisotropy_last"] == pytest.approx(last["anisotropy_last"])


@pytest.mark.slow  # trains end to end (the shared tiny run)
def test_six_presets_and_the_trained_run_in_one_command(tiny_run, tmp_path):
    from kinlm_token_geometry.compare_presets import main

    out = tmp_path / "cmp"
    summary = main(["--out", str(out), "--run", str(tiny_run[0]), "--n-layer", "2", "--n-head", "2", "--d-model", "32",
                    "--max-prompts", "3", "--max-tokens", "32", "--no-figures"])
    per = json.loads((out / "LLaMA-PreLN" / "metrics.json").read_text())
    assert per["layer_indexing"] == "source" and per["layers"] == 3              # blocks 0, 1, then the final norm
    names = ["LLaMA-PreLN", "LLaMA-PostLN", "LLaMA-PeriLN", "LLaMA-MixLN", "Standard-PreLN", "Standard-PostLN", "trained:run"]
    assert all(summary[f"{n}/prompts"] == 3 for n in names)
    header = next(csv.reader(open(out / "comparison.csv")))
    for col in ("LLaMA-PreLN-LLaMA-PostLN:pairwise_cosine", "Standard-PreLN-Standard-PostLN:pairwise_cosine",
                "LLaMA-PreLN-Standard-PreLN:anisotropy", "trained:run:pairwise_cosine"):
        assert col in header
    r = subprocess.run([sys.executable, "-m", "kinlm_token_geometry.compare_presets", "--out", str(tmp_path / "x"),
                        "--presets", "LLaMA-PreLN,GPT"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == (
        "compare_presets: --presets: unknown preset 'GPT'; one of: LLaMA-PreLN, LLaMA-PostLN, LLaMA-PeriLN, "
        "LLaMA-MixLN, Standard-PreLN, Standard-PostLN")
