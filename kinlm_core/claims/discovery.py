"""Which claims there are: those the installed plugins register (``kinlm_register_claims``) and
claim files named on the command line; the spec file each arm names, and the checks beyond the
schema (every arm's spec loads with its overrides)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .schema import Claim, ClaimError, load_claim

log = logging.getLogger("kinlm.claims")

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Installed:
    claim: Claim
    path: Path  # the claim file
    dist: str  # the distribution that registered it ("" for a file named on the command line)


def _claim_files(paths) -> list[Path]:
    out = []
    for p in paths or []:
        p = Path(p)
        out += sorted(p.glob("*.json")) if p.is_dir() else [p]
    return out


def installed(manager=None) -> tuple[list[Installed], list[str]]:
    """Every claim the installed plugins register (``kinlm_register_claims``), and the problems
    (a plugin whose hook fails, a bad claim file, two claims with one id), each on one line. A
    bad claim is reported and left out; the others are kept."""
    if manager is None:
        from ..plugins import get_manager

        manager = get_manager()
    found: list[Installed] = []
    problems: list[str] = []
    for impl in manager.pm.hook.kinlm_register_claims.get_hookimpls():
        dist = impl.plugin_name
        try:
            paths = _claim_files(impl.function())
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the others
            problems.append(f"{dist}: kinlm_register_claims failed: {type(e).__name__}: {e}")
            continue
        for p in paths:
            try:
                found.append(Installed(load_claim(p), p, dist))
            except ClaimError as e:
                problems += [f"{dist}: {m}" for m in e.problems]
    seen: dict[str, Installed] = {}
    unique = []
    for c in found:
        prev = seen.get(c.claim.id)
        if prev is not None:
            problems.append(f"claim '{c.claim.id}' is registered twice: {prev.path} ({prev.dist}) and {c.path} "
                            f"({c.dist})")
            continue
        seen[c.claim.id] = c
        unique.append(c)
    return sorted(unique, key=lambda c: c.claim.id), problems


def select(names, manager=None, all_installed: bool = False) -> list[Installed]:
    """The claims named by ids of installed claims or paths of claim files (ClaimError for a name
    that is neither, with the nearest ids)."""
    import difflib

    have, skipped = installed(manager)
    for p in skipped:  # a plugin's broken claim file: left out, said once
        log.warning("kinlm claims: %s", p)
    by_id = {c.claim.id: c for c in have}
    if all_installed:
        return have
    out, problems = [], []
    for n in names:
        if n in by_id:
            out.append(by_id[n])
        elif Path(n).is_file():
            try:
                out.append(Installed(load_claim(n), Path(n), ""))
            except ClaimError as e:
                problems += e.problems
        else:
            near = difflib.get_close_matches(n, list(by_id), n=3)
            problems.append(f"kinlm claims: {n}: no installed claim with this id and no such file"
                            + (f" (did you mean {', '.join(near)}?)" if near else " (`kinlm claims` lists them)"))
    if problems:
        raise ClaimError(problems)
    return out


def resolve_spec(spec: str, claim_path: Path) -> Path:
    """An arm's spec file: absolute; else relative to the claim file's folder, its plugin package
    (the folder above ``claims/``), the current folder, then the kinlm repository."""
    p = Path(spec)
    if p.is_absolute():
        return p
    here = Path(claim_path).resolve().parent
    bases = [here, here.parent if here.name == "claims" else here, Path.cwd(), REPO]
    for b in bases:
        if (b / p).is_file():
            return b / p
    return REPO / p


def check(inst: Installed, manager=None) -> list[str]:
    """Problems of a validated claim beyond its schema: every arm's spec must load with its
    overrides (and with each lr grid value), and evaluate on the validation split: an arm with
    ``eval.split: "test"`` would pick its learning rate and early-stop on the test split."""
    from ..spec import SpecError, load_spec

    problems = []
    c = inst.claim
    for i, arm in enumerate(c.arms):
        sp = resolve_spec(arm.spec, inst.path)
        where = f"{inst.path}: arms[{i}] ({arm.name})"
        if not sp.is_file():
            problems.append(f"{where}: spec {arm.spec}: no such file")
            continue
        sets = list(arm.set)
        if c.lr_grid:
            sets.append(f"{c.lr_grid.key}={c.lr_grid.values[0]}")
        try:
            spec = load_spec(sp, sets, manager)
        except SpecError as e:
            problems += [f"{where}: {m}" for m in e.problems]
            continue
        except (OSError, ValueError) as e:
            problems.append(f"{where}: {e}")
            continue
        if spec.eval.split == "test":
            src = next((f"its set {s}" for s in reversed(arm.set) if s.split("=", 1)[0].strip() in ("eval.split", "eval")),
                       f"its spec {arm.spec}")
            problems.append(f"{where}: eval.split \"test\" (from {src}) is refused: a claim's arm evaluates on the "
                            "validation split during training (its learning rate is picked and it may stop early "
                            "there), so the test split stays unseen")
    return problems


def listing(items: list[Installed]) -> list[dict]:
    return [{"id": i.claim.id, "title": i.claim.title, "plugin": i.dist, "tier": i.claim.tier,
             "metric": i.claim.metric.label(), "direction": i.claim.direction, "test": i.claim.test.kind,
             "arms": [a.name for a in i.claim.arms], "seeds": i.claim.seeds,
             "controls": [f"{c.name} ({c.role})" for c in i.claim.controls],
             "manipulation_checks": [f"{m.name} ({m.direction})" for m in i.claim.manipulation_checks],
             "lr_grid": i.claim.lr_grid.values if i.claim.lr_grid else None,
             "budget_minutes": i.claim.budget_minutes, "file": str(i.path)} for i in items]
