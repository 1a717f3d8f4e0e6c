"""The suite's policy as data (tiers, seeds, learning-rate grid, retunes), the spec of every point,
state sizes and the time estimate that ``kinlm diagnose --plan`` prints.

Fairness (issue 32): each task's instances come from three disjoint splits of one generated data set
(the synthetic source draws train, validation and test so that no input repeats across them).
An architecture's learning rate is chosen from ``lr_grid`` by its mean accuracy on the *validation*
split over ``tune_seeds`` seeds (seeds ``TUNE_SEED``, ``TUNE_SEED + 1``...); the verdict runs use
other seeds (``VERDICT_SEED``...) and are scored on the *test* split, which nothing was chosen on.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

from .registry import ArchEntry, Registry, TaskEntry

VERDICT_SEED = 1337
TUNE_SEED = 9001
TRAIN = {"schedule": "cosine", "min_lr_ratio": 0.1, "weight_decay": 0.1, "grad_clip": 1.0,
         "checkpoint_every": 100000, "log_every": 50, "export_final": False}
TIERS = {
    "cpu": {"about": "sized for 2 CPU cores: short sequences, small vocabularies, a few hundred steps on a fixed "
                     "training set",
            "seeds": 3, "tune_seeds": 1, "lr_grid": [1e-3, 3e-3, 1e-2],
            "train": {"max_steps": 600, "batch_size": 32, "warmup_steps": 50}, "eval": {"every": 300, "batches": 8},
            "overhead_s": 10.0},
    "gpu": {"about": "the anchors' own sizes (MAD's baselines and difficulty ranges, Zoology's MQAR sweep)",
            "seeds": 3, "tune_seeds": 2, "lr_grid": [3e-4, 1e-3, 3e-3, 1e-2],
            "train": {"max_steps": 20000, "batch_size": 128, "warmup_steps": 500},
            "eval": {"every": 2000, "batches": 10},
            "overhead_s": 20.0},
}
# --quick: the machinery end to end in minutes (not evidence): MQAR only unless --tasks, the first level,
# two learning rates, a few dozen steps; seeds and the state sizes as in the tier.
QUICK = {"tasks": ["associative_recall"], "lr_grid": [3e-3, 1e-2], "train": {"max_steps": 40, "warmup_steps": 5},
         "eval": {"every": 40, "batches": 2}, "levels": 1}
# A task whose verdict accuracies are all >= ceiling (or all <= chance + chance_margin) separates
# nothing: it is run again at the task's next ``retune`` levels, at most max_retunes times, then dropped.
RETUNE = {"ceiling": 0.98, "chance_margin": 0.02, "max_retunes": 2}


class PlanError(ValueError):
    """Bad input to the suite (an unknown task, architecture or tier): one line."""


@dataclass
class Selection:
    tier_name: str
    tier: dict
    tasks: list[TaskEntry]
    archs: list[ArchEntry]
    skipped: dict[str, str] = field(default_factory=dict)  # arch -> why (the tier leaves it out)
    quick: bool = False

    def levels(self, task: TaskEntry) -> list:
        lv = task.tiers[self.tier_name].levels
        return lv[: self.tier["levels"]] if self.tier.get("levels") else lv

    def tune_level(self, task: TaskEntry):
        lv = self.levels(task)
        return lv[len(lv) // 2]

    def state_level(self, task: TaskEntry):
        t = task.tiers[self.tier_name]
        return t.state_level if t.state_level is not None else self.tune_level(task)

    def state_sizes(self, arch: ArchEntry) -> list:
        return arch.state_sizes.get(self.tier_name, [])

    def curve_archs(self) -> list[ArchEntry]:
        return [a for a in self.archs if a.family == "fixed" and self.state_sizes(a)]


def select(reg: Registry, tier: str = "cpu", tasks=None, archs=None, quick: bool = False) -> Selection:
    """The tier's policy and the chosen tasks and architectures (default: every registered task with
    the tier, every architecture the tier does not skip)."""
    if tier not in TIERS:
        raise PlanError(f"kinlm diagnose: --tier {tier!r}: the suite has tiers {', '.join(TIERS)}")
    pol = copy.deepcopy(TIERS[tier])
    if quick:
        pol["lr_grid"] = QUICK["lr_grid"]
        pol["train"].update(QUICK["train"])
        pol["eval"].update(QUICK["eval"])
        pol["levels"] = QUICK["levels"]
    known_t = [n for n, t in reg.tasks.items() if tier in t.tiers]
    names = list(tasks) if tasks else (QUICK["tasks"] if quick else known_t)
    for n in names:
        if n not in known_t:
            raise PlanError(f"kinlm diagnose: --tasks: unknown task {n!r} for tier {tier}; registered: "
                            f"{', '.join(known_t) or 'none'}")
    skipped = {a.architecture: a.skip[tier] for a in reg.archs.values() if tier in a.skip}
    anames = list(archs) if archs else [n for n in reg.archs if n not in skipped]
    for n in anames:
        if n not in reg.archs:
            raise PlanError(f"kinlm diagnose: --archs: unknown architecture {n!r}; registered: {', '.join(reg.archs)}")
    return Selection(tier, pol, [reg.tasks[n] for n in names], [reg.archs[n] for n in anames],
                     {} if archs else skipped, quick)


# --- specs ----------------------------------------------------------------------------------------------


def _raise_block_size(model: dict, n: int) -> None:
    """Every ``block_size`` of the model (and of a wrapped model) at least n."""
    for k, v in model.items():
        if k == "block_size" and isinstance(v, int) and v < n:
            model[k] = n
        elif isinstance(v, dict):
            _raise_block_size(v, n)


def model_path(task: TaskEntry, knob: str) -> str:
    """The dotted spec path of an architecture's model field (inside the read-out wrapper where the task has one)."""
    return f"model.inner.{knob}" if task.readout else f"model.{knob}"


