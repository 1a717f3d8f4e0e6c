"""``kinlm compare``: runs side by side, seeds grouped into mean ± std, one table per objective.

A row per run is read from its directory: ``spec.json`` (method, tokenizer, grouping),
``result.json`` (params, tokens seen, wall seconds, tokens/s, status), ``metrics.jsonl`` (the last
evaluation's loss / perplexity / bits per byte, and the bits-per-byte curve against tokens seen) and
the newest ``analysis/blimp/step_*/metrics.json`` (BLiMP accuracy overall and per field) and the
newest ``analysis/lm_eval/step_*/results.json`` (lm-evaluation-harness scores, one column per
task and metric, from ``kinlm eval --lm-eval``; left out with a note when measured at another step).

Runs whose specs are equal except for ``seed`` form a group (or, with ``group_by``, runs with the
same value at a dotted spec path); a group shows n and mean ± sample std (n - 1) of each number.
Only seeds are grouped: two runs of one spec with the same seed (a rerun) are separate rows, and
so are runs whose history differs (a run extended by ``--resume`` to more steps than it started
with has another learning-rate curve than a straight run: see :func:`history`); the table says
why in a note. A BLiMP figure measured at another step than the run's last (BLiMP at step 300 of a
run that went on to 600) is left out, with a note.
Different objectives measure different losses and are never ranked together: one table per
objective. Within a table groups are ranked by bits per byte, the one number that does not depend
on the tokenizer; when the tokenizers differ the table says so.

Torch-free (matplotlib only for :func:`write_outputs`); does not import the BLiMP analyzer.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from . import rundir
from .api import REPORT_DPI

# the fields of RUN/analysis/blimp/step_N/metrics.json (kinlm_core.blimp.FIELDS; literal here so
# compare stays light)
BLIMP_FIELDS = ("morphology", "syntax", "semantics", "syntax_semantics")

# (row key, table header, CSV name, formatter kind)
NUMERIC = [
    ("params", "params", "params", "si"),
    ("tokens_seen", "tokens seen", "tokens_seen", "si"),
    ("wall_seconds", "wall time", "wall_seconds", "time"),
    ("tokens_per_s", "tokens/s", "tokens_per_s", "si"),
    ("loss", "eval loss", "eval_loss", ".4f"),
    ("ppl", "perplexity", "perplexity", ".2f"),
    ("bpb", "bits per byte", "bits_per_byte", ".3f"),
    ("blimp_overall", "BLiMP", "blimp_overall", ".3f"),
    ("accuracy", "accuracy", "eval_accuracy", ".3f"),
]
OPTIONAL = {"accuracy"}  # a column shown only in tables where some run has it (eval/accuracy: synthetic tasks)

TOKENIZER_NOTE = ("note: these runs use different tokenizers ({}); ranked on bits per byte; loss and "
                  "perplexity are per token and not comparable across tokenizers")


class CompareError(Exception):
    """Bad input to compare: one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# --- finding and reading runs -----------------------------------------------------------------

def find_runs(paths) -> list[Path]:
    """Run directories named by ``paths`` (a run directory, a ``NAME@latest`` link, or a folder
    searched recursively for run directories), each once, in order. Raises CompareError naming
    every path that is none of these."""
    found, seen, problems = [], set(), []

    def add(p: Path):
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            found.append(rundir.resolve(p))

    for d in paths:
        p = Path(d)
        if rundir.is_run_dir(p):
            add(p)
            continue
        if not p.is_dir():
            problems.append(f"kinlm compare: {rundir.check_run_dir(p)}")
            continue
        inside = rundir.runs_under(p)
        if not inside:
            problems.append(f"kinlm compare: {d}: no runs found under it (a run directory holds spec.json)")
        for q in inside:
            add(q)
    if problems:
        raise CompareError(problems)
    return found


