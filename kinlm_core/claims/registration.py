"""Pre-registration: a hash of the fields a claim fixes before its runs, recorded beside every run
`kinlm claims run` trains for it, and what the card says of it.

:func:`registration_hash` hashes the pre-registered fields (:data:`REGISTERED`: the source, the arms,
the metric, the direction, the test, the seeds, the lr grid, the ``registration`` block and the
``controls`` and ``manipulation_checks``, which can change a verdict as much as the test can; a claim
without them hashes as it did before they existed). When
`kinlm claims run` finishes a run that was not finished before, it writes ``claims.json`` beside the
run's result.json: the hash of every claim that uses the arm, by claim id (:func:`stamp`). On the
card (:func:`status`) a claim is **pre-registered** only when its registration says it was written
before its runs (``before_runs``) and every run its verdict uses carries today's hash: a run with
another hash means the claim was edited after that run existed ("changed"), a run with none was
made before the claim was registered (or outside `kinlm claims run`)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from .schema import Claim

REGISTERED = ("source", "arms", "metric", "direction", "test", "seeds", "lr_grid", "registration", "controls",
              "manipulation_checks")
STAMP = "claims.json"


def registered_fields(claim: Claim) -> dict:
    """The pre-registered fields of a claim, as JSON (defaults filled in; no ``controls`` or
    ``manipulation_checks`` key when there are none, so that such a claim keeps its hash)."""
    d = claim.model_dump(mode="json", include=set(REGISTERED))
    for key in ("controls", "manipulation_checks"):
        if not d[key]:
            del d[key]
    return d


def registration_hash(claim: Claim) -> str:
    """A short sha256 of the pre-registered fields (canonical JSON)."""
    text = json.dumps(registered_fields(claim), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_runs(folder: Path) -> set[Path]:
    """Every finished run (a result.json with status finished) under an arm's folder."""
    out = set()
    for f in Path(folder).rglob("result.json"):
        try:
            if json.loads(f.read_text()).get("status") == "finished":
                out.add(f.parent)
        except (OSError, ValueError):
            continue
    return out


def stamp(folder: Path, before: set[Path], claims: dict[str, str]) -> int:
    """Write ``claims`` ({claim id: hash}) into ``claims.json`` of every run under ``folder`` that is
    finished now but was not in ``before``; returns how many runs were stamped."""
    n = 0
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for run in sorted(finished_runs(folder) - before):
        f = run / STAMP
        try:
            data = json.loads(f.read_text()) if f.exists() else {}
        except ValueError:
            data = {}
        for cid, h in claims.items():
            data.setdefault(cid, {"hash": h, "at": now})
        f.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        n += 1
    return n


def _stamp_of(run: Path, cid: str) -> str | None:
    from . import archive

    data = archive.read_json(Path(run) / STAMP)
    try:
        return data.get(cid, {}).get("hash")
    except AttributeError:
        return None


def status(claim: Claim, runs: list) -> dict:
    """What the card says of the claim's registration, given the runs its verdict uses:
    ``state`` is one of ``not registered``, ``no runs``, ``changed``, ``registered after runs``,
    ``registered after exploratory runs`` and ``pre-registered`` (only that one has
    ``pre_registered`` true), ``text`` a sentence for the card."""
    h = registration_hash(claim)
    reg = claim.registration
    out = {"hash": h, "pre_registered": False, "changed_runs": [], "unstamped_runs": []}
    if reg is None:
        return {**out, "state": "not registered",
                "text": "Not pre-registered: the claim file has no registration block."}
    for r in runs:
        got = _stamp_of(r, claim.id)
        if got is None:
            out["unstamped_runs"].append(str(r))
        elif got != h:
            out["changed_runs"].append(f"{r} ({got})")
    n = len(runs)
    when = f"registered {reg.date}"
    if not runs:
        return {**out, "state": "no runs", "text": f"Registration {h} ({when}); no runs yet."}
    if out["changed_runs"]:
        return {**out, "state": "changed",
                "text": f"Changed: the claim's pre-registered fields were edited after {len(out['changed_runs'])} of "
                        f"its {n} runs existed (hash today {h}; the runs carry another), so the verdict is not "
                        "pre-registered."}
    if out["unstamped_runs"]:
        return {**out, "state": "registered after runs",
                "text": f"Not pre-registered: {len(out['unstamped_runs'])} of the {n} runs the verdict uses carry no "
                        f"record of this claim's registration ({h}, {when}): they were made before it (or outside "
                        "`kinlm claims run`)."}
    if reg.status == "after_exploratory_runs":
        return {**out, "state": "registered after exploratory runs",
                "text": f"Registered after exploratory runs ({h}, {when}): its runs were made after the registration, "
                        "but the design was written after earlier exploratory runs on other seeds, so the verdict "
                        "is not called pre-registered."}
    return {**out, "state": "pre-registered", "pre_registered": True,
            "text": f"Pre-registered ({h}, {when}): every run the verdict uses was made after the registration and "
                    "carries its hash."}
