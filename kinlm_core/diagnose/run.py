"""Running the suite: per task, tuning, then the verdict runs (retuned when the task separates nothing),
then the state-size sweep, each phase one ``kinlm sweep`` over the architectures' specs (so a finished
point is skipped and an interrupted one resumed when the command runs again).

Layout under OUT:

    specs/<task>/<phase>/<arch>.json     the spec of each architecture in each phase
    <task>/tune/                         lr grid x tuning seeds, the tuning level, validation split
    <task>/verdict[-retune<k>]/          the task's levels x verdict seeds, test split, each arch's tuned lr
    <task>/state/                        MQAR: each fixed-state arch's state knob x verdict seeds
    <task>/attempts.json                 the levels tried and what the check said of each
"""

from __future__ import annotations

import json
from pathlib import Path

from .plan import RETUNE, Selection, model_path, task_spec
from .registry import TaskEntry

EXIT_INTERRUPTED = 75


class Interrupted(Exception):
    """A sweep was interrupted (SIGINT/SIGTERM): its points saved checkpoints; run again to continue."""


def _write_specs(folder: Path, specs: dict[str, dict]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for arch, spec in specs.items():
        p = folder / f"{arch}.json"
        text = json.dumps(spec, indent=2) + "\n"
        if not p.exists() or p.read_text() != text:
            p.write_text(text)
        paths.append(p)
    return paths


def sweep(paths: list[Path], seeds: int, grid: list[str], out: Path, parallel: str, echo) -> int:
    """One ``kinlm sweep`` in this process; raises :class:`Interrupted` on 75."""
    from .. import sweep as sw

    out_dir, points = sw.plan([str(p) for p in paths], seeds, grid, (), out)
    rc = sw.run(out_dir, points, sw.device_groups(parallel), echo=echo)
    if rc == EXIT_INTERRUPTED:
        raise Interrupted(str(out))
    return rc


def read(where: Path, key: str) -> dict:
    """{(arch, value of the dotted spec path ``key``): [(accuracy, eval loss) per finished run]}."""
    from ..compare import find_runs, lookup, read_run

    acc: dict = {}
    if not where.exists() or not any(where.rglob("result.json")):
        return acc
    for d in find_runs([where]):
        row = read_run(d)
        if row["status"] != "finished" or row.get("accuracy") is None:
            continue
        arch = row["name"].removeprefix("diag-")
        acc.setdefault((arch, lookup(row["_spec"], key)), []).append((float(row["accuracy"]), row.get("loss")))
    return acc


def pick_lr(results: dict, grid: list[float]) -> dict[str, float]:
    """Each architecture's learning rate: the grid value with the highest mean validation accuracy over
    tuning seeds (ties: the lower mean eval loss, then the smaller rate)."""
    best: dict[str, tuple] = {}
    for (arch, lr), runs in results.items():
        if lr not in grid:  # a run of another grid in the same folder
            continue
        accs = [a for a, _ in runs]
        losses = [l for _, l in runs if l is not None]
        key = (sum(accs) / len(accs), -(sum(losses) / len(losses)) if losses else 0.0, -lr)
        if arch not in best or key > best[arch][0]:
            best[arch] = (key, lr)
    return {a: lr for a, (_, lr) in best.items()}


def check(acc: dict, chance: float, policy: dict = RETUNE) -> str | None:
    """``ceiling`` when every mean accuracy (per architecture and level) is >= the policy's ceiling,
    ``chance`` when every one is <= chance + margin, else None (the task separates, or no runs)."""
    means = [sum(a for a, _ in v) / len(v) for v in acc.values() if v]
    if not means:
        return None
    if all(m >= policy["ceiling"] for m in means):
        return "ceiling"
    if all(m <= chance + policy["chance_margin"] for m in means):
        return "chance"
    return None


def verdict_folder(out: Path, task: str, attempt: int) -> Path:
    return out / task / ("verdict" if attempt == 0 else f"verdict-retune{attempt}")


def run_task(sel: Selection, task: TaskEntry, out: Path, parallel: str = "1", echo=print,
             policy: dict = RETUNE) -> dict:
    """Tune, judge (retuning as the policy says) and sweep the state of one task. Returns what happened:
    the tuned rates, the attempts (levels and the check's word) and whether the task was dropped."""
    pol, t = sel.tier, task.tiers[sel.tier_name]
    specs = out / "specs" / task.task
    # 1. tuning: every rate of the grid on the tuning seeds, scored on validation
    paths = _write_specs(specs / "tune", {a.architecture: task_spec(sel, task, a, "tune") for a in sel.archs})
    echo(f"kinlm diagnose: {task.task}: tuning the learning rate ({len(pol['lr_grid'])} rates x "
         f"{pol['tune_seeds']} seed(s) x {len(sel.archs)} architectures)")
    sweep(paths, pol["tune_seeds"], ["train.lr=" + ",".join(map(str, pol["lr_grid"]))], out / task.task / "tune",
          parallel, echo)
    names = {a.architecture for a in sel.archs}
    lrs = {a: lr for a, lr in pick_lr(read(out / task.task / "tune", "train.lr"), pol["lr_grid"]).items()
           if a in names}
    archs = [a for a in sel.archs if a.architecture in lrs]
    for a in sel.archs:
        if a.architecture not in lrs:
            echo(f"kinlm diagnose: {task.task}: {a.architecture} finished no tuning run; left out of the verdict")
    # 2. the verdict, retuned at most policy["max_retunes"] times when it separates nothing
    attempts, levels, used = [], sel.levels(task), {"ceiling": 0, "chance": 0}
    while True:
        k = len(attempts)
        paths = _write_specs(specs / f"verdict{'' if k == 0 else f'-retune{k}'}",
                             {a.architecture: task_spec(sel, task, a, "verdict", lrs[a.architecture], levels)
                              for a in archs})
        where = verdict_folder(out, task.task, k)
        sweep(paths, pol["seeds"], [f"data.{t.knob}=" + ",".join(map(str, levels))], where, parallel, echo)
        word = check(read(where, f"data.{t.knob}"), t.chance, policy)
        attempts.append({"levels": levels, "check": word, "folder": where.name})
        options = t.retune.get(word, []) if word else []
        if word is None or k >= policy["max_retunes"] or used[word] >= len(options):
            break
        levels = options[used[word]]
        used[word] += 1
        echo(f"kinlm diagnose: {task.task}: at {word} for every architecture; retune {k + 1}: {t.knob} = {levels}")
    dropped = attempts[-1]["check"]
    # 3. the state-size curve
    if task.state_curve and not dropped:
        for a in sel.curve_archs():
            if a.architecture not in lrs:
                continue
            p = _write_specs(specs / "state", {a.architecture: task_spec(sel, task, a, "state", lrs[a.architecture])})
            grid = [f"{model_path(task, a.state_knob)}=" + ",".join(map(str, sel.state_sizes(a)))]
            sweep(p, pol["seeds"], grid, out / task.task / "state", parallel, echo)
    summary = {"lr": lrs, "attempts": attempts, "dropped": dropped}
    (out / task.task).mkdir(parents=True, exist_ok=True)
    (out / task.task / "attempts.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_suite(sel: Selection, out: Path, doc: Path, parallel: str = "1", train: bool = True, echo=print,
              command: str = "kinlm diagnose") -> dict:
    """Every selected task (unless ``train`` is false: only read the runs there are), then the page
    section and the figures. Raises :class:`Interrupted` when a sweep was interrupted."""
    from . import figures, report

    for task in sel.tasks:
        if train:
            run_task(sel, task, out, parallel, echo)
    results = report.collect(sel, out)
    figs = {}
    fig_dir = doc.parent / "diagnostics"
    suffix = f"{sel.tier_name}{'_quick' if sel.quick else ''}"
    p = figures.accuracy_vs_difficulty(sel, results, fig_dir / f"accuracy_vs_difficulty_{suffix}.png")
    figs["accuracy against difficulty, 95% intervals over seeds"] = str(p.relative_to(doc.parent))
    for task in sel.tasks:
        if results[task.task]["state"]:
            p = figures.accuracy_vs_state(sel, task, results[task.task]["state"],
                                          fig_dir / f"state_size_{task.task}_{suffix}.png")
            figs[f"{task.task}: accuracy against state bytes"] = str(p.relative_to(doc.parent))
    report.write_page(doc, report.section(sel, results, report.param_table(sel), figs, command))
    echo(f"kinlm diagnose: wrote {doc} and {len(figs)} figure(s) in {fig_dir}")
    return results