def method_label(spec: dict) -> str:
    """What makes the method: the model (with a wrapped inner model), its regularizers, and the
    objective / curriculum when not plain causal LM, e.g. ``vt_embeddings(t5) + accel_penalty
    [hybrid_tasks, hybrid]``."""
    def model(m):
        if not isinstance(m, dict):
            return "?"
        inner = m.get("inner")
        name = str(m.get("type", "?")) + (f" {m['preset']}" if isinstance(m.get("preset"), str) else "")
        return f"{name}({model(inner)})" if isinstance(inner, dict) else name

    label = model(spec.get("model"))
    regs = [r.get("type", "?") for r in spec.get("regularizers") or [] if isinstance(r, dict)]
    if regs:
        label += " + " + " + ".join(regs)
    extra = []
    obj = (spec.get("objective") or {}).get("type")
    if obj and obj != "causal_lm":
        extra.append(obj)
    cur = (spec.get("curriculum") or {}).get("type")
    if cur:
        extra.append(cur)
    return label + (f" [{', '.join(extra)}]" if extra else "")


def tokenizer_label(spec: dict) -> str:
    tok = spec.get("tokenizer")
    if not isinstance(tok, dict):
        return "-"
    rest = ",".join(f"{k}={v}" for k, v in sorted(tok.items()) if k != "type")
    return f"{tok.get('type', '?')}" + (f"({rest})" if rest else "")


def _blimp(path: Path) -> tuple[dict | None, int | None]:
    """The newest BLiMP metrics of the run and the step they were measured at."""
    def step(f: Path) -> int:
        n = f.parent.name.split("_", 1)[1]
        return int(n) if n.isdigit() else -1

    steps = sorted((path / "analysis" / "blimp").glob("step_*/metrics.json"), key=step)
    if not steps:
        return None, None
    data = json.loads(steps[-1].read_text())
    return {k: data.get(k) for k in ("overall", *BLIMP_FIELDS)}, step(steps[-1])


def _lm_eval(path: Path) -> tuple[dict, int | None]:
    """The newest lm-evaluation-harness scores of the run (``kinlm eval --lm-eval``:
    RUN/analysis/lm_eval/step_N/results.json) as {"<task>/<metric>": value}, and their step."""
    from .lmeval import scores

    def step(f: Path) -> int:
        n = f.parent.name.split("_", 1)[1]
        return int(n) if n.isdigit() else -1

    files = sorted((path / "analysis" / "lm_eval").glob("step_*/results.json"), key=step)
    if not files:
        return {}, None
    try:
        data = json.loads(files[-1].read_text())
    except (OSError, ValueError):
        return {}, None
    return (scores(data) if isinstance(data, dict) else {}), step(files[-1])


def history(spec: dict, records: list[dict], result: dict) -> dict:
    """What a run went through, equal for runs that trained the same way whatever their seed:
    ``{"lr": {step: learning rate at every logged step}, "extra": result.json's "extended_from"}``. A
    schedule depends on the spec alone, so a run extended from 300 to 600 steps (its cosine
    stretched at step 300) differs from a straight 600-step run of the same spec; an exact resume
    after an interruption does not, and a run stopped early agrees with a finished one on the steps
    both logged. Under a curriculum the phases may end at steps that depend on the seed, so there
    the learning rates are left out; ``result.json``'s ``extended_from`` (the lengths a run extended
    with ``--extend`` had before) tells an extension in every case."""
    lr = {}
    if not spec.get("curriculum"):
        lr = {int(r["step"]): float(f"{float(r['train/lr']):.6g}") for r in records
              if isinstance(r.get("train/lr"), (int, float)) and isinstance(r.get("step"), (int, float))}
    extended = result.get("extended_from") or None  # the lengths an extended run was trained to before
    return {"lr": lr, "extra": json.dumps(extended, sort_keys=True, default=str)}


def same_history(a: dict, b: dict) -> bool:
    """Two histories agree: the same recorded history, the same learning rate at every step both logged."""
    return a["extra"] == b["extra"] and all(a["lr"][s] == b["lr"][s] for s in a["lr"].keys() & b["lr"].keys())


