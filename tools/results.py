"""Regenerate docs/results.md: the benchmark table, its figures and the verdict on each method's claim.

    python tools/results.py              # train what is missing (kinlm sweep), compare, write the page
    python tools/results.py --no-train   # only compare the runs there are and write the page

Steps: `kinlm sweep specs/benchmark/*.json --seeds 3 --out runs/benchmark` (finished runs are skipped,
so an interrupted benchmark continues where it stopped), `kinlm compare runs/benchmark -o
docs/results` (compare.md, compare.csv, bpb_vs_tokens.png, blimp_fields.png), then this page. Every
number on the page comes from those runs: the verdicts below are computed, not written by hand.

A verdict compares a method's mean over seeds with the baseline's (the benchmark's `gpt`):
difference d, standard error se = sqrt(s_a^2 / n_a + s_b^2 / n_b) (sample std over seeds);
"reproduced" when d is better than 0 by more than 2 se in the claimed direction, "contradicted" when it
is worse by more than 2 se, else "not reproduced: within seed noise".
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINLM = [sys.executable, "-m", "kinlm_core.cli"]

# specs that cannot run at the shared budget on a CPU, and why (run with --all on a GPU machine)
CPU_SKIP = {"mamba.json": "transformers' Mamba has no CPU kernel: its reference sequential scan trains at about "
                          "1/150 of gpt's speed here (about 3.5 h a run), so it runs only with --all on a GPU"}


def sh(args: list[str]) -> None:
    print("+ kinlm " + " ".join(args[3:]) if args[:3] == KINLM else "+ " + " ".join(args), flush=True)
    r = subprocess.run(args, cwd=ROOT)
    if r.returncode not in (0,):
        sys.exit(f"results: {' '.join(args)} exited with {r.returncode}")


# --- the runs, by spec name ---------------------------------------------------------------------------------


def load_runs(runs: Path) -> dict[str, list[dict]]:
    """{spec name: [row, ...]} of the finished runs: kinlm compare's rows (result, curve, BLiMP), plus
    cvfp's effective rank of its contexts at initialization and after the last phase-1 iteration."""
    from kinlm_core.compare import find_runs, read_run

    out: dict[str, list[dict]] = {}
    for d in find_runs([runs]):
        row = read_run(d)
        if row["status"] != "finished":
            continue
        for line in (d / "metrics.jsonl").read_text().splitlines():  # cvfp's phase-1 scalars
            rec = json.loads(line)
            if "fixed_point/initial_effective_rank_pct" in rec:  # logged once, at iteration 0
                row["initial_effective_rank_pct"] = rec["fixed_point/initial_effective_rank_pct"]
            if "fixed_point/effective_rank_pct" in rec:  # the last iteration's counts
                row["effective_rank_pct"] = rec["fixed_point/effective_rank_pct"]
        out.setdefault(row["name"], []).append(row)
    return out


class Stat:
    def __init__(self, values: list[float]):
        self.values = [v for v in values if v is not None and math.isfinite(v)]
        self.n = len(self.values)
        self.mean = statistics.fmean(self.values) if self.values else math.nan
        self.std = statistics.stdev(self.values) if self.n > 1 else 0.0

    def __format__(self, fmt: str) -> str:
        if not self.n:
            return "-"
        return f"{self.mean:{fmt}} ± {self.std:{fmt}}" if self.n > 1 and self.std else f"{self.mean:{fmt}}"


def stat(runs: dict, name: str, get) -> Stat:
    vals = []
    for r in runs.get(name, []):
        try:
            vals.append(float(get(r)))
        except (KeyError, TypeError, ValueError, IndexError):
            pass
    return Stat(vals)


