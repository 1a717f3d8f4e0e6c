"""An arm's runs: the folder they live in (``OUT/arms/<key>``, shared by every claim that uses the
same spec with the same overrides), which of them count (finished, made from the arm's spec as it
is today, at the learning rate the grid chose), and training what is still missing through
:mod:`kinlm_core.sweep`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import archive
from .discovery import REPO, Installed, resolve_spec
from .metrics import _last, _records, _result
from .schema import Arm, Claim


def arm_key(arm: Arm, claim_path: Path) -> str:
    """The arm's folder under OUT/arms: the spec's stem and a hash of the spec file and overrides,
    so claims that share an arm share its runs."""
    sp = resolve_spec(arm.spec, claim_path)
    try:
        ident = str(sp.resolve().relative_to(REPO))
    except ValueError:
        ident = str(sp.resolve())
    h = hashlib.sha1(json.dumps([ident, sorted(arm.set)]).encode()).hexdigest()[:8]
    return f"{sp.stem}-{h}"


def _grid_value(v: float) -> str:
    return json.dumps(v)


def _seed_of(run: Path) -> int | None:
    tail = run.name.split("_", 1)[1] if "_" in run.name else ""
    return int(tail) if tail.lstrip("-").isdigit() else None


def _seed_runs(folder: Path) -> list[Path]:
    """Finished runs ``folder/seed_S`` (by seed)."""
    runs = []
    for name in archive.listing(folder, "seed_*"):
        if _result(folder / name).get("status") == "finished":
            runs.append(folder / name)
    return sorted(runs, key=lambda d: _seed_of(d) or 0)


MAX_EXTENSIONS = 2  # a grid whose best value is at its edge grows by one value beyond it, at most this often
TUNING = "tuning"  # OUT/arms/<key>/tuning/<spec name>/<key>=<value>/seed_<T>: the grid's runs, apart from the verdict's


def verdict_seeds(claim: Claim, n: int | None = None) -> list[int] | None:
    """The seeds the verdict runs use: the registration's ``verdict_seeds`` (``n`` of them; more
    than it lists continue upward past its last, skipping tuning seeds), or None for a claim
    without a registration (its spec's seed upward, as ``kinlm sweep --seeds n`` runs them)."""
    if claim.registration is None:
        return None
    seeds = list(claim.registration.verdict_seeds)
    n = n or len(seeds)
    tuning = set(claim.registration.tuning_seeds)
    while len(seeds) < n:
        s = max(seeds) + 1
        while s in tuning or s in seeds:
            s += 1
        seeds.append(s)
    return seeds[:n]


def tuning_seeds(claim: Claim) -> list[int] | None:
    """The seeds the lr grid runs on: the registration's ``tuning_seeds``, or None (no registration
    or none listed: the first seed of the spec, as before registrations existed)."""
    if claim.registration is None or not claim.registration.tuning_seeds:
        return None
    return list(claim.registration.tuning_seeds)


def beyond(values: list[float], top: bool) -> float:
    """One grid value past the edge, at the ratio of the edge to its neighbour (3 significant digits)."""
    xs = sorted(values)
    edge, nb = (xs[-1], xs[-2]) if top else (xs[0], xs[1])
    return float(f"{edge * edge / nb:.3g}")


@dataclass
class ArmRuns:
    arm: Arm
    folder: Path  # OUT/arms/<key>
    spec_name: str
    runs: list[Path] = field(default_factory=list)
    grid: dict[str, float | None] = field(default_factory=dict)  # grid value -> the tuning seeds' mean select_on value
    grid_runs: dict[str, Path] = field(default_factory=dict)  # grid value -> its first tuning seed's run
    tuning_runs: list[Path] = field(default_factory=list)  # every tuning run the choice used
    extended: list[str] = field(default_factory=list)  # values added beyond the grid's edge (at most MAX_EXTENSIONS)
    pending: str | None = None  # an extension the choice calls for that has not run yet
    chosen: str | None = None
    problem: str | None = None
    stale: list[str] = field(default_factory=list)  # runs left out: their spec is not the arm's today
    off_seeds: list[int] = field(default_factory=list)  # finished runs left out: not registered verdict seeds


def spec_name(arm: Arm, claim_path: Path) -> str:
    sp = resolve_spec(arm.spec, claim_path)
    data = archive.read_json(sp)
    name = data.get("name") if isinstance(data, dict) else None
    for s in arm.set:
        if s.startswith("name="):
            name = s.split("=", 1)[1]
    from ..sweep import safe

    return safe(name or sp.stem)


def stale_keys(run: Path, spec: Path, overrides: list[str]) -> list[str]:
    """The spec keys where ``run``'s spec.json differs from what the arm's spec file and overrides
    (and the run's seed) give today: non-empty when the spec changed after the run. Keys the run's
    spec.json lacks (fields added since, at their defaults then) do not count."""
    return archive.stale(run, spec, overrides, lambda: _stale_keys(run, spec, overrides))


def _stale_keys(run: Path, spec: Path, overrides: list[str]) -> list[str]:
    from ..spec import diff_keys, dump, load_spec

    try:
        old = json.loads((run / "spec.json").read_text())
        now = dump(load_spec(spec, [*overrides, f"seed={old.get('seed')}"], check_requires=False))
    except Exception as e:  # noqa: BLE001 - an unreadable spec is a stale run, said on the card
        return [f"(cannot compare: {e})"]

    def has(d, dotted):
        for part in dotted.split("."):
            if not isinstance(d, dict) or part not in d:
                return False
            d = d[part]
        return True

    return [k for k in diff_keys(old, now) if has(old, k)]


def _fresh(runs: list[Path], arm: Arm, claim_path: Path, extra: list[str], ar: "ArmRuns") -> list[Path]:
    """The runs whose spec is the arm's today; the others are left out with a problem on the card."""
    spec = resolve_spec(arm.spec, claim_path)
    keep = []
    for r in runs:
        keys = stale_keys(r, spec, [*arm.set, *extra])
        if keys:
            ar.stale.append(f"{r} ({', '.join(keys[:4])})")
        else:
            keep.append(r)
    return keep


def _tune(claim: Claim, arm: Arm, claim_path: Path, ar: ArmRuns) -> None:
    """The grid's state from the tuning runs on disk: each value's mean ``select_on`` over the
    tuning seeds, the chosen value (lowest), the extensions beyond the edge (a value past the edge
    whose runs exist counts; the next one the choice calls for is ``pending``)."""
    g = claim.lr_grid
    seeds = tuning_seeds(claim)
    values = list(g.values)
    base = ar.folder / TUNING / ar.spec_name
    while True:
        for v in values:
            key = f"{g.key}={_grid_value(v)}"
            if _grid_value(v) in ar.grid:
                continue
            runs = _fresh(_seed_runs(base / key), arm, claim_path, [key], ar)
            runs = [r for r in runs if _seed_of(r) in seeds] if seeds else runs[:1]
            done = [_last(_records(r), g.select_on) for r in runs]
            ok = len(runs) == (len(seeds) if seeds else 1) and None not in done
            ar.grid[_grid_value(v)] = sum(done) / len(done) if ok else None
            if ok:
                ar.grid_runs[_grid_value(v)] = runs[0]
                ar.tuning_runs += runs
        done = {k: x for k, x in ar.grid.items() if x is not None}
        missing = [k for k, x in ar.grid.items() if x is None]
        if missing:
            if missing != ar.extended[-1:]:
                ar.problem = (f"arm {arm.name}: the lr grid is not finished ({len(done)} of {len(ar.grid)} values have "
                              f"{'a run on each tuning seed' if seeds else 'a first-seed run'} with {g.select_on})")
                return
            ar.pending = ar.extended.pop()  # the extension has not run: choose among the rest, say so
            del ar.grid[ar.pending]
        ar.chosen = min(done, key=lambda k: (done[k], float(k)))
        xs = sorted(float(k) for k in ar.grid)
        at_edge = float(ar.chosen) in (xs[0], xs[-1])
        if ar.pending or not at_edge or len(ar.extended) >= MAX_EXTENSIONS:
            break
        new = beyond(xs, float(ar.chosen) == xs[-1])
        ar.extended.append(_grid_value(new))
        values = [new]
    ar.grid = dict(sorted(ar.grid.items(), key=lambda kv: float(kv[0])))


def arm_runs(claim: Claim, arm: Arm, claim_path: Path, out: Path, seeds: int | None = None) -> ArmRuns:
    """The arm's finished runs the report uses: the registered verdict seeds (without a
    registration, the first ``seeds``), at the learning rate the grid chose on the tuning seeds
    (their own runs, under ``tuning/``); runs made from an earlier version of the arm's spec are
    left out (``stale``)."""
    folder = Path(out) / "arms" / arm_key(arm, claim_path)
    name = spec_name(arm, claim_path)
    ar = ArmRuns(arm, folder, name)
    base = folder / name
    if claim.lr_grid:
        _tune(claim, arm, claim_path, ar)
        if ar.chosen is None:
            return ar
        base = base / f"{claim.lr_grid.key}={ar.chosen}"
    chosen = [f"{claim.lr_grid.key}={ar.chosen}"] if claim.lr_grid else []
    ar.runs = _fresh(_seed_runs(base), arm, claim_path, chosen, ar)
    want = verdict_seeds(claim, seeds)
    if want is not None:
        ar.off_seeds = [_seed_of(r) for r in ar.runs if _seed_of(r) not in want]
        ar.runs = [r for r in ar.runs if _seed_of(r) in want]
    elif seeds is not None:
        ar.runs = ar.runs[:seeds]
    return ar


# --- running ------------------------------------------------------------------------------------


def _sweep(spec: Path, seeds: int, grid: list[str], sets: list[str], out: Path, parallel, echo, manager) -> int:
    from .. import sweep as sw

    out_dir, points = sw.plan([str(spec)], seeds, grid, sets, out, manager)
    return sw.run(out_dir, points, sw.device_groups(parallel), echo=echo)


def _sweep_seeds(spec: Path, seeds: list[int] | int, grid: list[str], sets: list[str], out: Path, parallel, echo,
                 manager) -> int:
    """:func:`_sweep` over the listed seeds (a count: the spec's seed upward), one sweep per run of
    consecutive seeds (``--set seed=S --seeds K``). The worst exit code; an interruption stops."""
    from ..sweep import EXIT_PREEMPTED

    if isinstance(seeds, int):
        return _sweep(spec, seeds, grid, sets, out, parallel, echo, manager)
    blocks: list[list[int]] = []
    for s in sorted(seeds):
        if blocks and s == blocks[-1][-1] + 1:
            blocks[-1].append(s)
        else:
            blocks.append([s])
    rc = 0
    for b in blocks:
        code = _sweep(spec, len(b), grid, [*sets, f"seed={b[0]}"], out, parallel, echo, manager)
        if code == EXIT_PREEMPTED:
            return code
        rc = rc or code
    return rc


def _count_params(run: Path, dest: Path, echo) -> None:
    """``kinlm params RUN --json`` -> dest (total and non-embedding parameters of the arm's model)."""
    r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "params", str(run), "--json"], capture_output=True,
                       text=True)
    if r.returncode:
        echo(f"    (parameters not counted: kinlm params {run} exited {r.returncode}: "
             f"{(r.stderr.strip().splitlines() or [''])[-1]})")
        return
    data = json.loads(r.stdout)
    dest.write_text(json.dumps({k: data[k] for k in ("total", "embedding", "non_embedding", "vocab_size")
                                if k in data}, indent=2) + "\n")


