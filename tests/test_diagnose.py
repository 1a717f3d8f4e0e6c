"""kinlm diagnose: the registry (hook kinlm_diagnostics), the plan and its specs, the fairness policy
(tuning on validation, verdicts on test, the lr pick, t-intervals, ceiling / chance retunes), the
fixed-state baselines and the state sizes, the page, and a third-party plugin's task and architecture
in --plan and in a tiny --quick run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import kinlm, make_dist
from kinlm_core.builtins.fixed_state_config import BaseConvConfig, LinearAttentionConfig
from kinlm_core.diagnose import plan as dp
from kinlm_core.diagnose import registry as dr
from kinlm_core.diagnose import report as rep
from kinlm_core.diagnose import run as drun
from kinlm_core.spec import validate


@pytest.fixture(scope="module")
def reg():
    return dr.collect()


FIRST_PARTY = {"gpt": "kinlm-core", "conv_attention": "kinlm-core", "linear_attention": "kinlm-core",
               "base_conv": "kinlm-core", "mamba": "kinlm-core", "context_vector": "kinlm-context-vector",
               "hamiltonian": "kinlm-hamiltonian", "llama_preln": "kinlm-token-geometry",
               "llama_postln": "kinlm-token-geometry", "gpt_vt": "kinlm-vt-t5",
               "gpt_accel_penalty": "kinlm-accel-penalty", "gpt_diffwrapper": "kinlm-accel-penalty"}


def test_each_first_party_plugin_registers_its_architectures(reg):
    assert {a: e.dist for a, e in reg.archs.items() if a in FIRST_PARTY} == FIRST_PARTY
    assert list(reg.tasks) == ["associative_recall", "noisy_recall", "fuzzy_recall", "selective_copy", "compression",
                               "memorization"]
    assert not reg.problems
    # three fixed-state architectures take part on the CPU tier, each with at least 4 state sizes
    sel = dp.select(reg, "cpu")
    curve = {a.architecture for a in sel.curve_archs()}
    assert {"linear_attention", "base_conv", "context_vector"} <= curve and "mamba" in sel.skipped
    assert all(len(sel.state_sizes(a)) >= 4 for a in sel.curve_archs())


def test_bad_entries_are_reported_one_line_each_and_the_rest_kept():
    good = {"architecture": "ok", "model": {"type": "gpt"}}
    reg = dr.from_entries([("dist-a", [good, {"architecture": "no_model"}, "junk",
                                       {"architecture": "sized", "model": {}, "state_sizes": {"cpu": [1]}}]),
                           ("dist-b", [dict(good)])])
    assert list(reg.archs) == ["ok"] and reg.archs["ok"].dist == "dist-a"
    assert reg.problems == [
        "dist-a: architecture 'no_model': model: Field required",
        "dist-a: kinlm_diagnostics entry 2: expected a dict with the key 'architecture' or 'task'",
        "dist-a: architecture 'sized': Value error, state_sizes needs a state_knob (the model field they set)",
        "architecture 'ok' is registered twice: by dist-a and dist-b (the first is kept)"]


def test_unknown_task_or_architecture_is_bad_input(reg):
    with pytest.raises(dp.PlanError, match="--tasks: unknown task 'nope' for tier cpu; registered: associative_recall"):
        dp.select(reg, "cpu", ["nope"])
    with pytest.raises(dp.PlanError, match="--archs: unknown architecture 'nope'"):
        dp.select(reg, "cpu", None, ["nope"])
    r = kinlm("diagnose", "--plan", "--tier", "tpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "kinlm diagnose: --tier 'tpu': the suite has tiers cpu, gpu" in r.stderr


def test_tuning_scores_validation_and_verdicts_score_test_with_their_own_seeds(reg):
    sel = dp.select(reg, "cpu")
    task, gpt = reg.tasks["associative_recall"], reg.archs["gpt"]
    tune = dp.task_spec(sel, task, gpt, "tune")
    verdict = dp.task_spec(sel, task, gpt, "verdict", lr=0.01)
    assert tune["eval"]["split"] == "validation" and verdict["eval"]["split"] == "test"
    assert tune["seed"] == dp.TUNE_SEED and verdict["seed"] == dp.VERDICT_SEED
    # seeds of a sweep are seed, seed + 1, ...: tuning and verdict seeds never meet
    tune_seeds = set(range(dp.TUNE_SEED, dp.TUNE_SEED + sel.tier["tune_seeds"]))
    assert not tune_seeds & set(range(dp.VERDICT_SEED, dp.VERDICT_SEED + sel.tier["seeds"]))
    assert tune["data"]["num_kv_pairs"] == 4 and verdict["train"]["lr"] == 0.01
    # the instances scored in the verdict (test) are none of the training or validation inputs
    cfg = validate(verdict, "v").data
    seen = {x.tobytes() for s in ("train", "validation") for x in cfg.examples(s)[0]}
    assert not any(x.tobytes() in seen for x in cfg.examples("test")[0])


def test_every_task_spec_of_every_tier_is_valid_in_every_phase(reg):
    for tier in ("cpu", "gpu"):
        sel = dp.select(reg, tier, archs=["gpt", "context_vector"])
        for task in sel.tasks:
            knob = task.tiers[tier].knob
            for arch in sel.archs:
                for phase in ("tune", "verdict", "state"):
                    spec = dp.task_spec(sel, task, arch, phase)
                    assert spec["train"]["block_size"] == 2 * task.longest(tier)
                    validate(spec, f"{tier}/{task.task}/{arch.architecture}/{phase}")
                for v in sel.levels(task):
                    validate({**spec, "data": {**spec["data"], knob: v}}, f"{tier}/{task.task}/{knob}={v}")
    sel = dp.select(reg, "cpu", ["compression"], ["context_vector"])
    c = dp.task_spec(sel, reg.tasks["compression"], reg.archs["context_vector"], "verdict")
    assert c["model"]["type"] == "compression_readout" and c["model"]["inner"]["type"] == "context_vector"
    assert dp.model_path(reg.tasks["compression"], "d_context") == "model.inner.d_context"


def test_state_bytes_by_hand(reg):
    T = 32
    # linear attention, f = 2: D = 1 + 2 + 4 = 7 per head (d = 32), 2 heads, 2 layers, conv buffer 2 x 64
    la = {**reg.archs["linear_attention"].model, "feature_dim": 2}
    assert reg.archs["linear_attention"].state_bytes(la, T) == 4 * 2 * (2 * 7 * 33 + 2 * 64)
    assert reg.archs["base_conv"].state_bytes({**reg.archs["base_conv"].model, "conv_kernel": 4}, T) == 4 * 2 * 3 * 64
    assert reg.archs["gpt"].state_bytes(reg.archs["gpt"].model, T) == 4 * 2 * 2 * 64 * T  # KV cache
    assert reg.archs["context_vector"].state_bytes(reg.archs["context_vector"].model, T) == 4 * 32
    assert reg.archs["gpt_diffwrapper"].state_bytes(reg.archs["gpt_diffwrapper"].model, T) == 4 * 2 * 2 * 64 * T


@pytest.mark.parametrize("cfg", [LinearAttentionConfig(d_model=16, n_layer=2, n_head=2, feature_dim=3),
                                 BaseConvConfig(d_model=16, n_layer=2, conv_kernel=3)], ids=lambda c: c.type)
def test_fixed_state_baselines_pass_the_conformance_kit(cfg):
    from kinlm_core.testing import check_model

    check_model(cfg)


def test_linear_attention_equals_its_recurrent_form():
    """The quadratic form the model trains with equals the docstring's recurrence over S_t and z_t."""
    from kinlm_core.builtins.fixed_state import LinearAttention

    torch.manual_seed(0)
    m = LinearAttention(C=8, H=2, f=3)
    x = torch.randn(1, 6, 8)
    u = x + m.gate(x) * m.conv(torch.nn.functional.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2)  # causal, 3 taps
    q, k = m.qk(u).view(1, 6, 2, 2, 3).unbind(2)  # (1, T, H, f)
    v = m.v(u).view(1, 6, 2, 4)

    def phi(z):  # [1, z / f^(1/4), vec(z z^T) / (sqrt(2) sqrt(f))]
        return torch.cat([torch.ones(1), z / 3 ** 0.25, torch.outer(z, z).reshape(-1) / (math.sqrt(2) * math.sqrt(3))])

    ys = []
    for h in range(2):
        S, zsum, out = torch.zeros(13, 4), torch.zeros(13), []
        for t in range(6):
            S = S + torch.outer(phi(k[0, t, h]), v[0, t, h])
            zsum = zsum + phi(k[0, t, h])
            out.append(phi(q[0, t, h]) @ S / (phi(q[0, t, h]) @ zsum))
        ys.append(torch.stack(out))
    want = m.o(torch.cat(ys, -1).unsqueeze(0))
    assert torch.allclose(m(x), want, atol=1e-5)