def verdict(a: Stat, b: Stat, higher_is_better: bool, words=("reproduced", "contradicted")) -> str:
    if a.n < 2 or b.n < 2:
        return "not testable: fewer than 2 finished seeds"
    d = (a.mean - b.mean) * (1 if higher_is_better else -1)
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    if d > 2 * se:
        return f"{words[0]} (better by {abs(a.mean - b.mean):.4f}, {d / se if se else math.inf:.1f} se)"
    if d < -2 * se:
        return f"{words[1]} (worse by {abs(a.mean - b.mean):.4f}, {-d / se if se else math.inf:.1f} se)"
    return f"not reproduced: the difference ({a.mean - b.mean:+.4f}) is within seed noise (2 se = {2 * se:.4f})"


def bpb_at(run: dict, fraction: float) -> float:
    """Validation bits per byte at the first evaluation at or after ``fraction`` of the run's tokens."""
    total = run["tokens_seen"]
    for tokens, bpb in run["curve"]:
        if tokens >= fraction * total:
            return bpb
    raise IndexError


def tokens_to_reach(run: dict, target: float) -> float:
    for tokens, bpb in run["curve"]:
        if bpb <= target:
            return tokens
    return math.nan


# --- claims -------------------------------------------------------------------------------------------------

BASE = "bench-gpt"


