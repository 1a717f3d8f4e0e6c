"""`kinlm compare` on fake run directories (spec.json, result.json, metrics.jsonl, BLiMP metrics):
seed groups, --group-by, one table per objective, the tokenizer note, CSV, figures, errors."""

import pytest
import csv
import math
import json
from pathlib import Path

from helpers import kinlm

from kinlm_core.compare import read_run
from kinlm_core.scaling import fit_power_law

FIELDS = ("morphology", "syntax", "semantics", "syntax_semantics")


def fake_run(d, name="base", seed=1, model=None, objective=None, tokenizer=None, regularizers=None,
             status="finished", step=10, evals=(), blimp=None, seconds=True, metrics_extra=(), params=1_000_000):
    """A run directory as compare reads it. evals: (step, loss, bpb, tokens_seen or None)."""
    d.mkdir(parents=True)
    spec = {"name": name, "seed": seed, "model": model or {"type": "gpt", "n_layer": 2},
            "tokenizer": tokenizer or {"type": "bpe", "vocab_size": 1024}, "eval": {"split": "validation"}}
    if objective:
        spec["objective"] = {"type": objective}
    if regularizers:
        spec["regularizers"] = [{"type": r} for r in regularizers]
    (d / "spec.json").write_text(json.dumps(spec))
    lines = list(metrics_extra)
    for s, loss, bpb, tok in evals:
        rec = {"step": s, "eval/loss": loss, "eval/ppl": 2.0 ** loss, "eval/bpb": bpb}
        if tok is not None:
            rec["eval/tokens_seen"] = tok
        lines.append(rec)
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if status is not None:
        result = {"status": status, "step": step, "params": params, "tokens_seen": 1000 * step,
                  "objective": objective or "causal_lm"}
        if seconds:
            result.update(train_seconds=step * 0.5, wall_seconds=step * 1.0, tokens_per_s=2000.0)
        (d / "result.json").write_text(json.dumps(result))
    if blimp is not None:
        for st, overall in ((5, 0.1), (10, blimp)):  # the newest step counts
            b = d / "analysis" / "blimp" / f"step_{st:07d}"
            b.mkdir(parents=True)
            b.joinpath("metrics.json").write_text(json.dumps(
                {"overall": overall, **{f: overall + 0.01 * i for i, f in enumerate(FIELDS)},
                 "adjunct_island": overall, "pairs": 670}))
    return d


def seeds(root, name="base", bpbs=(2.0, 2.2, 2.4), losses=(3.0, 3.3, 3.6), blimps=(0.6, 0.7, 0.8), **kw):
    return [fake_run(root / name / f"seed_{i}", name=name, seed=i, evals=[(5, 9.0, 9.0, 5000), (10, lo, b, 10000)],
                     blimp=bl, **kw) for i, (b, lo, bl) in enumerate(zip(bpbs, losses, blimps))]


def table_rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in out.splitlines()
            if ln.startswith("| ") and not ln.startswith("| rank")]