def test_interval_is_the_t_interval_over_seeds():
    m, lo, hi = rep.interval([0.5, 0.7, 0.9])
    h = 4.302653 * 0.2 / math.sqrt(3)  # t_{0.975, 2} s / sqrt(n)
    assert m == pytest.approx(0.7) and lo == pytest.approx(0.7 - h, abs=1e-5) and hi == pytest.approx(0.7 + h, abs=1e-5)
    assert rep.interval([0.4]) == (0.4, 0.4, 0.4) and rep.interval([]) is None
    assert rep.fmt([0.5, 0.7, 0.9]) == "0.700 [0.203, 1.197]" and rep.fmt([0.4]) == "0.400 (1 seed)"


def test_lr_pick_takes_the_best_validation_mean_then_lower_loss():
    res = {("a", 1e-3): [(0.5, 1.0), (0.7, 1.0)], ("a", 1e-2): [(0.55, 0.9)],
           ("b", 1e-3): [(0.8, 0.5)], ("b", 1e-2): [(0.8, 0.4)]}
    assert drun.pick_lr(res, [1e-3, 1e-2]) == {"a": 1e-3, "b": 1e-2}


def test_check_says_ceiling_or_chance_only_when_every_architecture_is_there():
    pol = {"ceiling": 0.98, "chance_margin": 0.02, "max_retunes": 2}
    assert drun.check({("a", 1): [(1.0, 0)], ("b", 1): [(0.99, 0), (0.97, 0)]}, 0.1, pol) == "ceiling"
    assert drun.check({("a", 1): [(1.0, 0)], ("b", 1): [(0.9, 0)]}, 0.1, pol) is None
    assert drun.check({("a", 1): [(0.11, 0)], ("b", 2): [(0.12, 0)]}, 0.1, pol) == "chance"
    assert drun.check({}, 0.1, pol) is None