def run(selected: list[Installed], out, seeds: int | None = None, tier: str = "cpu", parallel="1",
        echo=print, manager=None) -> int:
    """Train what the claims' arms still miss (see the module docstring). Returns 0 when every arm
    finished, 1 when some point failed, 75 when interrupted."""
    from ..sweep import EXIT_PREEMPTED

    from . import registration as reg

    out = Path(out)
    done: set[tuple] = set()
    rc = 0
    uses: dict[str, dict[str, str]] = {}  # arm folder -> {claim id: registration hash}, stamped on new runs
    for inst in selected:
        for arm in inst.claim.arms:
            uses.setdefault(arm_key(arm, inst.path), {})[inst.claim.id] = reg.registration_hash(inst.claim)
    for inst in selected:
        c = inst.claim
        if c.tier == "gpu" and tier != "gpu":
            echo(f"{c.id}: tier gpu, skipped (run it with --tier gpu)")
            continue
        n = seeds or c.seeds
        echo(f"{c.id}: {len(c.arms)} arm(s) x {n} seeds" + (f", lr grid {c.lr_grid.values}" if c.lr_grid else "")
             + f", registration {reg.registration_hash(c)}")
        for arm in c.arms:
            key = (arm_key(arm, inst.path), json.dumps(c.lr_grid.model_dump() if c.lr_grid else None),
                   json.dumps([verdict_seeds(c, n) or n, tuning_seeds(c)]))
            if key in done:
                continue
            done.add(key)
            spec = resolve_spec(arm.spec, inst.path)
            folder = out / "arms" / key[0]
            echo(f"  arm {arm.name} ({arm.role}): {arm.spec}" + (f" --set {' --set '.join(arm.set)}" if arm.set else "")
                 + f" -> {folder}")
            before = reg.finished_runs(folder)
            vseeds = verdict_seeds(c, n) or n
            if c.lr_grid:
                g = c.lr_grid
                tseeds = tuning_seeds(c) or 1
                ar = arm_runs(c, arm, inst.path, out)
                last = None
                for _ in range(1 + MAX_EXTENSIONS):  # the grid, then each extension the choice calls for
                    todo = [v for v, x in ar.grid.items() if x is None] + ([ar.pending] if ar.pending else [])
                    if not todo or todo == last:  # done, or a run that failed again
                        break
                    last = todo
                    code = _sweep_seeds(spec, tseeds, [f"{g.key}=" + ",".join(todo)], list(arm.set),
                                        folder / TUNING, parallel, echo, manager)
                    reg.stamp(folder, before, uses[key[0]])
                    if code == EXIT_PREEMPTED:
                        return code
                    ar = arm_runs(c, arm, inst.path, out)
                if ar.chosen is None or ar.pending:
                    echo(f"    {ar.problem or f'arm {arm.name}: the grid extension to {ar.pending} did not finish'}")
                    rc = 1
                    continue
                on = f"tuning seeds {', '.join(map(str, tuning_seeds(c)))}" if tuning_seeds(c) else "the first seed"
                echo(f"    lr grid on {on} ({g.select_on}): "
                     + ", ".join(f"{k}: {v:.4f}" for k, v in ar.grid.items()) + f" -> {ar.chosen}"
                     + (f" (extended beyond the edge: {', '.join(ar.extended)})" if ar.extended else ""))
                code = _sweep_seeds(spec, vseeds, [f"{g.key}={ar.chosen}"], list(arm.set), folder, parallel, echo,
                                    manager)
            else:
                code = _sweep_seeds(spec, vseeds, [], list(arm.set), folder, parallel, echo, manager)
            reg.stamp(folder, before, uses[key[0]])  # the runs made now carry the claims' registration hashes
            if code == EXIT_PREEMPTED:
                return code
            rc = rc or code
            ar = arm_runs(c, arm, inst.path, out)
            if ar.runs and not (folder / "params.json").exists():
                _count_params(ar.runs[0], folder / "params.json", echo)
    return rc