def read_run(path: Path, weights: str = "last") -> dict:
    """One run's row (see the module docstring). ``weights="best"``: the evaluation metrics are those of
    the run's best evaluation (result.json's ``best``, from train.keep_best), not its last."""
    spec = json.loads((path / "spec.json").read_text())
    result = rundir.read_result(path) or {}
    last_eval, last_step, curve, tokens_at, records, last = {}, 0, [], None, [], {}
    mf = path / "metrics.jsonl"
    for line in (mf.read_text().splitlines() if mf.exists() else []):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if not isinstance(rec, dict):
            continue
        records.append(rec)
        last.update(rec)
        last_step = max(last_step, int(rec.get("step", 0)))
        if "perf/tokens_seen" in rec:  # older runs: tokens seen only on log lines
            tokens_at = rec["perf/tokens_seen"]
        if "eval/loss" in rec:
            last_eval = rec
        if "eval/bpb" in rec:
            t = rec.get("eval/tokens_seen", tokens_at)
            if t is not None:
                curve.append((float(t), float(rec["eval/bpb"])))
    if weights == "best":
        best = result.get("best") or {}
        at = [r for r in records if "eval/loss" in r and r.get("step") == best.get("step")]
        if not at:
            raise CompareError([f"kinlm compare: {path}: --weights best: no best evaluation recorded (the run's "
                                f"spec sets no train.keep_best, or none has finished)"])
        last_eval = at[-1]
        last = {**last, **last_eval}
    objective = result.get("objective") or (spec.get("objective") or {}).get("type") or "causal_lm"
    tokens = result.get("tokens_seen")
    if tokens is None:
        tokens = last_eval.get("eval/tokens_seen", tokens_at)
    blimp, blimp_step = _blimp(path)
    step = int(result.get("step", last_step))
    notes = []
    if blimp is not None and blimp_step != step:
        notes.append(f"note: {path}: BLiMP left out: measured at step {blimp_step}, the run's figures are at "
                     f"step {step} (`kinlm eval {path} --blimp` measures it again)")
        blimp = None
    lm_eval, lm_eval_step = _lm_eval(path)
    if lm_eval and lm_eval_step != step:
        notes.append(f"note: {path}: lm-eval scores left out: measured at step {lm_eval_step}, the run's figures "
                     f"are at step {step} (`kinlm eval {path} --lm-eval TASKS` measures them again)")
        lm_eval = {}
    return {"run": str(path), "lm_eval": lm_eval, "name": spec.get("name", path.name), "seed": spec.get("seed"),
            "model": (spec.get("model") or {}).get("type", "?"), "method": method_label(spec),
            "objective": objective, "tokenizer": tokenizer_label(spec),
            "status": rundir.status(path, result or None), "step": step, "blimp_step": blimp_step,
            "eval_step": last_eval.get("step"), "split": (spec.get("eval") or {}).get("split", "validation"),
            "params": result.get("params"), "tokens_seen": tokens, "train_seconds": result.get("train_seconds"),
            "wall_seconds": result.get("wall_seconds"), "tokens_per_s": result.get("tokens_per_s"),
            "loss": last_eval.get("eval/loss", result.get("eval/loss")),
            "ppl": last_eval.get("eval/ppl", result.get("eval/ppl")),
            "bpb": last_eval.get("eval/bpb", result.get("eval/bpb")),
            "blimp": blimp, "blimp_overall": (blimp or {}).get("overall"),
            "accuracy": last_eval.get("eval/accuracy", result.get("eval/accuracy")),
            "curve": curve, "_spec": spec, "_history": history(spec, records, result), "_notes": notes,
            "_last": {**result, **last}}  # every key's last value in metrics.jsonl, else result.json's


# --- grouping ---------------------------------------------------------------------------------

MISSING = object()


def lookup(spec, path: str):
    """The value at a dotted path (``train.lr``, ``generate.0.prompt``) of nested dicts and lists, or
    ``MISSING``."""
    cur = spec
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return MISSING
    return cur


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean, sample std (n - 1; None when n < 2) and n of the values that are not None."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None, 0
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None, len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)), len(xs)