def claims(runs: dict) -> list[str]:
    g_bpb = stat(runs, BASE, lambda r: r["bpb"])
    g_blimp = stat(runs, BASE, lambda r: r["blimp_overall"])
    out = []

    def blimp_claim(title: str, name: str, text: str):
        m = stat(runs, name, lambda r: r["blimp_overall"])
        fields = ", ".join(f"{f} {stat(runs, name, lambda r, f=f: r['blimp'][f]):.3f} vs "
                           f"{stat(runs, BASE, lambda r, f=f: r['blimp'][f]):.3f}"
                           for f in ("morphology", "syntax", "semantics", "syntax_semantics"))
        out.append(f"### {title}\n\n{text} BLiMP overall: `{name}` {m:.4f} against `{BASE}` {g_blimp:.4f} "
                   f"(n = {m.n} and {g_blimp.n} seeds; by field: {fields}). Validation bits per byte: "
                   f"{stat(runs, name, lambda r: r['bpb']):.4f} against {g_bpb:.4f}.\n\n"
                   f"**Verdict: {verdict(m, g_blimp, True)}.**\n")

    blimp_claim("VT embeddings improve linguistic competence (vt_t5)", "bench-gpt-vt",
                "The claim: adding token-to-token differences to the input embeddings improves a small model's "
                "grammatical knowledge without adding parameters. Tested as the same gpt with `vt_embeddings`.")
    blimp_claim("The acceleration penalty improves linguistic competence (accel_penalty)", "bench-gpt-accel-penalty",
                "The claim: penalising the acceleration of hidden-state trajectories improves what the model "
                "learns about grammar. Tested as the same gpt with the `accel_penalty` regularizer at the "
                "source's lambda.")
    blimp_claim("DiffWrapper (accel_penalty)", "bench-gpt-diffwrapper",
                "The source's DiffWrapper feeds velocity features into the model; the claim is the same as the "
                "penalty's.")

    h_half = stat(runs, "bench-hamiltonian", lambda r: bpb_at(r, 0.5))
    g_half = stat(runs, BASE, lambda r: bpb_at(r, 0.5))
    h_q = stat(runs, "bench-hamiltonian", lambda r: bpb_at(r, 0.25))
    g_q = stat(runs, BASE, lambda r: bpb_at(r, 0.25))
    reach = stat(runs, "bench-hamiltonian", lambda r: tokens_to_reach(r, g_bpb.mean))
    out.append(
        "### The Hamiltonian model converges faster (hamiltonian)\n\nThe claim: momentum embeddings make "
        "training converge faster than a plain transformer. Tested on the validation curve at equal "
        f"parameters and tokens: bits per byte at a quarter of the budget {h_q:.4f} against `{BASE}` {g_q:.4f}, "
        f"at half {h_half:.4f} against {g_half:.4f}, at the end "
        f"{stat(runs, 'bench-hamiltonian', lambda r: r['bpb']):.4f} against {g_bpb:.4f}; "
        + (f"it reaches the baseline's final value after {reach.mean:,.0f} tokens on average."
           if reach.n else "no seed reaches the baseline's final value within the budget.")
        + f"\n\n**Verdict (at half the budget): {verdict(h_half, g_half, False)}.**\n")

    c = stat(runs, "bench-context-vector", lambda r: r["bpb"])
    ratio = c.mean / g_bpb.mean if c.n and g_bpb.n else math.nan
    out.append(
        "### The context-vector model works without attention (context_vector)\n\nThe claim: a recurrent "
        "context vector replaces attention. Tested as bits per byte at equal parameters and tokens: "
        f"`bench-context-vector` {c:.4f} against `{BASE}` {g_bpb:.4f} (ratio {ratio:.3f}); training speed "
        f"{stat(runs, 'bench-context-vector', lambda r: r['tokens_per_s']):,.0f} against "
        f"{stat(runs, BASE, lambda r: r['tokens_per_s']):,.0f} tokens/s. The verdict asks whether it is as "
        "good as attention at equal parameters and tokens."
        f"\n\n**Verdict: {verdict(c, g_bpb, False)}.**\n")

    er0 = stat(runs, "bench-cvfp", lambda r: r["initial_effective_rank_pct"])
    er = stat(runs, "bench-cvfp", lambda r: r["effective_rank_pct"])
    cv_tokens = stat(runs, "bench-cvfp", lambda r: r["tokens_seen"])
    g_tokens = stat(runs, BASE, lambda r: r["tokens_seen"])
    if er.n < 2 or er0.n < 2:
        kept = "not testable: fewer than 2 finished seeds"
    else:
        se = math.sqrt(er.std ** 2 / er.n + er0.std ** 2 / er0.n)
        kept = ("reproduced: the contexts keep their effective rank" if er.mean >= er0.mean - 2 * se else
                f"not reproduced as stated: the effective rank falls by {er0.mean - er.mean:.1f} points "
                f"(more than 2 se = {2 * se:.1f}), to {er.mean:.1f}% of the dimension")
    out.append(
        "### CVFP keeps contexts diverse (cvfp)\n\nThe claim: fixed-point training with the diversity term keeps "
        "the contexts from collapsing. Measured: the effective rank of the contexts (Roy and Vetterli; percent "
        f"of their dimension) of the untrained model's sequential pass, {er0:.1f}%, and after the last "
        f"fixed-point iteration, {er:.1f}%. The benchmark has no cvfp run without the term, so the term's own "
        "share is not isolated. Its curriculum ends itself (phase 2's early stop) after "
        f"{cv_tokens:,.0f} tokens against the others' {g_tokens:,.0f}, so its bits per byte "
        f"({stat(runs, 'bench-cvfp', lambda r: r['bpb']):.4f} against {g_bpb:.4f}) is not at equal tokens."
        f"\n\n**Verdict (no collapse against the untrained contexts): {kept}.**\n")

    t5 = stat(runs, "bench-t5-hybrid", lambda r: r["blimp_overall"])
    out.append(
        "### T5 with the hybrid curriculum (vt_t5)\n\nThe authors' best from-scratch model is T5-small with "
        "a three-phase hybrid curriculum on BabyLM. Here a T5 of the same parameter count with that curriculum "
        f"scores BLiMP {t5:.4f} against `{BASE}` {g_blimp:.4f}; its loss is over span targets, so only BLiMP "
        "and bits per byte of the targets compare it with the decoders. There is no T5 without the curriculum "
        "in the benchmark, so the curriculum's own effect is not isolated."
        f"\n\n**Verdict (T5 + curriculum against gpt on BLiMP): "
        f"{verdict(t5, g_blimp, True, ('higher than gpt', 'lower than gpt'))}; the "
        "curriculum's claim itself is not testable here.**\n")
    return out