def _fake_sweeps(monkeypatch, accuracy):
    """run_task without training: every sweep a no-op, every verdict at ``accuracy``."""
    calls = []
    monkeypatch.setattr(drun, "sweep", lambda paths, seeds, grid, out, parallel, echo: calls.append((out.name, grid)))

    def read(where, key):
        if where.name == "tune":
            return {("gpt", 0.003): [(0.5, 1.0)], ("gpt", 0.01): [(0.6, 1.0)], ("base_conv", 0.003): [(0.2, 1.0)]}
        return {("gpt", 1): [(accuracy, 1.0)] * 3}

    monkeypatch.setattr(drun, "read", read)
    return calls


def test_a_task_at_ceiling_is_retuned_twice_then_dropped_with_the_reason(reg, tmp_path, monkeypatch):
    calls = _fake_sweeps(monkeypatch, 1.0)
    sel = dp.select(reg, "cpu", ["memorization"], ["gpt"])
    s = drun.run_task(sel, reg.tasks["memorization"], tmp_path, echo=lambda m: None)
    assert [a["levels"] for a in s["attempts"]] == [[64, 256], [512, 1024], [2048, 4096]]
    assert s["dropped"] == "ceiling" and s["lr"] == {"gpt": 0.01}
    assert [c[0] for c in calls] == ["tune", "verdict", "verdict-retune1", "verdict-retune2"]
    assert json.loads((tmp_path / "memorization" / "attempts.json").read_text())["dropped"] == "ceiling"
    spec = json.loads((tmp_path / "specs" / "memorization" / "verdict-retune2" / "gpt.json").read_text())
    assert spec["train"]["lr"] == 0.01 and spec["eval"]["split"] == "test"
    # a task that separates is judged once and its state curve (MQAR) swept
    calls = _fake_sweeps(monkeypatch, 0.5)
    sel = dp.select(reg, "cpu", ["associative_recall"], ["gpt", "base_conv"])
    s = drun.run_task(sel, reg.tasks["associative_recall"], tmp_path, echo=lambda m: None)
    assert s["dropped"] is None and [c[0] for c in calls] == ["tune", "verdict", "state"]
    assert calls[-1][1] == ["model.conv_kernel=2,4,8,16"]