def _seeds_only(groups: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], list[str]]:
    """Split the groups of equal specs so that a group holds seeds only: runs of one spec with
    different histories are never grouped, and runs that share a seed are rows of their own."""
    out, notes = {}, []
    for key, members in groups.items():
        by_history: list[list[dict]] = []
        for m in members:
            home = next((h for h in by_history if all(same_history(m["_history"], o["_history"]) for o in h)), None)
            if home is None:
                by_history.append([m])
            else:
                home.append(m)
        if len(by_history) > 1:
            notes.append("note: " + ", ".join(sorted(m["run"] for m in members)) + ": same spec but a different "
                         "history (the learning rate differs at the same steps, e.g. a run extended with --resume "
                         "to more steps); not grouped as seeds")
        for i, ms in enumerate(by_history):
            seeds = [m["seed"] for m in ms]
            if len(set(map(json.dumps, seeds))) < len(seeds):
                dup = sorted({json.dumps(s) for s in seeds if seeds.count(s) > 1})
                notes.append("note: " + ", ".join(sorted(m["run"] for m in ms)) + f": same spec and seed "
                             f"({', '.join(dup)}): reruns, not seeds; each run is a row of its own")
                for j, m in enumerate(ms):
                    out[f"{key}#{i}#{j}"] = [m]
            else:
                out[f"{key}#{i}"] = ms
    return out, notes


