"""Run the synthetic diagnostic suite and write its section of docs/diagnostics.md.

    python tools/diagnostics.py                      # CPU tier, 2 seeds: train what is missing, write the page
    python tools/diagnostics.py --tier gpu           # the anchors' own sizes (a GPU machine)
    python tools/diagnostics.py --tasks associative_recall --archs gpt,context_vector
    python tools/diagnostics.py --no-train           # only read the runs there are and write the page
    python tools/diagnostics.py --plan               # print the points and the parameter table, run nothing

Steps, per task of ``SUITE`` (below): the architecture specs (specs/diagnostics/<arch>.json)
with the task's data and the tier's train/eval settings written to OUT/specs/<task>/<arch>.json
(compression wraps each model in the ``compression_readout`` model); then ``kinlm sweep
OUT/specs/<task>/*.json --seeds N --set-grid data.<knob>=... --out OUT/<task>`` (finished points are
skipped, so an interrupted suite continues); then the runs are read with kinlm compare's reader and
every architecture's accuracy at each difficulty (mean ± sample std over seeds) goes into the page
between its markers, with a figure of accuracy against difficulty per task.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs" / "diagnostics"
KINLM = [sys.executable, "-m", "kinlm_core.cli"]
# The suite: every architecture spec of specs/diagnostics on every task, each task over a range of one
# difficulty knob. A tier sets the task sizes and the training length: a task's "data" replaces the
# architecture spec's data fields, the tier's "train" and "eval" update its train and eval fields, and
# "sweep" is the --set-grid of one data field. "skip": architectures a tier leaves out, and why.
SUITE = {
    "architectures": ["conv_attention", "gpt", "llama_preln", "llama_postln", "hamiltonian", "context_vector", "mamba",
                      "gpt_vt", "gpt_diffwrapper", "gpt_accel_penalty"],
    "tiers": {
        "cpu": {
            "about": "sized for 2 CPU cores: short sequences, small vocabularies, a few hundred steps on a fixed "
                     "training set",
            "seeds": 2,
            "skip": {"mamba": "transformers' Mamba has no CPU kernel: its reference scan takes 0.72 s a training step "
                              "at T = 32 (gpt: 0.018 s), about 7 minutes a run; --archs mamba runs it anyway"},
            "train": {"max_steps": 600, "batch_size": 32, "lr": 0.003, "warmup_steps": 50},
            "eval": {"every": 300, "batches": 8},
            "tasks": {
                "associative_recall": {"data": {"vocab_size": 256, "seq_len": 32, "n_train": 10000},
                                       "sweep": {"num_kv_pairs": [2, 4, 8]}},
                "noisy_recall": {"data": {"vocab_size": 32, "noise_vocab_size": 16, "seq_len": 32, "n_train": 4000},
                                 "sweep": {"frac_noise": [0.2, 0.6]}},
                "fuzzy_recall": {"data": {"vocab_size": 16, "k_motif_size": 2, "v_motif_size": 2, "n_train": 4000},
                                 "sweep": {"seq_len": [32, 64]}},
                "selective_copy": {"data": {"vocab_size": 16, "seq_len": 32, "n_train": 4000},
                                   "sweep": {"num_tokens_to_copy": [4, 8]}},
                "compression": {"data": {"vocab_size": 16, "n_train": 4000}, "sweep": {"seq_len": [8, 16]}},
                "memorization": {"data": {"seq_len": 32, "n_train": 256}, "sweep": {"vocab_size": [64, 256]}},
            },
        },
        "gpu": {
            "about": "the anchors' own sizes (MAD's baselines and difficulty ranges, Zoology's MQAR sweep): for a GPU",
            "seeds": 3,
            "train": {"max_steps": 20000, "batch_size": 128, "lr": 0.001, "warmup_steps": 500},
            "eval": {"every": 2000, "batches": 10},
            "tasks": {
                "associative_recall": {"data": {"vocab_size": 8192, "seq_len": 256, "n_train": 20000},
                                       "sweep": {"num_kv_pairs": [4, 8, 16, 32, 64]}},
                "noisy_recall": {"data": {"vocab_size": 32, "noise_vocab_size": 16, "seq_len": 128, "n_train": 12800},
                                 "sweep": {"frac_noise": [0.2, 0.4, 0.6, 0.8]}},
                "fuzzy_recall": {"data": {"vocab_size": 16, "k_motif_size": 3, "v_motif_size": 3, "n_train": 12800},
                                 "sweep": {"seq_len": [128, 256, 512]}},
                "selective_copy": {"data": {"vocab_size": 16, "seq_len": 256, "n_train": 12800},
                                   "sweep": {"num_tokens_to_copy": [16, 32, 64, 96]}},
                "compression": {"data": {"vocab_size": 16, "n_train": 12800}, "sweep": {"seq_len": [32, 64, 128, 256]}},
                "memorization": {"data": {"seq_len": 32, "n_train": 256},
                                 "sweep": {"vocab_size": [256, 512, 1024, 2048, 4096, 8192]}},
            },
        },
    },
}

BEGIN, END = "<!-- diagnostics:begin (tools/diagnostics.py writes this part) -->", "<!-- diagnostics:end -->"


def sh(args: list[str]) -> None:
    print("+ " + " ".join(["kinlm", *args[3:]] if args[:3] == KINLM else args), flush=True)
    r = subprocess.run(args, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"diagnostics: {' '.join(args[3:])} exited with {r.returncode}")


def _raise_block_size(model: dict, n: int) -> None:
    """Every ``block_size`` of the model (and of a wrapped model) at least n."""
    for k, v in model.items():
        if k == "block_size" and isinstance(v, int) and v < n:
            model[k] = n
        elif isinstance(v, dict):
            _raise_block_size(v, n)


def task_spec(arch: str, task: str, tier: dict) -> dict:
    """The architecture's spec with the task's data and the tier's training settings."""
    spec = json.loads((SPECS / f"{arch}.json").read_text())
    t = tier["tasks"][task]
    longest = max([t["data"].get("seq_len", 0), *t.get("sweep", {}).get("seq_len", [])])
    spec["data"] = {"type": "synthetic", "task": task, "n_validation": 256, "n_test": 512, **t["data"]}
    for knob, values in t.get("sweep", {}).items():  # the file itself is a valid point (kinlm sweep checks it)
        spec["data"][knob] = values[0]
    spec["train"].update(tier.get("train", {}))
    spec["train"]["block_size"] = 2 * longest  # a document holds T inputs then T labels
    spec["eval"].update(tier.get("eval", {}))
    _raise_block_size(spec["model"], longest)
    if task == "compression":
        spec["model"] = {"type": "compression_readout", "inner": spec["model"], "max_len": longest}
    spec["name"] = f"diag-{arch}"
    return spec


