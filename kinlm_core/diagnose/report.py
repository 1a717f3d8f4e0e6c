"""Reading the suite's runs back: accuracy per architecture and level with a 95% t-interval over
seeds, the retune history, the state-size points, and the page section between the markers."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .plan import VERDICT_SEED, Selection, _set, describe, model_path
from .run import read, verdict_folder

BEGIN, END = "<!-- diagnostics:begin (kinlm diagnose writes this part) -->", "<!-- diagnostics:end -->"
_OLD_BEGIN = "<!-- diagnostics:begin (tools/diagnostics.py writes this part) -->"


def interval(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the 95% t-interval over seeds, mean ± t_{0.975, n-1} s / sqrt(n); with one
    value low = high = the value; None for none."""
    if not values:
        return None
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, m, m
    from scipy import stats

    h = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - h, m + h


def fmt(values: list[float]) -> str:
    iv = interval(values)
    if iv is None:
        return "-"
    m, lo, hi = iv
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if len(values) > 1 else f"{m:.3f} (1 seed)"


def collect(sel: Selection, out: Path) -> dict:
    """Per task: tuned rates, attempts, the last attempt's accuracies {(arch, level): [acc]} and, for a
    task with the state curve, {(arch, state value): [acc]} with the bytes of each state value."""
    res = {}
    for task in sel.tasks:
        t = task.tiers[sel.tier_name]
        f = out / task.task / "attempts.json"
        summary = json.loads(f.read_text()) if f.exists() else {"lr": {}, "attempts": [], "dropped": None}
        attempts = summary["attempts"] or [{"levels": sel.levels(task), "check": None, "folder": "verdict"}]
        last = attempts[-1]
        where = out / task.task / last["folder"]
        acc = {k: [a for a, _ in v] for k, v in read(where, f"data.{t.knob}").items()}
        r = {"lr": summary["lr"], "attempts": attempts, "dropped": summary["dropped"], "levels": last["levels"],
             "acc": acc, "state": {}}
        if task.state_curve:
            T = task.longest(sel.tier_name)
            for a in sel.curve_archs():
                runs = read(out / task.task / "state", model_path(task, a.state_knob))
                for (arch, v), vals in runs.items():
                    if arch != a.architecture:
                        continue
                    m = json.loads(json.dumps(a.model))
                    _set(m, a.state_knob, v)
                    r["state"][(arch, v)] = {"bytes": a.state_bytes(m, T), "acc": [x for x, _ in vals]}
            level = sel.state_level(task)
            for a in sel.archs:  # attention (and any arch without a sweep): its own points at the state level
                if a.family != "fixed" or not sel.state_sizes(a):
                    vals = acc.get((a.architecture, level), [])
                    b = a.state_bytes(a.model, T)
                    if vals and b is not None:
                        r["state"][(a.architecture, None)] = {"bytes": b, "acc": vals}
        res[task.task] = r
    return res