def test_seed_groups_mean_and_sample_std(tmp_path):
    seeds(tmp_path / "sweep")
    for d in (tmp_path / "sweep" / "base").iterdir():  # an export keeps a copy of spec.json: not a run
        (d / "final").mkdir()
        (d / "final" / "spec.json").write_text((d / "spec.json").read_text())
    other = fake_run(tmp_path / "other", name="other", model={"type": "hamiltonian"}, regularizers=["accel_penalty"],
                     evals=[(10, 2.5, 1.9, 10000)])
    r = kinlm("compare", str(tmp_path / "sweep"), str(other), str(tmp_path / "sweep" / "base" / "seed_0"))
    assert r.returncode == 0, r.stderr
    assert "note:" not in r.stdout  # one objective, one tokenizer
    header = next(ln for ln in r.stdout.splitlines() if ln.startswith("| rank"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "rank", "runs", "method", "n", "status", "params", "tokens seen", "wall time", "tokens/s", "eval loss",
        "perplexity", "bits per byte", "BLiMP"]
    rows = table_rows(r.stdout)
    assert [x[2] for x in rows] == ["hamiltonian + accel_penalty", "gpt"]  # ranked by bits per byte
    one, grp = rows
    assert one[3] == "1" and one[11] == "1.900" and "±" not in "".join(one) and one[12] == "-"
    # hand-computed: mean 2.2, sample std sqrt(((-.2)^2 + 0 + .2^2) / 2) = 0.2; a run reached twice counts once
    assert grp[3] == "3" and grp[4] == "finished" and grp[1] == f"{tmp_path}/sweep/base/{{seed_0,seed_1,seed_2}}"
    assert grp[9] == "3.3000 ± 0.3000" and grp[11] == "2.200 ± 0.200" and grp[12] == "0.700 ± 0.100"
    assert grp[5] == "1M" and grp[6] == "10k" and grp[7] == "10.0s" and grp[8] == "2k"  # equal over seeds: no "± 0"
    js = json.loads(kinlm("compare", "--json", str(tmp_path)).stdout)
    assert [(x["group_rank"], x["group_n"], x["seed"], x["bpb"]) for x in js] == [
        (1, 1, 1, 1.9), (2, 3, 0, 2.0), (2, 3, 1, 2.2), (2, 3, 2, 2.4)]
    assert js[1]["blimp"]["syntax"] == 0.61 and js[1]["wall_seconds"] == 10.0


def test_group_by_a_spec_path_and_an_unknown_one(tmp_path):
    seeds(tmp_path, "a", bpbs=(2.0, 2.2, 2.4))
    fake_run(tmp_path / "b", name="b", model={"type": "gpt", "n_layer": 4}, evals=[(10, 3.0, 2.6, 10000)])
    r = kinlm("compare", "--group-by", "model.type", str(tmp_path))
    assert r.returncode == 0, r.stderr
    (row,) = table_rows(r.stdout)
    assert row[1] == "model.type=gpt" and row[3] == "4"
    m = (2.0 + 2.2 + 2.4 + 2.6) / 4
    sd = (sum((x - m) ** 2 for x in (2.0, 2.2, 2.4, 2.6)) / 3) ** 0.5
    assert row[11] == f"{m:.3f} ± {sd:.3f}"
    r = kinlm("compare", "--group-by", "model.n_layers", str(tmp_path))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == "kinlm compare: --group-by model.n_layers: no such field in any run's spec.json"


def test_objectives_in_separate_tables_and_the_tokenizer_note(tmp_path):
    a = fake_run(tmp_path / "a", name="a", evals=[(10, 3.0, 2.5, 10000)])
    c = fake_run(tmp_path / "c", name="c", tokenizer={"type": "byte"}, evals=[(10, 1.7, 2.4, 10000)])
    s = fake_run(tmp_path / "s", name="s", objective="span_corruption", model={"type": "vt_embeddings",
                 "inner": {"type": "t5"}}, evals=[(10, 1.0, 0.5, 10000)])
    r = kinlm("compare", str(s), str(a), str(c))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "2 different objectives (span_corruption, causal_lm)" in out
    blocks = {b.split("]")[0]: b for b in out.split("[objective: ")[1:]}
    assert set(blocks) == {"causal_lm", "span_corruption"}
    assert "vt_embeddings(t5) [span_corruption]" in blocks["span_corruption"] and str(a) not in blocks["span_corruption"]
    assert [x[1] for x in table_rows(blocks["causal_lm"])] == [str(c), str(a)]
    assert ("ranked on bits per byte; loss and perplexity are per token and not comparable across tokenizers"
            in blocks["causal_lm"])
    assert "tokenizers" not in blocks["span_corruption"]


def test_out_writes_markdown_csv_and_two_figures(tmp_path):
    seeds(tmp_path / "runs")
    fake_run(tmp_path / "runs" / "old", name="old", seconds=False, blimp=None,
             metrics_extra=[{"step": 5, "perf/tokens_seen": 4000}], evals=[(5, 3.1, 2.1, None)])
    out = tmp_path / "out"
    r = kinlm("compare", str(tmp_path / "runs"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    for f in ("compare.md", "compare.csv", "bpb_vs_tokens.png", "blimp_fields.png"):
        assert f"wrote {out / f}" in r.stdout
    assert table_rows((out / "compare.md").read_text())[0][7] == "-"  # an older run has no seconds
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["n"] for r in rows] == ["1", "3"]
    grp = rows[1]
    assert abs(float(grp["bits_per_byte_mean"]) - 2.2) < 1e-12 and abs(float(grp["bits_per_byte_std"]) - 0.2) < 1e-12
    assert abs(float(grp["blimp_syntax_mean"]) - 0.71) < 1e-12
    assert abs(float(grp["blimp_morphology_std"]) - 0.1) < 1e-12
    assert sorted(grp["run_dirs"].split(";")) == [str(tmp_path / "runs" / "base" / f"seed_{i}") for i in range(3)]
    assert rows[0]["wall_seconds_mean"] == "" and rows[0]["blimp_overall_mean"] == ""
    for png in ("bpb_vs_tokens.png", "blimp_fields.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_older_runs_take_tokens_seen_from_log_lines(tmp_path):
    d = fake_run(tmp_path / "old", seconds=False, metrics_extra=[{"step": 5, "perf/tokens_seen": 4000}],
                 evals=[(5, 3.1, 2.1, None), (10, 3.0, 2.0, 9000)])
    row = read_run(d)
    assert row["curve"] == [(4000.0, 2.1), (9000.0, 2.0)]
    assert row["wall_seconds"] is None and row["bpb"] == 2.0


def test_compare_ranks_with_status_and_refuses_what_is_not_a_run(tmp_path):
    a = fake_run(tmp_path / "a", name="a", evals=[(5, 4.0, 2.9, 5000), (10, 3.0, 2.5, 10000)])
    c = fake_run(tmp_path / "c", name="c", status="preempted (SIGTERM) at step 7", step=7, evals=[(5, 3.5, 2.3, 5000)])
    d = fake_run(tmp_path / "d", name="d", status=None, metrics_extra=[{"step": 3, "train/loss": 9.0}])
    (tmp_path / "empty").mkdir()
    r = kinlm("compare", str(a), str(tmp_path / "empty"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"kinlm compare: {tmp_path / 'empty'}: no runs found under it (a run directory holds spec.json)"
    r = kinlm("compare", str(tmp_path / "aa"))  # a typo: said at once, with the names nearby
    assert r.returncode == 2 and r.stderr.strip() == (
        f"kinlm compare: {tmp_path / 'aa'}: no such run directory; did you mean {tmp_path / 'a'}?")
    r = kinlm("compare", str(d), str(a), str(c))
    assert [(Path(x[1]).name, x[4], x[11]) for x in table_rows(r.stdout)] == [
        ("c", "preempted", "2.300"), ("a", "finished", "2.500"), ("d", "failed", "-")]  # no evaluation last
    # "finished" short of train.max_steps without an early stop: the run died of an exception
    spec = json.loads((a / "spec.json").read_text())
    (a / "spec.json").write_text(json.dumps({**spec, "train": {"max_steps": 100}}))
    assert json.loads(kinlm("compare", "--json", str(a)).stdout)[0]["status"] == "failed"


def test_method_labels_name_what_makes_the_method():
    from kinlm_core.compare import method_label

    assert method_label({"model": {"type": "llama_like", "preset": "LLaMA-PostLN"}}) == "llama_like LLaMA-PostLN"
    assert method_label({"model": {"type": "vt_embeddings", "inner": {"type": "t5"}},
                         "regularizers": [{"type": "accel_penalty"}], "objective": {"type": "hybrid_tasks"},
                         "curriculum": {"type": "hybrid"}}) == "vt_embeddings(t5) + accel_penalty [hybrid_tasks, hybrid]"


def lr_records(lrs, start=1):
    return [{"step": s, "train/lr": lr, "train/loss": 3.0} for s, lr in enumerate(lrs, start)]


def test_only_seeds_are_grouped_reruns_and_other_histories_are_rows_of_their_own(tmp_path):
    straight = [1e-3, 9e-4, 7e-4, 5e-4, 3e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5]
    # extended from 5 to 10 steps: the schedule was stretched at step 5, so steps 6..10 differ
    extended = straight[:5] + [6e-4, 5e-4, 3e-4, 1e-4, 1e-5]
    ev = [(10, 3.0, 2.0, 10000)]
    a = fake_run(tmp_path / "runs" / "a", seed=1, evals=ev, metrics_extra=lr_records(straight))
    b = fake_run(tmp_path / "runs" / "b", seed=2, evals=[(10, 3.0, 2.2, 10000)], metrics_extra=lr_records(straight))
    # stopped at step 7: agrees with a and b on the steps it logged, so it is their third seed
    c = fake_run(tmp_path / "runs" / "c", seed=3, status="preempted (SIGTERM) at step 7", step=7,
                 evals=[(5, 3.5, 2.3, 5000)], metrics_extra=lr_records(straight[:7]))
    e = fake_run(tmp_path / "runs" / "e", seed=1, evals=[(10, 3.1, 2.1, 10000)], metrics_extra=lr_records(extended))
    r = kinlm("compare", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    rows = {x[1]: x for x in table_rows(r.stdout)}
    assert set(rows) == {f"{tmp_path}/runs/{{a,b,c}}", str(e)}
    assert rows[str(e)][3] == "1" and rows[f"{tmp_path}/runs/{{a,b,c}}"][3] == "3"
    assert f"note: {a}, {b}, {c}, {e}: same spec but a different history" in r.stdout
    # a rerun of seed 1 (same spec, same history): not a seed; every run of that history is its own row
    d = fake_run(tmp_path / "runs" / "d", seed=1, evals=[(10, 3.0, 2.05, 10000)], metrics_extra=lr_records(straight))
    r = kinlm("compare", str(tmp_path / "runs"))
    rows = [x[1] for x in table_rows(r.stdout)]
    assert sorted(rows) == sorted(str(x) for x in (a, b, c, d, e))
    assert f"note: {a}, {b}, {c}, {d}: same spec and seed (1): reruns, not seeds; each run is a row of its own" in r.stdout
    js = json.loads(kinlm("compare", "--json", str(tmp_path / "runs")).stdout)
    assert sorted(x["group_n"] for x in js) == [1, 1, 1, 1, 1]


def test_blimp_measured_at_another_step_than_the_row_is_left_out(tmp_path):
    a = fake_run(tmp_path / "a", seed=1, evals=[(10, 3.0, 2.0, 10000)], blimp=0.7)
    b = fake_run(tmp_path / "b", seed=2, step=20, evals=[(20, 3.0, 2.2, 20000)], blimp=0.6)  # BLiMP at 10 of 20
    r = kinlm("compare", str(a), str(b))
    assert r.returncode == 0, r.stderr
    (row,) = table_rows(r.stdout)
    assert row[3] == "2" and row[12] == "0.700"  # b's BLiMP of step 10 is not averaged in
    assert (f"note: {b}: BLiMP left out: measured at step 10, the run's figures are at step 20 "
            f"(`kinlm eval {b} --blimp` measures it again)") in r.stdout
    assert json.loads(kinlm("compare", "--json", str(b)).stdout)[0]["blimp_step"] == 10


def test_a_run_extended_with_extend_is_not_a_seed_even_under_a_curriculum(tmp_path):
    runs = [fake_run(tmp_path / f"s{i}", seed=i, evals=[(10, 3.0, 2.0 + i / 10, 10000)]) for i in range(3)]
    for d in runs:  # a curriculum: phases may end at seed-dependent steps, so learning rates are not compared
        spec = json.loads((d / "spec.json").read_text())
        (d / "spec.json").write_text(json.dumps({**spec, "curriculum": {"type": "phases"}}))
        (d / "metrics.jsonl").write_text((d / "metrics.jsonl").read_text() + json.dumps(
            {"step": 3, "train/lr": 0.001 * (d.name == "s1")}) + "\n")
    result = json.loads((runs[2] / "result.json").read_text())
    (runs[2] / "result.json").write_text(json.dumps({**result, "extended_from": [5]}))
    rows = {x[1]: x[3] for x in table_rows(kinlm("compare", *map(str, runs)).stdout)}
    assert rows == {f"{tmp_path}/{{s0,s1}}": "2", str(runs[2]): "1"}


def scaling_sweep(root, steps=(10, 20, 40, 80), factors=(1.01, 0.99)):
    """Seeds at each size; loss = 50 * tokens^-0.25 times a factor per seed (the same at every size,
    so the least-squares slope is exactly -0.25); tokens seen = 1000 * step (fake_run)."""
    runs = []
    for st in steps:
        for s, f in enumerate(factors):
            loss = 50 * (1000 * st) ** -0.25 * f
            d = fake_run(root / f"t{st}" / f"seed_{s}", seed=s, step=st, evals=[(st, loss, loss / 2, 1000 * st)])
            spec = json.loads((d / "spec.json").read_text())
            (d / "spec.json").write_text(json.dumps({**spec, "curriculum": {"type": "x", "train_tokens": 500 * st}}))
            runs.append(d)
    return runs


def test_fit_scaling_prints_the_law_and_writes_the_figure(tmp_path):
    scaling_sweep(tmp_path / "sweep")
    r = kinlm("compare", str(tmp_path / "sweep"), "--fit-scaling", "tokens")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("| rank")  # the table first, then the fit
    fit = r.stdout.split("\n\n")[-1].splitlines()
    assert fit[0] == ("scaling fit: eval/loss = a * tokens seen^alpha  (least squares in log space; 8 runs, "
                      "4 distinct tokens seen values)")
    a = 50 * math.exp((math.log(1.01) + math.log(0.99)) / 2)
    assert fit[1] == f"  a     = {a:.6g}"
    assert fit[2].startswith("  alpha = -0.2500  95% CI [") and "(t-interval, 6 df" in fit[2]
    lo, hi = (float(v) for v in fit[2].split("[")[1].split("]")[0].split(", "))
    assert lo < -0.25 < hi and hi - lo < 0.05
    out = tmp_path / "out"
    r = kinlm("compare", str(tmp_path / "sweep"), "--fit-scaling", "curriculum.train_tokens", "--scaling-metric",
              "eval/bpb", "--scaling-floor", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert f"wrote {out / 'scaling_curriculum.train_tokens.png'}" in r.stdout
    assert "scaling fit: eval/bpb = a * curriculum.train_tokens^alpha + floor" in r.stdout
    js = json.loads((out / "scaling_curriculum.train_tokens.json").read_text())
    assert js["metric"] == "eval/bpb" and js["method"] == "bootstrap" and js["seed"] == 0 and len(js["points"]) == 8
    assert sorted({p["x"] for p in js["points"]}) == [5000, 10000, 20000, 40000]
    assert js["ci"][0] <= js["alpha"] <= js["ci"][1] and js["floor"] >= 0
    # exp(KEY): the fit of e^loss, as fit_power_law gives it on the same points
    r = kinlm("compare", str(tmp_path / "sweep"), "--fit-scaling", "steps", "--scaling-metric", "exp(eval/loss)")
    assert r.returncode == 0, r.stderr
    losses = [50 * (1000 * st) ** -0.25 * f for st in (10, 20, 40, 80) for f in (1.01, 0.99)]
    direct = fit_power_law([st for st in (10, 20, 40, 80) for _ in (0, 1)], [math.exp(v) for v in losses])
    assert "scaling fit: exp(eval/loss) = a * steps^alpha" in r.stdout and f"alpha = {direct.alpha:.4f}" in r.stdout
    png = (out / "scaling_curriculum.train_tokens.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (out / "compare.md").exists()


@pytest.mark.slow
def test_fit_scaling_refuses_bad_input_in_one_line(tmp_path):
    runs = scaling_sweep(tmp_path / "sweep", steps=(10, 20))
    r = kinlm("compare", str(tmp_path / "sweep"), "--fit-scaling", "steps", "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stdout == "" and not (tmp_path / "out").exists()
    assert r.stderr.strip() == "kinlm compare: --fit-scaling steps: needs at least 3 distinct x values, got 2 (10, 20)"
    fake_run(tmp_path / "sweep" / "t40", step=40, evals=[(40, 2.0, 1.0, 40000)])
    bad = fake_run(tmp_path / "sweep" / "t80", step=80, evals=[(80, 0.0, 1.0, 80000)])
    r = kinlm("compare", str(tmp_path / "sweep"), "--fit-scaling", "steps")
    assert r.returncode == 2 and r.stderr.strip() == (
        f"kinlm compare: --fit-scaling steps: {bad} (steps, eval/loss): y = 0 is not a positive number "
        "(a power law is fitted to logarithms)")
    # a run without the metric, or one that has not finished, is left out with a note
    (bad / "metrics.jsonl").write_text("")
    cut = fake_run(tmp_path / "sweep" / "t160", step=160, status="preempted (SIGTERM) at step 160",
                   evals=[(160, 1.0, 1.0, 160000)])
    r = kinlm("compare", str(tmp_path / "sweep"), "--fit-scaling", "steps")
    assert r.returncode == 0, r.stderr
    assert f"note: {bad}: no eval/loss; left out of the scaling fit" in r.stdout and "5 runs, 3 distinct" in r.stdout
    assert f"note: {cut}: preempted, not finished; left out of the scaling fit" in r.stdout
    assert r.stdout.index("left out of the scaling fit") > r.stdout.index("| rank")
    r = kinlm("compare", str(runs[0]), "--fit-scaling", "model.width")
    assert r.returncode == 2 and r.stderr.strip() == ("kinlm compare: --fit-scaling model.width: not tokens, "
                                                      "parameters or steps, and no such field in any run's spec.json")
    r = kinlm("compare", str(runs[0]), "--fit-scaling", "model.type")
    assert r.returncode == 2 and r.stderr.strip() == f'kinlm compare: {runs[0]}: model.type (spec.json) is "gpt", not a number'
    r = kinlm("compare", str(runs[0]), "--scaling-floor")
    assert r.returncode == 2 and r.stderr.strip() == "kinlm compare: --scaling-metric and --scaling-floor need --fit-scaling FIELD"