def blimp_scale(runs: dict) -> str:
    """How far from chance the benchmark's BLiMP scores are, and on how many pairs."""
    means = {n: stat(runs, n, lambda r: r["blimp_overall"]) for n in runs}
    means = {n: m for n, m in means.items() if m.n}
    if not means:
        return "No run has BLiMP results.\n"
    lo, hi = min(m.mean for m in means.values()), max(m.mean for m in means.values())
    pairs = sorted({json.loads(f.read_text()).get("pairs") for rs in runs.values() for r in rs
                    for f in sorted(Path(r["run"], "analysis", "blimp").glob("step_*/metrics.json"))[-1:]})
    return (f"BLiMP at this scale: every method's mean lies between {lo:.3f} and {hi:.3f} (chance: 0.5) on "
            f"{', '.join(f'{p:,}' for p in pairs)} pairs a run (the first pairs of each paradigm); models of "
            "this size and budget have learned little grammar yet, so BLiMP differences here are small and a "
            "claim about linguistic competence is tested weakly.\n")


# --- the page -----------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--runs", default="runs/benchmark")
    ap.add_argument("--no-train", action="store_true", help="do not train: use the runs there are")
    ap.add_argument("--all", action="store_true", help="also the specs too slow for a CPU (CPU_SKIP)")
    ap.add_argument("--docs", default="docs", help="where results.md and results/ go")
    args = ap.parse_args(argv)
    specs = sorted(glob.glob(str(ROOT / "specs" / "benchmark" / "*.json")))
    skipped = {} if args.all else {Path(p).name: CPU_SKIP[Path(p).name] for p in specs if Path(p).name in CPU_SKIP}
    specs = [p for p in specs if Path(p).name not in skipped]
    if not args.no_train:
        sh([*KINLM, "sweep", *specs, "--seeds", str(args.seeds), "--out", args.runs])
    docs = ROOT / args.docs
    figures = docs / "results"
    sh([*KINLM, "compare", args.runs, "-o", str(figures)])
    runs = load_runs(ROOT / args.runs)
    table = (figures / "compare.md").read_text()
    import torch

    page = [
        "# Results: the methods on one benchmark\n",
        "Generated by `python tools/results.py` (it runs `kinlm sweep specs/benchmark/*.json --seeds "
        f"{args.seeds} --out {args.runs}`, then `kinlm compare {args.runs} -o docs/results`); do not edit by hand. "
        "Every method trains on the same data (the embedded `wiki_sample`), with the same trained BPE "
        "tokenizer, the same tokens (cvfp's curriculum ends itself earlier, see below) and a parameter count "
        "within 10% of the `gpt` baseline "
        "([specs/benchmark/README.md](../specs/benchmark/README.md)). Means ± sample std over seeds.\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}; "
        f"{sum(len(v) for v in runs.values())} finished runs. Wall time and tokens/s depend on the machine "
        "and its load; losses and BLiMP do not.\n",
        "## The table\n", table.strip() + "\n",
        "## Figures\n",
        "![validation bits per byte against tokens seen](results/bpb_vs_tokens.png)\n",
        "![BLiMP accuracy by field](results/blimp_fields.png)\n",
        *([] if torch.cuda.is_available() else [
            "A second table at a larger budget on a GPU (and the Hamiltonian paper configuration at 124M against "
            "`gpt` at 124M) is not here: this page was generated on a machine without one.\n"]),
        "## The claims\n",
        "Each verdict compares the method's mean over seeds with the `gpt` baseline's: reproduced when it is "
        "better by more than two standard errors, contradicted when worse by more than two, else within "
        "seed noise. At this scale (about 1-2 M parameters, minutes of CPU training) a claim that is not "
        "reproduced is a result about small models and short budgets, not a refutation of the paper.\n",
        blimp_scale(runs),
        *claims(runs),
    ]
    if skipped:
        at = page.index("## The table\n")
        page[at:at] = ["Not in the table: " + "; ".join(f"`specs/benchmark/{k}` ({v})" for k, v in skipped.items())
                     + ".\n"]
    (docs / "results.md").write_text("\n".join(page))
    print(f"wrote {docs / 'results.md'}")


if __name__ == "__main__":
    main()
