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


def _seed_runs(folder: Path) -> list[Path]:
    """Finished runs ``folder/seed_S`` (by seed)."""
    runs = []
    for d in folder.glob("seed_*"):
        if d.is_dir() and _result(d).get("status") == "finished":
            runs.append(d)
    return sorted(runs, key=lambda d: int(d.name.split("_", 1)[1]) if d.name.split("_", 1)[1].lstrip("-").isdigit() else 0)


@dataclass
class ArmRuns:
    arm: Arm
    folder: Path  # OUT/arms/<key>
    spec_name: str
    runs: list[Path] = field(default_factory=list)
    grid: dict[str, float | None] = field(default_factory=dict)  # grid value -> first seed's select_on value
    grid_runs: dict[str, Path] = field(default_factory=dict)  # grid value -> the first seed's run
    chosen: str | None = None
    problem: str | None = None
    stale: list[str] = field(default_factory=list)  # runs left out: their spec is not the arm's today


def spec_name(arm: Arm, claim_path: Path) -> str:
    sp = resolve_spec(arm.spec, claim_path)
    try:
        name = json.loads(sp.read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    for s in arm.set:
        if s.startswith("name="):
            name = s.split("=", 1)[1]
    from ..sweep import safe

    return safe(name or sp.stem)


def stale_keys(run: Path, spec: Path, overrides: list[str]) -> list[str]:
    """The spec keys where ``run``'s spec.json differs from what the arm's spec file and overrides
    (and the run's seed) give today: non-empty when the spec changed after the run. Keys the run's
    spec.json lacks (fields added since, at their defaults then) do not count."""
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


def arm_runs(claim: Claim, arm: Arm, claim_path: Path, out: Path, seeds: int | None = None) -> ArmRuns:
    """The arm's finished runs the report uses (at the chosen learning rate, with a grid); runs
    made from an earlier version of the arm's spec are left out (``stale``)."""
    folder = Path(out) / "arms" / arm_key(arm, claim_path)
    name = spec_name(arm, claim_path)
    ar = ArmRuns(arm, folder, name)
    base = folder / name
    if claim.lr_grid:
        g = claim.lr_grid
        for v in g.values:
            key = f"{g.key}={_grid_value(v)}"
            first = next(iter(_fresh(_seed_runs(base / key)[:1], arm, claim_path, [key], ar)), None)
            ar.grid[_grid_value(v)] = _last(_records(first), g.select_on) if first else None
            if first:
                ar.grid_runs[_grid_value(v)] = first
        done = {k: v for k, v in ar.grid.items() if v is not None}
        if len(done) < len(g.values):
            ar.problem = (f"arm {arm.name}: the lr grid is not finished ({len(done)} of {len(g.values)} values have "
                          f"a first-seed run with {g.select_on})")
            return ar
        ar.chosen = min(done, key=lambda k: (done[k], float(k)))
        base = base / f"{g.key}={ar.chosen}"
    chosen = [f"{claim.lr_grid.key}={ar.chosen}"] if claim.lr_grid else []
    ar.runs = _fresh(_seed_runs(base), arm, claim_path, chosen, ar)
    if seeds is not None:
        ar.runs = ar.runs[:seeds]
    return ar


# --- running ------------------------------------------------------------------------------------


def _sweep(spec: Path, seeds: int, grid: list[str], sets: list[str], out: Path, parallel, echo, manager) -> int:
    from .. import sweep as sw

    out_dir, points = sw.plan([str(spec)], seeds, grid, sets, out, manager)
    return sw.run(out_dir, points, sw.device_groups(parallel), echo=echo)


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
            key = (arm_key(arm, inst.path), json.dumps(c.lr_grid.model_dump() if c.lr_grid else None), n)
            if key in done:
                continue
            done.add(key)
            spec = resolve_spec(arm.spec, inst.path)
            folder = out / "arms" / key[0]
            echo(f"  arm {arm.name} ({arm.role}): {arm.spec}" + (f" --set {' --set '.join(arm.set)}" if arm.set else "")
                 + f" -> {folder}")
            before = reg.finished_runs(folder)
            if c.lr_grid:
                g = c.lr_grid
                code = _sweep(spec, 1, [f"{g.key}=" + ",".join(_grid_value(v) for v in g.values)], list(arm.set),
                              folder, parallel, echo, manager)
                reg.stamp(folder, before, uses[key[0]])
                if code == EXIT_PREEMPTED:
                    return code
                ar = arm_runs(c, arm, inst.path, out)
                if ar.chosen is None:
                    echo(f"    {ar.problem}")
                    rc = 1
                    continue
                echo(f"    lr grid on the first seed ({g.select_on}): "
                     + ", ".join(f"{k}: {v:.4f}" for k, v in ar.grid.items()) + f" -> {ar.chosen}")
                code = _sweep(spec, n, [f"{g.key}={ar.chosen}"], list(arm.set), folder, parallel, echo, manager)
            else:
                code = _sweep(spec, n, [], list(arm.set), folder, parallel, echo, manager)
            reg.stamp(folder, before, uses[key[0]])  # the runs made now carry the claims' registration hashes
            if code == EXIT_PREEMPTED:
                return code
            rc = rc or code
            ar = arm_runs(c, arm, inst.path, out)
            if ar.runs and not (folder / "params.json").exists():
                _count_params(ar.runs[0], folder / "params.json", echo)
    return rc