def section(sel: Selection, results: dict, params: list[dict], figures: dict[str, str], command: str) -> str:
    pol = sel.tier
    lines = [BEGIN, "",
             f"Tier `{sel.tier_name}`{' (--quick: checks the machinery, not evidence)' if sel.quick else ''} "
             f"({pol['about']}), written by `{command}`. Each architecture's learning rate is the best of "
             f"{pol['lr_grid']} by mean validation accuracy over {pol['tune_seeds']} tuning seed(s); the figures "
             f"are accuracies on the test split (disjoint from the training and validation instances) over "
             f"{pol['seeds']} verdict seeds (from {VERDICT_SEED}), mean [95% t-interval]; {pol['train']['max_steps']} "
             f"steps of {pol['train']['batch_size']} examples per run. A missing cell: no finished run. Left out: "
             + ("; ".join(f"{a}: {w}" for a, w in sel.skipped.items()) or "none") + ".", "",
             "| architecture | registered by | family | params | non-embedding | read-out width | state (bytes) |",
             "|---|---|---|---:|---:|---:|---|"]
    for p in params:
        sb = "-" if p["state_bytes"] is None else f"{p['state_bytes']:,}" + (
            f" at T={p['seq_len']}, grows with T" if p["family"] == "attention" else " (fixed)")
        lines.append(f"| {p['arch']} | {p['dist']} | {p['family']} | {p['total']:,} | {p['non_embedding']:,} | "
                     f"{p['readout'] or '-'} | {sb} |")
    for task in sel.tasks:
        r, t = results[task.task], task.tiers[sel.tier_name]
        fixed = ", ".join(f"{k} {v}" for k, v in t.data.items())
        lines += ["", f"**{task.task}** [{task.dist}] ({fixed}; columns: {t.knob}; chance {t.chance:.3f})"]
        if len(r["attempts"]) > 1 or r["dropped"]:
            lines.append("")
        for i, at in enumerate(r["attempts"][:-1]):
            lines.append(f"- {t.knob} = {at['levels']}: at {at['check']} for every architecture; retuned "
                         f"({i + 1} of at most {len(r['attempts']) - 1}).")
        if r["dropped"]:
            lines.append(f"- **Dropped**: at {r['dropped']} for every architecture after "
                         f"{len(r['attempts']) - 1} retune(s); it separates nothing at these sizes.")
        lines += ["", "| architecture | lr | " + " | ".join(str(v) for v in r["levels"]) + " |",
                  "|---|---:|" + "---:|" * len(r["levels"])]
        for a in sel.archs:
            lr = r["lr"].get(a.architecture)
            lines.append(f"| {a.architecture} | {lr if lr is not None else '-'} | "
                         + " | ".join(fmt(r["acc"].get((a.architecture, v), [])) for v in r["levels"]) + " |")
        if r["state"]:
            lines += ["", f"State-size curve ({t.knob} = {sel.state_level(task)}):", "",
                      "| architecture | setting | state (bytes) | accuracy |", "|---|---|---:|---:|"]
            for (arch, v), s in sorted(r["state"].items(), key=lambda kv: (kv[0][0], kv[1]["bytes"])):
                knob = next((a.state_knob for a in sel.archs if a.architecture == arch), None)
                setting = f"{knob} {v}" if v is not None else "attention (KV cache)"
                lines.append(f"| {arch} | {setting} | {s['bytes']:,} | {fmt(s['acc'])} |")
            lines.append("")
            lines.append(recall_sentence(results[task.task]["state"]))
    lines.append("")
    for caption, rel in figures.items():
        lines += [f"![{caption}]({rel})", ""]
    lines.append(END)
    return "\n".join(lines)


def recall_sentence(state: dict, within: float = 0.05) -> str:
    """Which fixed-state architectures recall like attention (the mean within ``within`` of attention's
    best mean), and at the smallest state that does."""
    att = [statistics.fmean(s["acc"]) for (a, v), s in state.items() if v is None and s["acc"]]
    if not att:
        return "No attention point at this level: no comparison."
    best = max(att)
    like = {}
    for (a, v), s in state.items():
        if v is not None and s["acc"] and statistics.fmean(s["acc"]) >= best - within:
            like[a] = min(like.get(a, s["bytes"]), s["bytes"])
    if not like:
        return f"No fixed-state architecture comes within {within} of attention's {best:.3f} at these state sizes."
    return ("Recall like attention (within %.2f of its %.3f): " % (within, best)
            + ", ".join(f"{a} from {b:,} bytes" for a, b in sorted(like.items(), key=lambda x: x[1])) + ".")


def write_page(doc: Path, text: str) -> None:
    """Replace the part between the markers (the old tool's marker too), keep everything else."""
    page = doc.read_text() if doc.exists() else f"# Diagnostics\n\n{BEGIN}\n{END}\n"
    page = page.replace(_OLD_BEGIN, BEGIN)
    if BEGIN not in page or END not in page:
        page = page.rstrip("\n") + f"\n\n## Results\n\n{BEGIN}\n{END}\n"
    a, b = page.index(BEGIN), page.index(END) + len(END)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(page[:a] + text + page[b:])


def param_table(sel: Selection) -> list[dict]:
    return [describe(sel, a) for a in sel.archs]
