"""Regenerate docs/results.md from the claims the installed plugins ship (`kinlm claims`).

    python tools/results.py                 # train what is missing (CPU tier), then write the page
    python tools/results.py --no-train      # only report the runs there are
    python tools/results.py --tier gpu      # also the claims too large for 2 CPU cores
    python tools/results.py --from-archive  # rewrite the page from docs/results/archive.jsonl alone

A thin wrapper: `kinlm claims run --all --tier cpu --out runs/claims` (resumable: finished runs are
skipped), the cards `kinlm claims report --all` computes (a verdict card per claim, Holm's
correction within each claim's family, Benjamini-Hochberg's q across the page; computed in this
process, so that everything they read of the runs is kept), `kinlm compare` over the runs the cards
use (the table and figures in docs/results/), then the page, and beside it the raw archive
docs/results/archive.jsonl (kinlm_core.claims.archive: every run's per-seed values, spec, claim
hash, tokens, parameters and environment, and every figure the cards read). With --from-archive
the cards are computed again from the archive instead of the runs (nothing trains, runs/ is not
read) and the page comes out byte for byte as it was. Every number comes from the runs; the
verdicts are computed by kinlm_core.claims and kinlm_core.stats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINLM = [sys.executable, "-m", "kinlm_core.cli"]


def sh(args: list[str], ok=(0,)) -> int:
    print("+ kinlm " + " ".join(args[3:]) if args[:3] == KINLM else "+ " + " ".join(args), flush=True)
    r = subprocess.run(args, cwd=ROOT)
    if r.returncode not in ok:
        sys.exit(f"results: {' '.join(args)} exited with {r.returncode}")
    return r.returncode


def summary(cards: list[dict]) -> str:
    from kinlm_core.claims import fmt_diff, fmt_p

    rows = ["| claim | tier | metric | test | verdict | difference | 95% CI | p | family: Holm p | page: BH q | "
            "registration |", "|---|---|---|---|---|---:|---|---:|---:|---:|---|"]
    for c in cards:
        cmp = c.get("comparison") or {}
        sc = cmp.get("scale", "absolute")
        ci = f"[{fmt_diff(c['ci95'][0], sc)}, {fmt_diff(c['ci95'][1], sc)}]" if c.get("ci95") else "-"
        design = c.get("design") or {}
        test = (design.get("test", "-") + (f", {design['hypothesis']}" if design.get("hypothesis") else "")).replace(
            "one_sample", "one-sample")
        reg = (c.get("registration") or {}).get("state", "-")
        rows.append(f"| [{c['id']}](#{anchor(c['title'])}) | {c['tier']} | {c['metric']} | {test} | {c['verdict']} | "
                    f"{fmt_diff(c['difference'], sc)} | {ci} | {fmt_p(c['p'])} | {c.get('family', '-')}: "
                    f"{fmt_p(c.get('p_adjusted'))} | {fmt_p(c.get('q_bh'))} | {reg} |")
    return "\n".join(rows) + "\n"


def registrations(cards: list[dict]) -> str:
    """How many cards are in each registration state, e.g. "12 registered after exploratory runs"."""
    states: dict[str, int] = {}
    for c in cards:
        st = (c.get("registration") or {}).get("state", "not registered")
        states[st] = states.get(st, 0) + 1
    return ", ".join(f"{n} {st}" for st, n in sorted(states.items(), key=lambda x: -x[1])) or "none"


def anchor(title: str) -> str:
    """GitHub's heading anchor."""
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return keep.replace(" ", "-")


def environment(args) -> dict:
    """The page's environment (kept in the archive, so the page can be rewritten elsewhere)."""
    import torch

    return {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "tier": args.tier, "runs": args.runs, "seeds": args.seeds}


