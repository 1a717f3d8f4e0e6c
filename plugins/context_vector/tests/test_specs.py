"""The plugin's specs and commands end to end: the tiny spec trains and its loss falls; the trained run
generates through `kinlm generate`, is scored in streaming and quantised to int8; the paper specs
are the paper's setting and fail offline in one line; the vs-gpt pair differs only in the model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kinlm_core import load_run, load_spec, train
from kinlm_core.testing import check_fails_offline

SPECS = Path(__file__).resolve().parents[3] / "specs"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """specs/context_vector_tiny.json shortened to 40 steps (the full spec is 600) with 5 warmup steps:
    enough for the loss to fall and for the commands below to run on a trained model."""
    os.environ.setdefault("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    rd = tmp_path_factory.mktemp("cv") / "run"
    spec = load_spec(SPECS / "context_vector_tiny.json",
                     ["train.max_steps=40", "train.warmup_steps=5", "eval.every=20", "train.log_every=5",
                      "train.checkpoint_every=40", "generate=[]"])
    result = train(spec, rd, log=lambda m: None)
    return rd, result


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "KINLM_CACHE": os.environ["KINLM_CACHE"]})


@pytest.mark.slow
def test_tiny_spec_trains_and_loss_falls(tiny_run):
    rd, result = tiny_run
    assert result["status"] == "finished"
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert len(evals) == 2 and evals[0] > evals[1]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.3  # step 5 -> 40


def test_generate_command_runs_on_the_trained_model(tiny_run):
    r = _cli("-m", "kinlm_core.cli", "generate", str(tiny_run[0]), "--prompt", "the", "--opt", "max_new_tokens=300",
             "--opt", "temperature=0")
    assert r.returncode == 0, r.stderr[-500:]
    assert len(r.stdout.split()) >= 200  # 300 words from a word tokenizer


def test_streaming_score_equals_the_full_forward_loss(tiny_run, tmp_path):
    """The score command's loss over a file equals one full forward over the file's tokens, with
    chunks (7 tokens) far shorter than the file; the state kept is the (1, d_c) context."""
    from kinlm_context_vector.score import score_file

    text = " ".join(["the city was built in the early century , and the river ran to the sea ."] * 40) + "\n"
    f = tmp_path / "text.txt"
    f.write_text(text)
    run = load_run(tiny_run[0], device="cpu")
    res = score_file(run.model, run.tokenizer, f, chunk=7)
    ids = torch.tensor([run.tokenizer.encode(text)])
    with torch.no_grad():
        full = torch.nn.functional.cross_entropy(run.model(ids[:, :-1]).logits[0], ids[0, 1:]).item()
    assert res["tokens"] == ids.size(1) - 1
    assert res["loss"] == pytest.approx(full, rel=1e-5)
    assert res["state_numel"] == run.model.d_context
    r = _cli("-m", "kinlm_context_vector.score", str(tiny_run[0]), str(f), "--chunk", "100")
    assert r.returncode == 0, r.stderr[-500:]
    assert f"{res['tokens']} tokens scored" in r.stdout and f"ppl {res['ppl']:.2f}" in r.stdout


def test_score_bad_input_is_one_line_exit_2(tiny_run, tmp_path):
    r = _cli("-m", "kinlm_context_vector.score", str(tiny_run[0]), str(tmp_path / "missing.txt"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"kinlm_context_vector.score: {tmp_path / 'missing.txt'}: no such file"]
    (tmp_path / "t.txt").write_text("the city\n")
    r = _cli("-m", "kinlm_context_vector.score", str(tmp_path), str(tmp_path / "t.txt"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no spec.json" in r.stderr


def test_int8_quantisation_shrinks_the_checkpoint_and_keeps_the_perplexity(tiny_run, tmp_path):
    r = _cli("-m", "kinlm_context_vector.quantize", str(tiny_run[0]), "--out", str(tmp_path), "--batches", "4")
    assert r.returncode == 0, r.stderr[-500:]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["int8_bytes"] < 0.6 * rep["fp32_bytes"]
    assert abs(rep["ppl_change_pct"]) < 5.0
    assert (tmp_path / "model_int8.pt").stat().st_size == rep["int8_bytes"]


def test_hidden_states_work_with_the_core_analyzer(tiny_run, tmp_path):
    """hidden_stats reads the embedding, the FNN layers and the context trajectory (no context limit)."""
    from kinlm_core import component

    run = load_run(tiny_run[0], device="cpu")
    texts = ["the city was built in the early century , and the river ran to the sea ."] * 2
    res = component("analyzer", "hidden_stats")().analyze(run.model, run.tokenizer, texts, tmp_path)
    assert res["layers"] == run.model.cfg.n_layer + 2 and res["texts"] == 2
    assert (tmp_path / "hidden_stats.png").exists()


@pytest.mark.slow
def test_paper_spec_fails_offline_in_one_line(tmp_path):
    check_fails_offline(SPECS / "context_vector_wikitext2.json", tmp_path, "Salesforce/wikitext")


def _params(model_cfg, vocab=1000):
    with torch.device("meta"):
        return sum(p.numel() for p in model_cfg.build(vocab).parameters())


def test_paper_specs_are_the_paper_settings():
    spec = load_spec(SPECS / "context_vector_wikitext2.json")
    assert (spec.data.path, spec.data.name) == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert (spec.tokenizer.type, spec.tokenizer.vocab_size, spec.tokenizer.lowercase) == ("word", 1000, True)
    assert spec.objective.examples == "documents"  # each window starts from a zero context; padding unscored
    t = spec.train
    assert (t.block_size, t.batch_size, t.lr, t.weight_decay, t.schedule) == (64, 32, 1e-4, 0.0, "constant")
    assert (t.betas, t.warmup_steps, t.grad_clip, t.precision) == ((0.9, 0.999), 0, 1.0, "fp32")  # Adam, FP32 as the source
    assert (spec.eval.early_stop_patience, spec.eval.early_stop_min_delta) == (10, 1e-3)  # the source's Trainer
    assert (spec.model.dropout, spec.model.update, spec.model.layernorm, spec.model.clamp) == (0.1, "gated", True, 10.0)
    assert abs(_params(spec.model) - 2.74e6) < 0.005e6
    adv = load_spec(SPECS / "context_vector_advanced.json")
    assert (adv.model.d_context, adv.model.n_layer, adv.train.batch_size, adv.train.lr) == (512, 12, 512, 1e-4)
    assert (adv.eval.early_stop_patience, adv.eval.early_stop_min_delta, adv.train.precision) == (10, 1e-3, "fp32")
    assert abs(_params(adv.model) - 4.84e6) < 0.005e6


def test_fp16_spec_is_the_sources_l4_fp16_run():
    """The source's best L4 FP16 run: the 2.74M baseline, batch 2,048, lr 8e-4, 50 epochs (51,026 windows
    / 2,048 = 25 steps each), AMP with a GradScaler, the best checkpoint on val loss."""
    base, fp16 = load_spec(SPECS / "context_vector_wikitext2.json"), load_spec(SPECS / "context_vector_fp16.json")
    assert fp16.model == base.model and fp16.tokenizer == base.tokenizer and fp16.data == base.data
    t = fp16.train
    assert (t.precision, t.keep_best, t.batch_size, t.lr, t.max_steps) == ("fp16", "eval/loss", 2048, 8e-4, 50 * 25)
    assert (t.schedule, t.warmup_steps, t.weight_decay, t.betas, t.grad_clip) == ("constant", 0, 0.0, (0.9, 0.999), 1.0)
    assert (fp16.eval.every, fp16.eval.split, fp16.eval.early_stop_patience) == (25, "validation", 10)


def test_vs_gpt_pair_differs_only_in_the_model_at_equal_size():
    cv = load_spec(SPECS / "context_vector_vs_gpt" / "context_vector.json")
    gpt = load_spec(SPECS / "context_vector_vs_gpt" / "gpt.json")
    for part in ("data", "tokenizer", "objective", "train", "eval", "seed"):
        assert getattr(cv, part) == getattr(gpt, part), part
    assert (cv.model.type, gpt.model.type) == ("context_vector", "gpt")
    a, b = _params(cv.model), _params(gpt.model)
    assert abs(a - b) / a < 0.10, (a, b)