def task_spec(sel: Selection, task: TaskEntry, arch: ArchEntry, phase: str, lr: float | None = None,
              levels: list | None = None) -> dict:
    """The spec of one architecture on one task for a phase: ``tune`` (seed TUNE_SEED, the validation
    split, the task at its tuning level), ``verdict`` or ``state`` (seed VERDICT_SEED, the test split)."""
    t = task.tiers[sel.tier_name]
    lv = levels or sel.levels(task)
    longest = task.longest(sel.tier_name, lv)
    if longest < 1:
        raise PlanError(f"kinlm diagnose: task {task.task} ({task.dist}): its {sel.tier_name} tier names no "
                        f"seq_len (in data or as the knob)")
    level = {"tune": sel.tune_level(task), "state": sel.state_level(task)}.get(phase, lv[0])
    data = {"n_validation": 256, "n_test": 512, **task.data, **t.data, t.knob: level}
    model = copy.deepcopy(arch.model)
    _raise_block_size(model, longest)
    if task.readout == "compression":
        model = {"type": "compression_readout", "inner": model, "max_len": longest}
    train = {**TRAIN, **sel.tier["train"], "block_size": 2 * longest}  # a document: T inputs then T labels
    train["lr"] = lr if lr is not None else sel.tier["lr_grid"][len(sel.tier["lr_grid"]) // 2]
    spec = {"name": f"diag-{arch.architecture}", "seed": TUNE_SEED if phase == "tune" else VERDICT_SEED,
            "data": data, "tokenizer": {"type": "ids"}, "objective": {"type": "supervised"}, "model": model,
            "train": train, "eval": {**sel.tier["eval"], "split": "validation" if phase == "tune" else "test"},
            "generate": [], "analyzers": []}
    if arch.regularizers:
        spec["regularizers"] = copy.deepcopy(arch.regularizers)
    return spec


# --- the points, sizes and time -------------------------------------------------------------------------


def counts(sel: Selection) -> dict:
    """Runs per phase (before any retune)."""
    n_arch, pol = len(sel.archs), sel.tier
    tune = sum(n_arch * len(pol["lr_grid"]) * pol["tune_seeds"] for _ in sel.tasks)
    verdict = sum(n_arch * len(sel.levels(t)) * pol["seeds"] for t in sel.tasks)
    state = sum(len(sel.state_sizes(a)) * pol["seeds"] for t in sel.tasks if t.state_curve for a in sel.curve_archs())
    return {"tune": tune, "verdict": verdict, "state": state}


def _vocab(sel: Selection, task: TaskEntry) -> int:
    t = task.tiers[sel.tier_name]
    d = {**task.data, **t.data}
    v = max(t.levels) if t.knob == "vocab_size" else d.get("vocab_size") or 64
    return int(v) + 1


def describe(sel: Selection, arch: ArchEntry, task: TaskEntry | None = None) -> dict:
    """Parameters, read-out width (the input width of the layer that writes the logits) and state of an
    architecture as the suite builds it for a task (default: the first selected)."""
    import torch

    from ..params import count_parameters
    from ..spec import validate

    task = task or sel.tasks[0]
    spec = validate(task_spec(sel, task, arch, "verdict"), f"{arch.architecture} on {task.task}")
    V = _vocab(sel, task)
    torch.manual_seed(0)
    m = spec.model.build(V)
    c = count_parameters(m)
    heads = [x for x in m.modules() if isinstance(x, torch.nn.Linear) and x.out_features >= V - 1]
    width = heads[-1].in_features if heads else None
    T = task.longest(sel.tier_name)
    return {"arch": arch.architecture, "dist": arch.dist, "family": arch.family, "total": c.total,
            "non_embedding": c.non_embedding, "readout": width, "state_bytes": arch.state_bytes(arch.model, T),
            "seq_len": T}


def seconds_per_step(sel: Selection, arch: ArchEntry, task: TaskEntry, steps: int = 2) -> float:
    """A quick timing: one training step (forward, backward, AdamW) of the model at the task's batch
    and length, the mean of ``steps`` after one warm-up step."""
    import torch

    from ..spec import validate

    spec = validate(task_spec(sel, task, arch, "verdict"), arch.architecture)
    V = _vocab(sel, task)
    torch.manual_seed(0)
    m = spec.model.build(V)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    ids = torch.randint(0, V - 1, (sel.tier["train"]["batch_size"], task.longest(sel.tier_name)))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = m(ids)
        loss = torch.nn.functional.cross_entropy(out.logits[..., :V].reshape(-1, V), ids.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def estimate(sel: Selection, parallel: int = 2, timing=seconds_per_step) -> dict:
    """Seconds of the whole plan: per run its steps x the arch's seconds per step on that task plus the
    tier's per-run overhead (process start, data, evaluation), divided over ``parallel`` points at once."""
    pol = sel.tier
    steps, over = pol["train"]["max_steps"], pol["overhead_s"]
    per_arch_task = {}
    total = 0.0
    for t in sel.tasks:
        for a in sel.archs:
            s = per_arch_task[(t.task, a.architecture)] = timing(sel, a, t)
            n = len(pol["lr_grid"]) * pol["tune_seeds"] + len(sel.levels(t)) * pol["seeds"]
            if t.state_curve and a in sel.curve_archs():
                n += len(sel.state_sizes(a)) * pol["seeds"]
            total += n * (steps * s + over)
    return {"seconds": total / max(1, parallel), "per_step": per_arch_task}


def plan_text(sel: Selection, parallel: int = 2, timing=seconds_per_step, problems=()) -> str:
    """What --plan prints."""
    pol, c = sel.tier, counts(sel)
    lines = [f"kinlm diagnose: tier {sel.tier_name}{' (--quick)' if sel.quick else ''}: {pol['about']}",
             f"seeds: {pol['seeds']} verdict seeds from {VERDICT_SEED} (test split), {pol['tune_seeds']} tuning "
             f"seed(s) from {TUNE_SEED} (validation split); lr grid {pol['lr_grid']}; "
             f"{pol['train']['max_steps']} steps of {pol['train']['batch_size']}",
             f"retunes: a task at ceiling (>= {RETUNE['ceiling']}) or chance for every architecture is rerun at its "
             f"next levels at most {RETUNE['max_retunes']} times, then dropped",
             f"runs: {c['tune']} tuning + {c['verdict']} verdict + {c['state']} state-size = {sum(c.values())}", "",
             "tasks:"]
    for t in sel.tasks:
        tt = t.tiers[sel.tier_name]
        lines.append(f"  {t.task:20s} [{t.dist}] {tt.knob} = {sel.levels(t)} (tuning at {sel.tune_level(t)}), "
                     f"chance {tt.chance:.3f}" + (f"; state-size curve at {tt.knob} = {sel.state_level(t)}"
                                                  if t.state_curve else "") + (f"  {t.about}" if t.about else ""))
    lines += ["", "architectures:"]
    for a in sel.archs:
        d = describe(sel, a)
        sb = f"{d['state_bytes']:,} B" + (" at T=%d (KV cache)" % d["seq_len"] if a.family == "attention" else "") \
            if d["state_bytes"] is not None else "-"
        sizes = sel.state_sizes(a)
        extra = ""
        if sizes and a.family == "fixed":
            bytes_ = []
            for v in sizes:
                m = copy.deepcopy(a.model)
                _set(m, a.state_knob, v)
                bytes_.append(a.state_bytes(m, d["seq_len"]))
            extra = f"; state sweep {a.state_knob} = {sizes} -> " + ", ".join(f"{b:,}" for b in bytes_) + " B"
        lines.append(f"  {a.architecture:20s} [{a.dist}] {a.family:9s} params {d['total']:>9,}  non-embedding "
                     f"{d['non_embedding']:>9,}  read-out width {d['readout']}  state {sb}{extra}")
    for a, why in sel.skipped.items():
        lines.append(f"  {a:20s} left out of the {sel.tier_name} tier: {why}")
    est = estimate(sel, parallel, timing)
    lines += ["", f"estimate: {est['seconds'] / 60:.0f} min with {parallel} points at once (quick timing of one "
                  f"training step per architecture and task, plus {pol['overhead_s']:.0f} s per run)"]
    lines += [f"problem: {p}" for p in problems]
    return "\n".join(lines)


def _set(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value