def cards_json(cards: list[dict]) -> str:
    """The cards as docs/results/claims.json: paths relative to the repository."""
    from kinlm_core.claims import json_card

    return (json.dumps([json_card(c) for c in cards], indent=2) + "\n").replace(f"{ROOT}/", "")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/claims", help="where the claims' runs go")
    ap.add_argument("--tier", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: each claim's)")
    ap.add_argument("--parallel", default="2", help="runs at once (kinlm sweep --parallel; default 2: one thread "
                    "each on 2 cores, as the measured budget in specs/claims/README.md)")
    ap.add_argument("--no-train", action="store_true", help="do not train: report the runs there are")
    ap.add_argument("--from-archive", action="store_true", help="rewrite the page from DOCS/results/archive.jsonl "
                    "alone: no training, no run is read")
    ap.add_argument("--docs", default="docs", help="where results.md and results/ go")
    ap.add_argument("claims", nargs="*", help="only these claims (default: every installed claim)")
    args = ap.parse_args(argv)
    from kinlm_core import claims as cl
    from kinlm_core.claims import archive

    os.chdir(ROOT)  # run paths on the cards and in the archive are relative to the repository
    docs = ROOT / args.docs
    figures = docs / "results"
    figures.mkdir(parents=True, exist_ok=True)
    cards_file, archive_file = figures / "claims.json", figures / "archive.jsonl"
    if args.from_archive:
        lines = archive.read(archive_file)
        env = next(d for d in lines if d["kind"] == "page")
        args.tier, args.runs, args.seeds = env["tier"], env["runs"], env.get("seeds")
        selected = archive.installed_from(lines)
        print(f"+ the cards of {len(selected)} claims from {archive_file}", flush=True)
        with archive.replaying(lines):
            cards = cl.report(selected, Path(args.runs), args.seeds, figures)
        table = next((d["markdown"] for d in lines if d["kind"] == "compare"), "")
    else:
        which = list(args.claims) or ["--all"]
        seeds = ["--seeds", str(args.seeds)] if args.seeds else []
        if not args.no_train:
            sh([*KINLM, "claims", "run", *which, "--tier", args.tier, "--out", args.runs, "--parallel", args.parallel,
                *seeds], ok=(0, 1))  # a failed run is reported on its card
        selected = cl.select(list(args.claims), None, not args.claims)
        print(f"+ kinlm claims report {' '.join(which)} --out {args.runs} --json -o {cards_file} --figures {figures}",
              flush=True)
        with archive.recording() as rec:
            cards = cl.report(selected, Path(args.runs), args.seeds, figures)
        runs = sorted({r for c in cards for a in c["arms"] for r in a["runs"]})
        table = ""
        if runs:
            sh([*KINLM, "compare", *runs, "-o", str(figures)])
            table = (figures / "compare.md").read_text().strip() + "\n"
        env = {"kind": "page", **environment(args)}
        archive.write(archive_file, archive.lines(rec, selected, cards, {k: v for k, v in env.items() if k != "kind"},
                                                  table))
        print(f"wrote {archive_file}")
    cards_file.write_text(cards_json(cards))
    cards = json.loads(cards_file.read_text())
    runs = sorted({r for c in cards for a in c["arms"] for r in a["runs"]})
    from kinlm_core.claims import markdown_card

    counts = {v: sum(c["verdict"] == v for c in cards) for v in ("supported", "contradicted", "inconclusive",
                                                                  "not testable")}
    cmd = "python tools/results.py" + ("" if args.tier == "cpu" else f" --tier {args.tier}")
    page = [
        "# Results: the methods' claims, tested\n",
        f"Generated by `{cmd}` (it runs `kinlm claims run --all --tier {args.tier} --out {args.runs}`, then "
        f"`kinlm claims report --all`, then `kinlm compare` over the runs the cards use); do not edit by hand. "
        "Every run the page uses is kept in [results/archive.jsonl](results/archive.jsonl) (its per-seed values, "
        "spec, claim hash, tokens, parameters and environment, and every figure the cards read), and "
        "`python tools/results.py --from-archive` rewrites this page from it byte for byte, without training or "
        "reading the runs. "
        "Each claim is a file its plugin ships (`kinlm claims` lists them): the statement in its source's terms, "
        "the arms (specs in [specs/claims/](../specs/claims/README.md)), the metric, the direction and the test.\n",
        f"Machine: {env['machine']}, {env['cpus']} CPU cores, torch {env['torch']}; {len(runs)} runs. "
        "Wall time and tokens/s depend on the machine and its load; losses, BLiMP and the verdicts do not.\n",
        "The synthetic diagnostic tasks (recall, copying, compression, memorization: mechanisms that language-"
        "modelling metrics at this scale barely separate) have their own page, [diagnostics.md](diagnostics.md), "
        "written by `kinlm diagnose --doc docs/diagnostics.md`.\n",
        "## How a verdict is reached\n",
        "Unless its card says otherwise, a claim's arms train on the same data and tokenizer for the same steps; "
        "each arm's learning rate is picked from a grid on the claim's tuning seeds' final validation loss (their "
        "own runs, never a verdict seed's), then the registered verdict seeds run at it; a choice at the grid's "
        "edge adds one value beyond it and chooses again, at most twice (the grid, its extensions and the choice "
        "are on each card, and a choice still at the edge is flagged). Each card's curves figure shows every "
        "rate of the grid on the first tuning seed, the verdict seeds' mean with a band for their range, and the "
        "controls beside them (the n-gram's test loss as a dotted line, the untrained weights at step 0); the card "
        "says when a run's curve has fewer than 8 evaluations. "
        "Parameters are matched on non-embedding parameters within 10% (totals beside "
        "them); where arms cannot be matched, or see different tokens, the card says so and by how much.\n",
        "**The test.** Every metric is one number per seed before any test (BLiMP: each seed's accuracy; item "
        "scores are never pooled across seeds). Arms that ran the same seeds share each seed's initialisation and "
        "data order, so by default (`test.kind` `auto`) they are compared by a paired t-test on the per-seed "
        "differences, and the card gives Pearson's r of the paired values; arms on different seeds by Welch's "
        "t-test; a claim against a fixed value (a source's threshold) by a one-sample t-test; each on its "
        "t-distribution. A claim that the treatment is better is tested two-sided and the sign decides; a claim "
        "that it is at most a margin worse (non-inferiority) by the one-sided test against the pre-registered "
        "margin, and a claim of equivalence within +-margin by two one-sided tests (TOST). Tokens seen to reach a "
        "target: a run that never reaches it counts at its last tokens seen, a lower bound; when that happens to "
        "a treatment run (a bias toward the claim), the verdict compares the arms' final values at equal tokens "
        "instead and the card says so.\n",
        "**The corrections and the verdict.** Holm's correction runs within each claim's family (its source, "
        "unless its registration declares another, with the reason): **supported** needs a Holm-adjusted p below "
        "0.05 on the claimed side; **contradicted** a significant result on the other side (for a margin or "
        "equivalence claim: the one-sided test that the difference lies beyond the margin, at the claim's Holm "
        "level). Beside it every card and the summary show Benjamini-Hochberg's q across all the claims tested "
        "on this page (the false discovery rate). **inconclusive** gives the 95% confidence interval and the "
        "smallest effect the design could detect with 80% power at the claim's Holm-adjusted level, for the test "
        "used (for Welch's test integrating over its random degrees of freedom); **not testable** means the metric "
        "cannot tell the arms from its floor (a one-sample t-test of each arm's per-seed values against chance) or "
        "the claim's runs are not here (tier gpu claims run with `--tier gpu`); the controls below can also make "
        "a claim inconclusive or not testable. At this scale (about 1 M "
        "parameters, minutes of CPU training) a claim that is not supported is a result about small models and "
        "short budgets, not a refutation of the source.\n",
        "**Controls and the test split.** Each card shows the controls its claim names as rows beside the arms. "
        "A claim decided on a `test/` metric reads each run's final weights on the held-out test split "
        "(`kinlm claims report` evaluates each run there once and keeps the result beside it), which nothing else "
        "touches: the arms train, pick their learning rate and stop early on validation. An untrained control (the "
        "treatment's own step-0 weights, evaluated the same way) or an ablation arm (the method's component off) "
        "must be beaten by the treatment: p below 0.05 on the claimed side, unadjusted (the verdict needs both "
        "this and the claim's own test), by a paired t-test by seed against the untrained weights and, against an "
        "ablation, by the claim's two-arm test (paired by seed where both arms ran the same seeds, else Welch's). "
        "Where it is not beaten, or cannot be compared, a verdict that came out supported after Holm's correction "
        "becomes inconclusive: the control meets the criterion too. A count n-gram (unigram and add-0.01 bigram, "
        "fitted on each neural arm's training split with its tokenizer) must be beaten on test loss by every run of "
        "the treatment and of the baseline; where it is not, the claim is not testable at this budget, with the "
        "figures, and is left out of its family's Holm correction and the page's q.\n",
        "**Pre-registration.** Each claim file carries a registration: the source's words quoted with where they "
        "stand, the margin and its reason, the family and why, the tuning and verdict seeds, and the power the "
        "design has (`kinlm claims plan CLAIM` prints the design, with the power from a pilot's spread when runs "
        "exist, before anything trains). `kinlm claims run` writes a hash of these fields and of the claim's "
        "arms, metric, direction, test, seeds, learning-rate grid and controls beside every run it makes; a "
        "verdict is called pre-registered only when its claim was registered before any of its runs and every "
        "run it uses carries today's hash, and a claim edited after its runs is shown as changed. "
        "Registrations on this page: " + registrations(cards) + ".\n",
        "## Summary\n",
        ", ".join(f"{n} {v}" for v, n in counts.items()) + ".\n",
        summary(cards),
        "## The claims\n",
        *[markdown_card(c, "results/") for c in cards],
    ]
    if table:
        page += ["## The runs\n", "Every run the cards use, seeds grouped (`kinlm compare`).\n", table,
                 "![validation bits per byte against tokens seen](results/bpb_vs_tokens.png)\n",
                 "![BLiMP accuracy by field](results/blimp_fields.png)\n"]
    (docs / "results.md").write_text("\n".join(page))
    print(f"wrote {docs / 'results.md'}")


if __name__ == "__main__":
    main()