def build_tables(rows: list[dict], group_by: str | None = None) -> list[dict]:
    """``[{"objective", "notes", "groups": [group, ...]}]``, one table per objective, groups ranked
    by mean bits per byte (none last). A group: label, method, n, runs, status, stats."""
    if group_by and all(lookup(r["_spec"], group_by) is MISSING for r in rows):
        raise CompareError([f"kinlm compare: --group-by {group_by}: no such field in any run's spec.json"])
    tables: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        if group_by:
            v = lookup(r["_spec"], group_by)
            key = f"{group_by}={'(unset)' if v is MISSING else json.dumps(v) if not isinstance(v, str) else v}"
        else:
            key = json.dumps({k: v for k, v in r["_spec"].items() if k != "seed"}, sort_keys=True)
        tables.setdefault(r["objective"], {}).setdefault(key, []).append(r)
    out = []
    for obj, groups in tables.items():
        notes = [n for members in groups.values() for m in members for n in m["_notes"]]
        if not group_by:
            groups, split_notes = _seeds_only(groups)
            notes = split_notes + notes
        gs = []
        for key, members in groups.items():
            members.sort(key=lambda r: (r["bpb"] is None, r["bpb"] or 0.0, r["run"]))
            runs = [m["run"] for m in members]
            if group_by:
                label = key
            elif len(members) == 1:
                label = runs[0]
            else:
                common = os.path.commonpath(runs)
                label = f"{common}/{{{','.join(os.path.relpath(r, common) for r in sorted(runs))}}}"
            statuses = [m["status"].split(" ")[0] for m in members]
            status = statuses[0] if len(set(statuses)) == 1 else ", ".join(
                f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
            stats = {k: mean_std(m[k] for m in members) for k, *_ in NUMERIC}
            for f in BLIMP_FIELDS:
                stats[f"blimp_{f}"] = mean_std((m["blimp"] or {}).get(f) for m in members)
            for k in sorted({k for m in members for k in m.get("lm_eval", {})}):
                stats[f"lm_eval:{k}"] = mean_std(m.get("lm_eval", {}).get(k) for m in members)
            methods = sorted({m["method"] for m in members})
            short = key if group_by else members[0]["name"]
            gs.append({"label": label, "short": short, "method": " | ".join(methods), "n": len(members), "runs": runs,
                       "members": members, "status": status, "stats": stats,
                       "tokenizers": sorted({m["tokenizer"] for m in members})})
        # by bits per byte; where there is none (a supervised objective), by accuracy, best first
        gs.sort(key=lambda g: (g["stats"]["bpb"][0] is None, g["stats"]["bpb"][0] or -(g["stats"]["accuracy"][0] or 0.0),
                               g["label"]))
        for i, g in enumerate(gs, 1):
            g["rank"] = i
        toks = sorted({t for g in gs for t in g["tokenizers"]})
        if len(toks) > 1:
            notes.insert(0, TOKENIZER_NOTE.format("; ".join(toks)))
        out.append({"objective": obj, "notes": notes, "groups": gs})
    return out


# --- formatting -------------------------------------------------------------------------------

def _si(x: float) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


def _time(s: float) -> str:
    s = float(s)
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    if s >= 60:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{s:.1f}s"


def fmt(stat, kind: str) -> str:
    m, sd, n = stat
    if m is None:
        return "-"
    f = _si if kind == "si" else _time if kind == "time" else (lambda x: format(x, kind))
    return f(m) if not sd else f"{f(m)} ± {f(sd)}"  # no "± 0" for what the seeds share (params)


HEADERS = ["rank", "runs", "method", "n", "status", *[h for _, h, _, _ in NUMERIC]]


def markdown(tables: list[dict]) -> str:
    lines = []
    if len(tables) > 1:
        objs = ", ".join(t["objective"] for t in tables)
        lines.append(f"note: these runs train {len(tables)} different objectives ({objs}); their losses "
                     f"measure different tasks, so each objective is ranked on its own")
    for t in tables:
        if len(tables) > 1:
            lines += ["", f"[objective: {t['objective']}]"]
        lines += t["notes"]
        numeric = [x for x in NUMERIC if x[0] not in OPTIONAL
                   or any(g["stats"][x[0]][0] is not None for g in t["groups"])]
        extra = sorted({k for g in t["groups"] for k in g["stats"] if k.startswith("lm_eval:")})
        numeric = numeric + [(k, f"lm-eval {k.split(':', 1)[1]}", k, ".3f") for k in extra]
        headers = HEADERS[:5] + [h for _, h, _, _ in numeric]
        lines += ["", "| " + " | ".join(headers) + " |",
                  "|" + "|".join("---:" if h in ("rank", "n") or h in [x[1] for x in numeric] else "---"
                                 for h in headers) + "|"]
        for g in t["groups"]:
            cells = [str(g["rank"]), g["label"], g["method"], str(g["n"]), g["status"],
                     *[fmt(g["stats"].get(k, (None, None, 0)), kind) for k, _, _, kind in numeric]]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines).lstrip("\n") + "\n"


def csv_rows(tables: list[dict]) -> tuple[list[str], list[list]]:
    cols = ["objective", "rank", "runs_label", "method", "n", "status", "tokenizer"]
    stat_keys = [(k, c) for k, _, c, _ in NUMERIC] + [(f"blimp_{f}", f"blimp_{f}") for f in BLIMP_FIELDS]
    stat_keys += [(k, k) for k in sorted({k for t in tables for g in t["groups"] for k in g["stats"]
                                          if k.startswith("lm_eval:")})]
    for _, c in stat_keys:
        cols += [f"{c}_mean", f"{c}_std"]
    cols.append("run_dirs")
    out = []
    for t in tables:
        for g in t["groups"]:
            row = [t["objective"], g["rank"], g["label"], g["method"], g["n"], g["status"], "; ".join(g["tokenizers"])]
            for k, _ in stat_keys:
                m, sd, _n = g["stats"].get(k, (None, None, 0))
                row += ["" if m is None else repr(m), "" if sd is None else repr(sd)]
            row.append(";".join(g["runs"]))
            out.append(row)
    return cols, out


def json_rows(tables: list[dict]) -> list[dict]:
    """Every run as a row, in table order, with its group's label, rank and size."""
    out = []
    for t in tables:
        for g in t["groups"]:
            for m in g["members"]:
                out.append({**{k: v for k, v in m.items() if not k.startswith("_") and k != "curve"},
                            "group": g["label"], "group_rank": g["rank"], "group_n": g["n"]})
    return out