def test_section_reports_params_width_drop_intervals_and_the_state_curve(reg, tmp_path):
    sel = dp.select(reg, "cpu", ["associative_recall", "memorization"], ["gpt", "base_conv"])
    results = {
        "associative_recall": {"lr": {"gpt": 0.003, "base_conv": 0.01}, "dropped": None, "levels": [2, 4, 8],
                               "attempts": [{"levels": [2, 4, 8], "check": None}],
                               "acc": {("gpt", 4): [0.5, 0.7, 0.9], ("base_conv", 4): [0.1, 0.1, 0.1]},
                               "state": {("base_conv", 2): {"bytes": 512, "acc": [0.1, 0.1, 0.1]},
                                         ("base_conv", 16): {"bytes": 7680, "acc": [0.7, 0.7, 0.7]},
                                         ("gpt", None): {"bytes": 32768, "acc": [0.5, 0.7, 0.9]}}},
        "memorization": {"lr": {"gpt": 0.003}, "dropped": "ceiling", "levels": [2048, 4096],
                         "attempts": [{"levels": [64, 256], "check": "ceiling"},
                                      {"levels": [512, 1024], "check": "ceiling"},
                                      {"levels": [2048, 4096], "check": "ceiling"}],
                         "acc": {("gpt", 2048): [1.0, 1.0, 1.0]}, "state": {}}}
    params = [{"arch": "gpt", "dist": "kinlm-core", "family": "attention", "total": 10, "non_embedding": 8,
               "readout": 64, "state_bytes": 32768, "seq_len": 32}]
    text = rep.section(sel, results, params, {"fig": "diagnostics/f.png"}, "kinlm diagnose")
    assert "| gpt | kinlm-core | attention | 10 | 8 | 64 | 32,768 at T=32, grows with T |" in text
    assert "| gpt | 0.003 | - | 0.700 [0.203, 1.197] | - |" in text
    assert "- vocab_size = [64, 256]: at ceiling for every architecture; retuned (1 of at most 2)." in text
    assert "**Dropped**: at ceiling for every architecture after 2 retune(s)" in text
    assert "| base_conv | conv_kernel 16 | 7,680 | 0.700 [0.700, 0.700] |" in text
    assert "| gpt | attention (KV cache) | 32,768 | 0.700 [0.203, 1.197] |" in text
    assert "Recall like attention (within 0.05 of its 0.700): base_conv from 7,680 bytes." in text
    # the page: only the part between the markers (old tool's marker included) is replaced
    doc = tmp_path / "d.md"
    doc.write_text(f"# D\n\nhand-written\n\n{rep._OLD_BEGIN}\nold\n{rep.END}\n\ntail\n")
    rep.write_page(doc, text)
    page = doc.read_text()
    assert page.startswith("# D\n\nhand-written\n") and page.endswith("\n\ntail\n") and "old\n" not in page
    from kinlm_core.diagnose import figures

    f1 = figures.accuracy_vs_difficulty(sel, results, tmp_path / "a.png")
    f2 = figures.accuracy_vs_state(sel, reg.tasks["associative_recall"], results["associative_recall"]["state"],
                                   tmp_path / "s.png")
    assert f1.stat().st_size > 1000 and f2.stat().st_size > 1000


