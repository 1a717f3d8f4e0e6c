"""Manipulation checks (#30 item 6): did the treatment do what its method says it does?

A claim's ``manipulation_checks`` (:class:`.schema.ManipulationCheck`) each read a figure from every
run of the treatment and of the compared arm (the baseline unless ``arm`` names another), e.g. the
trajectory analyzer's acceleration of a penalised layer, and test it as the claim's arms are tested:
paired by seed where both arms ran the same seeds, else Welch, two-sided at the claim's alpha
(unadjusted: the verdict needs both this and the claim's own test, an intersection-union test, so no
correction is due). A check **passes** when the difference is significant on its direction.

The rule (:func:`apply_manipulation`, after the controls): a "supported" verdict whose check did not
pass, or could not be computed, becomes "inconclusive": without the manipulation the claim's effect
cannot be put down to the method.
"""

from __future__ import annotations

from pathlib import Path

from .. import stats
from .metrics import metric_value
from .render import _num, fmt_p
from .schema import Claim


def _values(metric, runs: list[str]) -> tuple[list, list[str]]:
    got = [metric_value(metric, Path(r)) for r in runs]
    return [v for v, _ in got], [n for v, n in got if v is None and n]


def _seeded(arm: dict, values: list) -> list[tuple]:
    return [(s, v) for s, v in zip(arm["seeds"], values) if v is not None]


def check_row(c: Claim, check, card: dict) -> dict:
    """One check's row: both arms' values, the test (paired by seed where the seeds are the same)
    and ``passed`` (True, False, or None when it could not be computed, with ``error``)."""
    arms = {a["name"]: a for a in card["arms"]}
    tr = next(a for a in card["arms"] if a["role"] == "treatment")
    other = arms[check.arm or next(a["name"] for a in card["arms"] if a["role"] == "baseline")]
    tv, tprob = _values(check.metric, tr["runs"])
    ov, oprob = _values(check.metric, other["runs"])
    row = {"name": check.name, "label": check.label or check.name, "metric": check.metric.label(),
           "direction": check.direction, "against": other["name"], "why": check.why,
           "values": {tr["name"]: tv, other["name"]: ov}, "passed": None, "test": None,
           "problems": (tprob + oprob)[:2]}
    t, o = _seeded(tr, tv), _seeded(other, ov)
    ts, os_ = [s for s, _ in t], [s for s, _ in o]
    same = bool(ts) and None not in ts and sorted(ts) == sorted(os_)
    try:
        if same:
            ob = dict(o)
            cmp = stats.paired([v for _, v in sorted(t)], [ob[s] for s, _ in sorted(t)], 0.0, "absolute", c.test.alpha)
        else:
            cmp = stats.welch([v for _, v in t], [v for _, v in o], 0.0, "absolute", c.test.alpha)
    except stats.StatsError as e:
        row["error"] = f"{len(t)} and {len(o)} value(s): {e}"
        return row
    side = True if check.direction == "different" else (cmp.difference > 0) == (check.direction == "higher")
    row["test"] = cmp.as_dict()
    row["passed"] = bool(cmp.p < c.test.alpha and side)
    return row


def evaluate_manipulation(c: Claim, card: dict) -> None:
    """The checks' rows of a card (``card["manipulation"]``); needs the arms' runs and seeds."""
    rows = []
    if any(a["n"] for a in card["arms"] if a["role"] == "treatment"):
        rows = [check_row(c, m, card) for m in c.manipulation_checks]
    else:
        rows = [{"name": m.name, "label": m.label or m.name, "metric": m.metric.label(), "direction": m.direction,
                 "against": m.arm, "why": m.why, "values": {}, "passed": None, "test": None, "problems": [],
                 "error": "no runs yet"} for m in c.manipulation_checks]
    for r in rows:
        card["problems"] += r["problems"]
    card["manipulation"] = rows


def apply_manipulation(cards: list[dict]) -> list[dict]:
    """After the verdicts and the controls: a "supported" claim with a check that did not pass (or
    could not be computed) becomes "inconclusive"."""
    for card in cards:
        if card["verdict"] != "supported":
            continue
        bad = [r for r in card.get("manipulation", []) if not r["passed"]]
        if bad:
            card["verdict"] = "inconclusive"
            card["reason"] = "the manipulation check did not pass: " + "; ".join(check_text(r) for r in bad)
    return cards


def check_text(r: dict) -> str:
    """A check with its figures, for the card and for a verdict's reason."""
    head = f"{r['label']} ({r['metric']}, the treatment {r['direction']} than {r['against']})"
    if r.get("error"):
        return f"{head}: could not be computed: {r['error']}"
    g = r["test"]
    means = "; ".join(f"{n} {_num(sum(v for v in vs if v is not None) / max(1, sum(v is not None for v in vs)))}"
                      for n, vs in r["values"].items())
    return (f"{head}: {means}; treatment - {r['against']} {_num(g['difference'])}, 95% CI [{_num(g['ci95'][0])}, "
            f"{_num(g['ci95'][1])}], p = {fmt_p(g['p'])} ({'paired by seed' if g['test'] == 'paired' else 'Welch'}, "
            f"unadjusted): {'passed' if r['passed'] else 'not passed'}")