# --- files ------------------------------------------------------------------------------------

def _plots(tables: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(t["objective"], g) for t in tables for g in t["groups"]]
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 5))
    xs_all = []
    for i, (obj, g) in enumerate(groups):
        name = f"{g['short']}: {g['method']} (n={g['n']})"
        if len(tables) > 1 and obj not in g["method"]:
            name += f" [{obj}]"
        for j, m in enumerate(g["members"]):
            if m["curve"]:
                xs, ys = zip(*m["curve"])
                xs_all += [x for x in xs if x > 0]
                ax.plot(xs, ys, marker=".", color=colors(i % 10), alpha=0.8, label=name if j == 0 else None)
    if xs_all and max(xs_all) / min(xs_all) > 50:
        ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("validation bits per byte against tokens seen (one line per run)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluation with tokens seen in these runs", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "bpb_vs_tokens.png", dpi=REPORT_DPI)
    plt.close(fig)

    fields = ["overall", *BLIMP_FIELDS]
    with_blimp = [(obj, g) for obj, g in groups if g["stats"]["blimp_overall"][0] is not None]
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(fields) + 0.3 * len(with_blimp)), 4.5))
    width = 0.8 / max(1, len(with_blimp))
    for i, (obj, g) in enumerate(with_blimp):
        ms = [g["stats"][f"blimp_{f}"][0] for f in fields]
        sds = [g["stats"][f"blimp_{f}"][1] or 0.0 for f in fields]
        pos = [k + (i - (len(with_blimp) - 1) / 2) * width for k in range(len(fields))]
        ax.bar(pos, [m if m is not None else 0.0 for m in ms], width, yerr=sds, capsize=3,
               color=colors(groups.index((obj, g)) % 10), label=f"{g['short']}: {g['method']} (n={g['n']})")
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(fields)), fields)
    ax.set_ylim(0, 1)
    ax.set_ylabel("BLiMP accuracy (error bars: std over seeds)")
    ax.set_title("BLiMP by field")
    if not with_blimp:
        ax.text(1.5, 0.75, "no run has BLiMP results (kinlm eval RUN --blimp)", ha="center")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "blimp_fields.png", dpi=REPORT_DPI)
    plt.close(fig)


def write_outputs(tables: list[dict], out: str | Path) -> list[Path]:
    """OUT/compare.md, OUT/compare.csv, OUT/bpb_vs_tokens.png, OUT/blimp_fields.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown(tables))
    cols, rows = csv_rows(tables)
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    _plots(tables, out)
    return [out / n for n in ("compare.md", "compare.csv", "bpb_vs_tokens.png", "blimp_fields.png")]


def read_rows(paths, weights: str = "last") -> list[dict]:
    """Every run's row (see :func:`find_runs`, :func:`read_run`)."""
    rows, problems = [], []
    for p in find_runs(paths):
        try:
            rows.append(read_run(p, weights))
        except CompareError as e:
            problems += e.problems
        except (OSError, ValueError) as e:
            problems.append(f"kinlm compare: {p}: unreadable run directory ({e})")
    if problems:
        raise CompareError(problems)
    return rows


def compare(paths, group_by: str | None = None) -> list[dict]:
    """The tables for ``paths`` (see :func:`find_runs`, :func:`build_tables`)."""
    return build_tables(read_rows(paths), group_by)


# --- scaling laws -----------------------------------------------------------------------------

SCALING_X = {"tokens": "tokens_seen", "parameters": "params", "steps": "step"}  # --fit-scaling FIELD -> row key


