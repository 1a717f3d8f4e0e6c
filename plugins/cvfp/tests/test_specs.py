"""The plugin's specs end to end through the engine: the tiny spec goes through both phases, a run
SIGKILLed inside phase 1 and resumed ends with the same eval loss as an uninterrupted one, and the
paper spec fails offline in one line before any model is built."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kinlm_core import load_spec, train
from kinlm_core.testing import check_fails_offline

SPECS = Path(__file__).resolve().parents[3] / "specs"
# shortened for the tests: bytes (no BPE to train), fewer tokens, iterations and epochs
SHORT = ['tokenizer={"type": "byte"}', "model.d_model=32", "curriculum.train_tokens=1200",
         "curriculum.max_iterations=4", "curriculum.min_iterations=2",
         "curriculum.batch_tokens=200", "curriculum.max_epochs=3", "curriculum.phase2_lr=0.01", "eval.every=10", "eval.batches=2",
         "train.log_every=1", "generate=[]", "analyzers=[]"]


def rows(rd):
    return [json.loads(l) for l in (rd / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "cache"
    os.environ["KINLM_CACHE"] = str(path)
    return path


def test_tiny_spec_trains_through_both_phases(tmp_path, cache):
    spec = load_spec(SPECS / "cvfp_tiny.json", SHORT + ['analyzers=[{"type": "effective_rank"}, {"type": "convergence"}]'])
    rd = tmp_path / "run"
    result = train(spec, rd, log=lambda m: None)
    assert result["status"] == "finished"
    rs = rows(rd)
    p1 = [r for r in rs if "fixed_point/convergence_rate" in r]
    p2 = [r for r in rs if "token_prediction/loss" in r]
    assert 1 <= len(p1) <= 3 and len(p2) >= 6  # 4 iterations = 3 steps at most; 1079 positions / 200 = 6 minibatches an epoch
    assert max(r["step"] for r in p1) < min(r["step"] for r in p2)
    assert all("fixed_point/effective_rank_pct" in r for r in p1)
    vals = [r["token_prediction/val_loss"] for r in rs if "token_prediction/val_loss" in r]
    assert vals[-1] < vals[0] and result["eval/loss"] < 5.5  # below uniform over 257 byte ids (ln 257 = 5.55)
    er = json.loads(next((rd / "analysis" / "effective_rank").glob("step_*/metrics.json")).read_text())
    assert 0 < er["effective_rank_pct"] <= 100


def _cli(args, env):
    return subprocess.Popen([sys.executable, "-m", "kinlm_core.cli", "run", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_inside_phase1_then_resume_gives_the_same_eval_loss(tmp_path, cache):
    """Sequential phase 1 (slow steps) with noise, a checkpoint every step; kill -9 after the first."""
    sets = SHORT + ["curriculum.mode=sequential", "curriculum.noise_std=0.1", "curriculum.max_epochs=2",
                    "curriculum.min_iterations=4", "train.checkpoint_every=1", "eval.every=1000"]
    args = [str(SPECS / "cvfp_tiny.json")] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "KINLM_CACHE": str(cache)}
    full = tmp_path / "full"
    assert _cli(args + ["--run-dir", str(full)], env).wait(timeout=300) == 0
    killed = tmp_path / "killed"
    proc = _cli(args + ["--run-dir", str(killed)], env)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step_0000001").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists()
    steps = sorted(p.name for p in (killed / "checkpoints").glob("step_*"))
    assert steps and int(steps[-1][5:]) < 4, f"the kill landed after phase 1: {steps}"
    r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "run", *args, "--resume", str(killed)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a = json.loads((full / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    assert a["status"] == b["status"] == "finished" and a["step"] == b["step"]
    assert b["eval/loss"] == a["eval/loss"]
    assert b["tokens_seen"] == a["tokens_seen"] > 0  # steps that read the stream count it (ctx.count_tokens)
    conv = lambda rd: [(x["step"], x["fixed_point/convergence_rate"]) for x in rows(rd) if "fixed_point/convergence_rate" in x]
    assert conv(killed)[-1] == conv(full)[-1]


@pytest.mark.slow
def test_paper_spec_fails_offline_in_one_line(tmp_path):
    check_fails_offline(SPECS / "cvfp_ultrachat.json", tmp_path, "ultrachat_200k", "parquet")


def test_paper_spec_is_the_11_29_scaling_run():
    """Reading B7: 6 layers of 768, token input at every layer, trainable untied embeddings (91.43M),
    w 0.6, tau 0.03, noise 0.1, 8,000-token chunks, at most 40 iterations, at least 5; the 500-sample
    run: the first 500 train_sft conversations, the last 10% of their stream for validation."""
    spec = load_spec(SPECS / "cvfp_ultrachat.json")
    m, c, d = spec.model, spec.curriculum, spec.data
    assert spec.name == "cvfp-ultrachat-2025-11-29-500" and spec.seed == 42
    assert (m.d_model, m.n_layer, m.tie_head, m.freeze_embedding, m.init_std, m.bias_init_std) == (768, 6, False, False, 0.1, 0.01)
    assert (c.dist_reg_weight, c.convergence_threshold, c.convergence_rate, c.noise_std, c.chunk_tokens) == (0.6, 0.03, 0.95, 0.1, 8000)
    assert (c.max_iterations, c.min_iterations, c.target, c.mode, c.phase1_lr, c.phase2_lr) == (40, 5, "previous", "parallel", 2e-3, 1e-3)
    assert (c.train_tokens, c.validation, c.validation_fraction, c.phase2_order, c.max_epochs, c.patience) == \
        (None, "train_tail", 0.1, "stream", 10, 1)
    assert (d.path, d.split, d.max_docs, d.messages, spec.tokenizer.encoding) == \
        ("HuggingFaceH4/ultrachat_200k", "train_sft", 500, "content", "gpt2")


def test_scaling_spec_set_is_valid_at_every_grid_point_and_its_readme_commands_match():
    """specs/cvfp_scaling/: the spec loads at each size of the README's grid (not trained here), with
    the source's phase-1 settings and the analyzers that check for a collapse."""
    readme = (SPECS / "cvfp_scaling" / "README.md").read_text()
    sizes = [56602, 110516, 216119, 353754]
    assert "--set-grid curriculum.train_tokens=" + ",".join(map(str, sizes)) in readme
    assert "kinlm compare runs/sweep-cvfp-scaling-wiki-sample --fit-scaling curriculum.train_tokens" in readme
    for n in sizes:
        spec = load_spec(SPECS / "cvfp_scaling" / "wiki_sample.json", [f"curriculum.train_tokens={n}"])
        assert spec.curriculum.train_tokens == n and spec.name == "cvfp-scaling-wiki-sample"
    assert spec.seed == 42 and spec.data.corpus == "wiki_sample" and spec.curriculum.dist_reg_weight == 0.6
    assert [a.type for a in spec.analyzers] == ["effective_rank", "global_attractor", "zero_solution"]
    # phase 2 at the largest size fits in max_steps: 10 epochs of 0.9 * N / batch_tokens, plus <= 39 phase-1 steps
    assert 39 + 10 * -(-int(0.9 * sizes[-1]) // spec.curriculum.batch_tokens) < spec.train.max_steps
