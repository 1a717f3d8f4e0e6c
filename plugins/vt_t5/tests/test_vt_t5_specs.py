"""The plugin's specs end to end: the tiny T5 curriculum's phases read back from the logged metrics,
a run killed (SIGKILL) mid-curriculum resumes to the same eval loss, VT on the gpt baseline trains, and the
BabyLM spec is the paper's setting and fails in one line without its files."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kinlm_core import load_run, load_spec, train

SPECS = Path(__file__).resolve().parents[3] / "specs"
# the tiny T5 spec, shortened: 150 speeches, epochs 1/2/1, a constant lr so that a run cut short by
# train.max_steps follows the same trajectory as the full run
SHORT = ["data.max_docs=150", "curriculum.epochs=[1,2,1]", "train.schedule=constant", "train.warmup_steps=0",
         "train.log_every=1", "eval.every=1000", "eval.batches=4", "train.checkpoint_every=1000"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    os.environ.setdefault("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def full_run(cache, tmp_path_factory):
    rd = tmp_path_factory.mktemp("t5") / "run"
    result = train(load_spec(SPECS / "vt_t5_tiny.json", SHORT), rd, log=lambda m: None)
    return rd, result


def rows(rd):
    return [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_curriculum_phase_per_step_from_the_logged_metrics(full_run):
    rd, result = full_run
    assert result["status"] == "finished"
    phase = {r["step"]: int(r["train/phase"]) for r in rows(rd) if "train/phase" in r}
    steps = sorted(phase)
    assert steps == list(range(1, len(steps) + 1))                               # logged at every step
    n = len(load_run(rd).data.examples("train", "documents"))
    per_epoch = math.ceil(n / 8)                                                 # batch 8, no accumulation
    lengths = [sum(1 for s in steps if phase[s] == i) for i in range(4)]        # foundation, curriculum-1..2, integration
    assert lengths == [per_epoch] * 4 and result["step"] == 4 * per_epoch
    assert [phase[s] for s in steps] == sorted(phase[s] for s in steps)         # phases in order
    general = {}  # general-task rows per step, by phase
    for r in rows(rd):
        if "metrics/task_general" in r:
            general.setdefault(int(r["train/phase"]), []).append(r["metrics/task_general"] * r["metrics/rows"])
    mean = {i: sum(v) / len(v) for i, v in general.items()}
    assert mean[1] < 0.5 * mean[0] and mean[2] < 0.5 * mean[0]                   # curriculum: 25% of general tasks
    assert abs(mean[3] - mean[0]) < 0.25 * mean[0]                               # integration: all of them
    losses = [r["train/token_loss"] for r in rows(rd) if r.get("train/token_loss", 0) > 0]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 1.0


KILLER = """import os, signal
from kinlm_core import hookimpl

@hookimpl
def kinlm_step_end(run, step, metrics):
    if step == int(os.environ.get("VT_KILL_AT", "-1")):
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_run_killed_mid_curriculum_resumes_to_the_same_eval_loss(full_run, tmp_path):
    _, result = full_run
    kill_at = int(result["step"] * 0.4)  # inside curriculum-1
    site = tmp_path / "site"
    info = site / "vt_killer-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "vt_killer.py").write_text(KILLER)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vt-killer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kinlm]\nvt_killer = vt_killer\n")
    sets = [a for item in SHORT + [f"train.checkpoint_every={kill_at - 2}"] for a in ("--set", item)]
    cmd = [sys.executable, "-m", "kinlm_core.cli", "run", str(SPECS / "vt_t5_tiny.json"), *sets]
    env = {**os.environ, "PYTHONPATH": str(site), "VT_KILL_AT": str(kill_at)}
    rd = tmp_path / "run"
    r = subprocess.run(cmd + ["--run-dir", str(rd)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    phases = [x["train/phase"] for x in rows(rd) if "train/phase" in x]
    assert phases[-1] == 1  # killed inside curriculum-1, after a checkpoint in it
    r = subprocess.run(cmd + ["--resume", str(rd)], capture_output=True, text=True, env={**env, "VT_KILL_AT": "-1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = json.loads(r.stdout.strip().splitlines()[-1])
    assert resumed["step"] == result["step"]
    assert resumed["eval/loss"] == pytest.approx(result["eval/loss"], abs=1e-5)


@pytest.mark.slow
def test_vt_on_the_gpt_baseline_trains(cache, tmp_path):
    spec = load_spec(SPECS / "vt_gpt_tiny.json", ["train.max_steps=60", "eval.every=30", "generate=[]",
                                                  "train.log_every=10"])
    result = train(spec, tmp_path / "run", log=lambda m: None)
    evals = [r["eval/loss"] for r in rows(tmp_path / "run") if "eval/loss" in r]
    assert result["status"] == "finished" and evals[1] < evals[0] - 0.5


def test_babylm_spec_is_the_paper_setting():
    """Part6 as its code runs: plain t5-small, the code's curriculum orders, the penalty with padding
    included, the no-op representation term; the design spec differs only in kinlm's options."""
    spec = load_spec(SPECS / "vt_t5_babylm.json")
    t, m = spec.train, spec.model
    assert (t.lr, t.weight_decay, t.schedule, t.grad_clip, t.grad_accum, tuple(t.betas)) == (
        5e-5, 0.01, "linear", 1.0, 2, (0.9, 0.999))
    assert t.decay == "all"  # its no-decay names match nothing in T5, so it decays everything
    assert (m.type, m.preset) == ("t5", "t5-small")
    assert spec.curriculum.epochs == (3, 4, 3) and spec.curriculum.faithful_to_code
    assert spec.eval.early_stop_patience == 4
    regs = {r.type: r for r in spec.regularizers}
    assert (regs["accel_penalty"].weight, regs["accel_penalty"].layers, regs["accel_penalty"].mask) == (
        1e-4, "first_middle_last", "none")
    assert regs["representation"].source_noop and regs["representation"].weight == 0.01
    design = load_spec(SPECS / "vt_t5_babylm_design.json")
    d = design.model
    assert d.inner.preset == "t5-small" and (d.mode, d.learnable, d.w, tuple(d.w_range)) == ("add", True, 0.1, (0.01, 0.5))
    assert not design.curriculum.faithful_to_code and design.train == spec.train
    dregs = {r.type: r for r in design.regularizers}
    assert not dregs["representation"].source_noop and dregs["accel_penalty"].mask == "padding_and_documents"


@pytest.mark.slow
def test_babylm_spec_fails_in_one_line_without_its_files(tmp_path):
    rd = tmp_path / "run"
    env = {**os.environ, "KINLM_CACHE": str(tmp_path / "c")}
    r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "run", str(SPECS / "vt_t5_babylm.json"),
                        "--run-dir", str(rd)], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "data/babylm/train_10M/*.train" in r.stderr
    assert not rd.exists()