def scaling_points(rows: list[dict], field: str, metric: str = "eval/loss") -> tuple[list, list, list, list[str]]:
    """``(x, y, runs, notes)`` for ``--fit-scaling FIELD``: one point per run (seeds are points of
    their own). x: ``tokens`` (result.json's tokens_seen), ``parameters`` (params), ``steps`` (step),
    or any dotted spec path with a number (``curriculum.train_tokens``); y: the last value of
    ``metric`` in metrics.jsonl, else result.json's (``exp(KEY)``: e to the power of KEY's value, a
    perplexity from a logged loss). A run that has not finished, or has no such metric, is left out
    with a note (an unfinished point of a sweep); a spec path no run has, a value that is not a number, or
    runs of different objectives raise CompareError."""
    def x_of(r):
        return r[SCALING_X[field]] if field in SCALING_X else lookup(r["_spec"], field)

    where = (f"{field} (result.json's {SCALING_X[field]})" if field in SCALING_X else f"{field} (spec.json)")
    if field not in SCALING_X and all(x_of(r) is MISSING for r in rows):
        raise CompareError([f"kinlm compare: --fit-scaling {field}: not tokens, parameters or steps, and no "
                            "such field in any run's spec.json"])
    objectives = sorted({r["objective"] for r in rows})
    if len(objectives) > 1:
        raise CompareError([f"kinlm compare: --fit-scaling: these runs train different objectives "
                            f"({', '.join(objectives)}); fit one objective's runs at a time"])
    key = metric[4:-1] if metric.startswith("exp(") and metric.endswith(")") else None  # exp(KEY): a loss's perplexity
    xs, ys, runs, notes = [], [], [], []
    for r in sorted(rows, key=lambda r: r["run"]):
        if r["status"] != "finished":
            notes.append(f"note: {r['run']}: {r['status']}, not finished; left out of the scaling fit")
            continue
        x, y = x_of(r), r["_last"].get(key or metric)
        if key and isinstance(y, (int, float)) and not isinstance(y, bool):
            y = math.exp(y) if y < 709 else math.inf  # past float range: refused by the fit in one line
        if x is MISSING or x is None or y is None:
            missing = " and ".join(w for w, v in ((where, x), (metric, y)) if v is MISSING or v is None)
            notes.append(f"note: {r['run']}: no {missing}; left out of the scaling fit")
            continue
        for what, v in ((where, x), (metric, y)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise CompareError([f"kinlm compare: {r['run']}: {what} is {json.dumps(v)}, not a number"])
        xs.append(float(x))
        ys.append(float(y))
        runs.append(r["run"])
    return xs, ys, runs, notes


def fit_scaling(rows: list[dict], field: str, metric: str = "eval/loss", floor: bool = False, seed: int = 0,
                out: str | Path | None = None) -> tuple[list[str], list[Path]]:
    """Fit ``metric = a * FIELD^alpha (+ floor)`` over the runs (:func:`kinlm_core.scaling.fit_power_law`);
    returns the lines to print and, with ``out``, the files written: OUT/scaling_FIELD.png (log-log:
    points, fit, band) and OUT/scaling_FIELD.json (the fit and its points)."""
    from .scaling import FIELDS, ScalingError, figure, fit_power_law

    xs, ys, runs, notes = scaling_points(rows, field, metric)
    try:
        fit = fit_power_law(xs, ys, floor=floor, seed=seed, labels=[f"{r} ({field}, {metric})" for r in runs])
    except ScalingError as e:
        raise CompareError([f"kinlm compare: --fit-scaling {field}: {str(e).removeprefix('scaling fit: ')}"]) from None
    xlabel = FIELDS.get(field, field)
    lines = notes + fit.summary(metric, xlabel)
    written = []
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        png, js = out / f"scaling_{field}.png", out / f"scaling_{field}.json"
        figure(fit, xs, ys, png, metric=metric, xlabel=xlabel)
        js.write_text(json.dumps({"field": field, "metric": metric, "formula": fit.formula(metric, xlabel),
                                  **fit.as_dict(), "points": [{"run": r, "x": x, "y": y} for r, x, y in zip(runs, xs, ys)]},
                                 indent=2) + "\n")
        written = [png, js]
    return lines, written