def knob_of(task: str, tier: dict) -> tuple[str, list]:
    sweep = tier["tasks"][task].get("sweep", {})
    if not sweep:
        return "", [None]
    (knob, values), = sweep.items()
    return knob, values


def state_size(spec: dict) -> str:
    """What a model carries from one token to the next (per sequence, in numbers): fixed for the
    recurrent models, growing with the context for attention (its KV cache)."""
    m = spec["model"]
    m = m.get("inner", m) if m["type"] in ("compression_readout",) else m
    if m["type"] == "context_vector":
        return f"{m['d_context']} (fixed)"
    if m["type"] == "transformers" and m["config"].get("model_type") == "mamba":
        c = m["config"]
        d_inner = c.get("expand", 2) * c["hidden_size"]
        return f"{c['num_hidden_layers'] * d_inner * (c.get('state_size', 16) + c.get('conv_kernel', 4) - 1):,} (fixed)"
    inner = m.get("inner", m)
    if "d_model" in inner and "n_layer" in inner:
        return f"{2 * inner['n_layer'] * inner['d_model']} x T (KV cache)"
    return "-"


def param_table(archs: list[str]) -> list[dict]:
    """Parameters of each architecture as the suite builds it (vocabulary 257, MQAR's CPU tier)."""
    import torch

    from kinlm_core import load_spec
    from kinlm_core.params import count_parameters

    rows = []
    for a in archs:
        spec = load_spec(SPECS / f"{a}.json")
        torch.manual_seed(0)
        c = count_parameters(spec.model.build(257))
        raw = json.loads((SPECS / f"{a}.json").read_text())
        rows.append({"arch": a, "total": c.total, "non_embedding": c.non_embedding, "state": state_size(raw)})
    return rows


# --- the runs -----------------------------------------------------------------------------------------------


