"""tools/results.py, the command behind docs/results.md: a thin wrapper over `kinlm claims report`
and `kinlm compare`. On fake runs of two installed claims it writes the page with a summary, a card
per installed claim (the others: not run), the table of the runs the cards use and its figures."""

import json
import subprocess
import sys

from helpers import ROOT
from test_claims import fake_run, arm_dir, finals

from kinlm_core import claims as cl


def plant_page_runs(runs):
    """Fake runs of two installed claims (cvfp.effective_rank with its controls, accel_penalty.blimp
    with its lr grid on tuning seed 1337 and its verdict seeds 1338-1340), as `kinlm claims run`
    lays them out."""
    items = {i.claim.id: i for i in cl.installed()[0]}
    er = items["cvfp.effective_rank"]
    for k, v in enumerate((55.0, 58.0, 57.0)):
        fake_run(arm_dir(runs, er, "cvfp") / f"seed_{1338 + k}", 1338 + k, [(1000, 7.5)],
                 extra={"fixed_point/effective_rank_pct": v, "fixed_point/initial_effective_rank_pct": 20.0 + k})
        # its controls: the untrained block above (20-22%) and the arm without the diversity term (10-12%)
        fake_run(arm_dir(runs, er, "no_diversity") / f"seed_{1338 + k}", 1338 + k, [(1000, 7.5)],
                 extra={"fixed_point/effective_rank_pct": 10.0 + k})
    bl = items["accel_penalty.blimp"]
    for arm, accs in (("gpt", (0.55, 0.56, 0.55)), ("accel", (0.60, 0.61, 0.62))):
        for lr in (cl.arms._grid_value(v) for v in bl.claim.lr_grid.values):
            finals(runs, bl, arm, [5.0 if lr == "0.002" else 5.5], lr=lr, seed0=1337, tuning=True,
                   blimp={"overall": 0.5, "pairs": 6700})
        base = arm_dir(runs, bl, arm) / "train.lr=0.002"
        for k, a in enumerate(accs):
            fake_run(base / f"seed_{1338 + k}", 1338 + k, [(500, 5.6), (1000, 5.0)],
                     blimp={"overall": a, "pairs": 6700})
        # the test split as `kinlm claims report` keeps it, and the n-gram controls the arms beat
        for run in base.glob("seed_*"):
            (run / "eval_test.json").write_text(json.dumps({"loss": 5.0, "ppl": 148.4, "bpb": 2.5}))
            # the manipulation checks: the penalised layers' acceleration is lower in the penalised arm
            traj = run / "analysis" / "trajectory" / "step_0001000"
            traj.mkdir(parents=True)
            seed = int(run.name.split("_")[1]) - 1337
            (traj / "metrics.json").write_text(json.dumps(
                {f"accel/layer_{i}": (0.5 if arm == "accel" else 1.0) + 0.01 * seed + 0.001 * i for i in (1, 3, 4)}))
        for order, loss in ((1, 6.5), (2, 5.5)):
            (base.parents[1] / f"ngram{order}_k0.01_test.json").write_text(json.dumps({"loss": loss}))
    return items


def test_results_page_comes_from_the_claims(tmp_path):
    runs = tmp_path / "runs"
    items = plant_page_runs(runs)
    r = subprocess.run([sys.executable, "tools/results.py", "--no-train", "--runs", str(runs),
                        "--docs", str(tmp_path / "docs")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    page = (tmp_path / "docs" / "results.md").read_text()
    cards = json.loads((tmp_path / "docs" / "results" / "claims.json").read_text())
    by_id = {c["id"]: c for c in cards}
    assert set(by_id) == set(items)  # every installed claim has a card
    assert by_id["cvfp.effective_rank"]["verdict"] == "supported"
    assert by_id["accel_penalty.blimp"]["verdict"] == "supported"
    assert by_id["hamiltonian.converges_faster"]["verdict"] == "not testable"
    # the same runs answer accel_penalty.perplexity (equal losses: inconclusive); Holm within each source's
    # family (accel_penalty's claims share one with vt_t5's: one source), BH across the page
    assert by_id["accel_penalty.perplexity"]["verdict"] == "inconclusive"
    # cvfp.diversity_term compares the source's w = 0.01 with 0.8 (#30 item 6): not these w = 0 runs
    assert by_id["cvfp.diversity_term"]["verdict"] == "not testable"
    assert by_id["cvfp.effective_rank"]["family"] == "cvfp" and by_id["cvfp.effective_rank"]["family_size"] == 1
    w0 = next(r for r in by_id["cvfp.effective_rank"]["controls"] if r["role"] == "ablation")
    assert w0["gate"]["test"] == "paired" and w0["gate"]["beaten"]  # a one-sample claim's w = 0 arm: same seeds
    assert by_id["accel_penalty.blimp"]["family"] == "kinematic_representation"
    assert by_id["accel_penalty.blimp"]["family_size"] == 2 and by_id["accel_penalty.blimp"]["page_size"] == 3
    assert by_id["accel_penalty.blimp"]["design"]["test"] == "paired"  # both arms ran seeds 1338-1340
    assert "no difference detected" not in page.lower()
    # context_vector.gap_vs_transformer trains its own 1,200-step gpt arm, which nothing here planted: no runs
    assert "Registrations on this page: 9 registered after runs, 5 no runs." in page
    summary = page.split("## Summary")[1].split("## The claims")[0]
    assert "2 supported, 0 contradicted, 1 inconclusive, 11 not testable." in summary
    assert "| [cvfp.effective_rank](#fixed-point-training-keeps-the-contexts-diverse-the-sources-absolute-criterion)" \
        " | cpu | fixed_point/effective_rank_pct | one-sample, threshold | supported | +26.6667 |" in summary
    section = page.split("### The acceleration penalty improves linguistic competence\n")[1].split("### ")[0]
    assert "**Verdict: supported**" in section
    assert "acceleration at penalised layer 1" in section  # its manipulation check, passed, on the card
    assert "0.001: 5.5000, 0.002*: 5.0000, 0.004: 5.5000, 0.008: 5.5000 (eval/loss, tuning seed 1337)" in section
    assert "Floor (one-sample t-test of the arm's per-seed values (one number per seed) against chance 0.5)" in section
    # 6 verdict runs and the grid's 8 tuning runs, made without `kinlm claims run`: no registration stamp
    assert "Registration: Not pre-registered: 14 of the 14 runs the verdict uses carry no record" in section
    table = page.split("## The runs")[1]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "seed_1338" in ln]
    assert len(rows) == 4  # cvfp, cvfp w = 0, gpt and accel at their chosen rate, seeds grouped
    for f in ("compare.md", "compare.csv", "bpb_vs_tokens.png", "blimp_fields.png"):
        assert (tmp_path / "docs" / "results" / f).stat().st_size > 100