FIXTURE = '''
"""A third-party plugin for kinlm diagnose: one task (its own generator) and one architecture."""
import hashlib
from typing import Literal

from kinlm_core import DataSourceConfig, hookimpl


class FirstTokenConfig(DataSourceConfig):
    """The first input token, asked at the last position (T inputs, then T labels; V where unscored)."""
    type: Literal["first_token"] = "first_token"
    vocab_size: int = 8
    seq_len: int = 8
    n_train: int = 64
    n_validation: int = 16
    n_test: int = 16
    seed: int = 0

    def documents(self, split):
        import numpy as np

        n = {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}[split]
        rng = np.random.default_rng([self.seed, ["train", "validation", "test"].index(split)])
        for _ in range(n):
            x = rng.integers(0, self.vocab_size, size=self.seq_len)
            y = [self.vocab_size] * self.seq_len
            y[-1] = int(x[0])
            yield " ".join(map(str, x.tolist())) + " " + " ".join(map(str, y))

    def fingerprint(self):
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


@hookimpl
def kinlm_register_data_sources():
    return [FirstTokenConfig]


@hookimpl
def kinlm_diagnostics():
    return [{"task": "first_token", "about": "the first token, asked at the end", "data": {"type": "first_token"},
             "tiers": {"cpu": {"data": {"vocab_size": 8, "seq_len": 8}, "knob": "n_train", "levels": [64, 128],
                               "chance": 0.0}}},
            {"architecture": "fixture_conv", "family": "fixed", "about": "a tiny BaseConv",
             "model": {"type": "base_conv", "d_model": 8, "n_layer": 1, "conv_kernel": 2},
             "state_knob": "conv_kernel", "state_sizes": {"cpu": [2, 3, 4, 5]},
             "state_numbers": lambda model, seq_len: (model["conv_kernel"] - 1) * model["d_model"]}]
'''


@pytest.fixture
def fixture_env(tmp_path):
    import os

    site = make_dist(tmp_path / "site", "kinlm-fixture-diag", "kinlm_fixture_diag", FIXTURE)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_the_old_script_is_a_wrapper_of_the_command():
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[1] / "tools" / "diagnostics.py"
    r = subprocess.run([sys.executable, str(tool), "--plan", "--tasks", "compression", "--archs", "gpt"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "compression          [kinlm-core] seq_len = [8, 16]" in r.stdout and "gpt " in r.stdout


def test_a_third_party_task_and_architecture_appear_in_the_plan(fixture_env):
    r = kinlm("diagnose", "--plan", env=fixture_env)
    assert r.returncode == 0, r.stderr
    assert "first_token          [kinlm-fixture-diag] n_train = [64, 128]" in r.stdout
    assert "fixture_conv         [kinlm-fixture-diag] fixed" in r.stdout
    assert "state sweep conv_kernel = [2, 3, 4, 5] -> 32, 64, 96, 128 B" in r.stdout
    assert "lr grid [0.001, 0.003, 0.01]" in r.stdout and "3 verdict seeds" in r.stdout and "estimate:" in r.stdout


@pytest.mark.slow
def test_a_third_party_task_and_architecture_run_in_a_quick_suite(fixture_env, tmp_path):
    out = tmp_path / "diag"
    args = ("diagnose", "--quick", "--tasks", "first_token", "--archs", "fixture_conv", "--out", str(out))
    r = kinlm(*args, env=fixture_env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    page = (out / "diagnostics.md").read_text()
    assert "**first_token** [kinlm-fixture-diag]" in page and "| fixture_conv | kinlm-fixture-diag | fixed |" in page
    row = next(line for line in page.splitlines() if line.startswith("| fixture_conv | 0.0"))
    assert "[" in row  # a mean with its 95% interval over 3 seeds
    assert len(list((out / "first_token" / "verdict").rglob("result.json"))) == 3
    assert len(list((out / "first_token" / "tune").rglob("result.json"))) == 2
    assert (out / "diagnostics" / "accuracy_vs_difficulty_cpu_quick.png").exists()
    r2 = kinlm(*args, env=fixture_env, timeout=600)  # resumable: every finished point is skipped
    assert r2.returncode == 0 and "starting" not in r2.stdout and "skip (finished)" in r2.stdout