def _dig(d: dict, dotted: str):
    for part in dotted.split("."):
        d = (d or {}).get(part)
    return d


def collect(out: Path, task: str, knob: str) -> dict:
    """{(arch, difficulty): [accuracy per finished seed]} and the wall seconds of the task's runs."""
    from kinlm_core.compare import find_runs, read_run

    acc: dict[tuple[str, object], list[float]] = {}
    seconds = 0.0
    where = out / task
    if not where.exists():
        return {"acc": acc, "seconds": 0.0}
    for d in find_runs([where]):
        row = read_run(d)
        seconds += row.get("wall_seconds") or 0.0
        if row["status"] != "finished" or row.get("accuracy") is None:
            continue
        arch = row["name"].removeprefix("diag-")
        level = _dig(row["_spec"], f"data.{knob}") if knob else None
        acc.setdefault((arch, level), []).append(float(row["accuracy"]))
    return {"acc": acc, "seconds": seconds}


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values)
    return f"{m:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{m:.3f}"


def figure(results: dict, tier: dict, archs: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kinlm_core.api import REPORT_DPI

    tasks = list(results)
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, task in zip(axes.ravel(), tasks):
        knob, levels = knob_of(task, tier)
        for a in archs:
            pts = [(i, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                   for i, lv in enumerate(levels) if (v := results[task]["acc"].get((a, lv)))]
            if pts:
                xs, ms, sds = zip(*pts)
                ax.errorbar(xs, ms, yerr=sds, marker="o", ms=3, capsize=2, label=a)
        ax.set_xticks(range(len(levels)), [str(lv) for lv in levels])
        ax.set_xlabel(knob or "-")
        ax.set_ylabel("eval/accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(task)
    for ax in axes.ravel()[len(tasks):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=REPORT_DPI)
    plt.close(fig)


def section(results: dict, tier_name: str, tier: dict, archs: list[str], params: list[dict], seeds: int,
            fig_rel: str, command: str) -> str:
    total = sum(r["seconds"] for r in results.values())
    lines = [BEGIN, "", f"Tier `{tier_name}` ({tier.get('about', '')}), {seeds} seed{'s' * (seeds != 1)}, "
             f"{tier['train']['max_steps']} steps of {tier['train']['batch_size']} examples per run (unless the "
             f"command below changes them), "
             f"written by `{command}`. Accuracy on the validation answers (mean ± sample std over seeds); "
             f"a cell is missing where a run has not finished. The runs' own wall times add up to {total / 60:.1f} min "
             f"(runs side by side overlap). Left out: "
             + ("; ".join(f"{a}: {why}" for a, why in tier.get("skip", {}).items() if a not in archs) or "none") + ".",
             "",
             "| architecture | params | non-embedding | state carried per token |", "|---|---:|---:|---|"]
    lines += [f"| {p['arch']} | {p['total']:,} | {p['non_embedding']:,} | {p['state']} |" for p in params]
    for task, r in results.items():
        knob, levels = knob_of(task, tier)
        data = tier["tasks"][task]["data"]
        fixed = ", ".join(f"{k} {v}" for k, v in data.items())
        lines += ["", f"**{task}** ({fixed}; columns: {knob})", "",
                  "| architecture | " + " | ".join(str(lv) for lv in levels) + " |",
                  "|---|" + "---:|" * len(levels)]
        for a in archs:
            lines.append(f"| {a} | " + " | ".join(fmt(r["acc"].get((a, lv), [])) for lv in levels) + " |")
    lines += ["", f"![accuracy against difficulty]({fig_rel})", "", END]
    return "\n".join(lines)


def write_page(doc: Path, text: str) -> None:
    page = doc.read_text() if doc.exists() else f"# Diagnostics\n\n{BEGIN}\n{END}\n"
    if BEGIN not in page or END not in page:
        page = page.rstrip("\n") + f"\n\n## Results\n\n{BEGIN}\n{END}\n"
    a, b = page.index(BEGIN), page.index(END) + len(END)
    doc.write_text(page[:a] + text + page[b:])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tier", default="cpu", help="a tier of SUITE (cpu, gpu)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per point (default: the tier's)")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: all of the tier)")
    ap.add_argument("--archs", default=None, help="comma-separated architectures (default: the suite's)")
    ap.add_argument("--out", default="runs/diagnostics", help="where the runs go (OUT/<task>/...)")
    ap.add_argument("--doc", default="docs/diagnostics.md", help="the page whose results section is rewritten")
    ap.add_argument("--parallel", default="2", help="points at once (kinlm sweep --parallel)")
    ap.add_argument("--levels", default=None, help="comma-separated difficulty levels replacing the sweep's of every "
                                                   "task run (e.g. --tasks associative_recall --levels 4,8)")
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                    help="passed to kinlm sweep for every point, e.g. --set train.max_steps=20 (a smoke test)")
    ap.add_argument("--no-train", action="store_true", help="only read the runs there are and write the page")
    ap.add_argument("--plan", action="store_true", help="print the points and parameters, run nothing")
    args = ap.parse_args(argv)

    suite = SUITE
    if args.tier not in suite["tiers"]:
        sys.exit(f"diagnostics: --tier {args.tier!r}: the suite has tiers {', '.join(suite['tiers'])}")
    tier = copy.deepcopy(suite["tiers"][args.tier])
    seeds = args.seeds or tier["seeds"]
    tasks = args.tasks.split(",") if args.tasks else list(tier["tasks"])
    skip = tier.get("skip", {})
    archs = args.archs.split(",") if args.archs else [a for a in suite["architectures"] if a not in skip]
    for a, why in skip.items():
        if a not in archs:
            print(f"diagnostics: {a} left out of the {args.tier} tier: {why}")
    for t in tasks:
        if t not in tier["tasks"]:
            sys.exit(f"diagnostics: --tasks: unknown task {t!r}; the tier has {', '.join(tier['tasks'])}")
    for a in archs:
        if not (SPECS / f"{a}.json").exists():
            sys.exit(f"diagnostics: --archs: no spec specs/diagnostics/{a}.json")
    if args.levels:
        for t in tasks:
            (knob, values), = tier["tasks"][t]["sweep"].items()
            kind = type(values[0])
            tier["tasks"][t]["sweep"] = {knob: [kind(v) for v in args.levels.split(",")]}
    out = (ROOT / args.out) if not Path(args.out).is_absolute() else Path(args.out)

    params = param_table(archs)
    if args.plan:
        n = sum(len(knob_of(t, tier)[1]) for t in tasks) * len(archs) * seeds
        print(f"{n} runs: {len(tasks)} tasks x {len(archs)} architectures x difficulty levels x {seeds} seeds")
        for p in params:
            print(f"  {p['arch']:20s} params {p['total']:>8,}  non-embedding {p['non_embedding']:>8,}  state {p['state']}")
        return
    t0 = time.time()
    for task in tasks:
        folder = out / "specs" / task
        folder.mkdir(parents=True, exist_ok=True)
        for a in archs:
            (folder / f"{a}.json").write_text(json.dumps(task_spec(a, task, tier), indent=2) + "\n")
        if args.no_train:
            continue
        knob, levels = knob_of(task, tier)
        grid = ["--set-grid", f"data.{knob}=" + ",".join(str(v) for v in levels)] if knob else []
        sh([*KINLM, "sweep", *[str(folder / f"{a}.json") for a in archs], "--seeds", str(seeds), *grid,
            *[x for kv in args.set for x in ("--set", kv)], "--out", str(out / task), "--parallel", args.parallel])
    results = {t: collect(out, t, knob_of(t, tier)[0]) for t in tasks}
    doc = ROOT / args.doc
    fig = doc.parent / "diagnostics" / f"accuracy_vs_difficulty_{args.tier}.png"
    figure(results, tier, archs, fig)
    command = " ".join(["python tools/diagnostics.py", *([f"--tier {args.tier}"] if args.tier != "cpu" else []),
                        *([f"--tasks {args.tasks}"] if args.tasks else []), *([f"--archs {args.archs}"] if args.archs else []),
                        *([f"--levels {args.levels}"] if args.levels else []),
                        *([f"--seeds {args.seeds}"] if args.seeds else []), *(f"--set {kv}" for kv in args.set)])
    write_page(doc, section(results, args.tier, tier, archs, params, seeds, str(fig.relative_to(doc.parent)), command))
    print(f"diagnostics: wrote {doc} and {fig} ({(time.time() - t0) / 60:.1f} min)")


if __name__ == "__main__":
    main()
