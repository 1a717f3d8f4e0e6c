"""A card's statistics and verdict: the claim's test (:mod:`kinlm_core.stats`), the ablations
against the baseline, the metric's floor, Holm's correction across the cards reported together,
and the verdict with its reason."""

from __future__ import annotations

from pathlib import Path

from .. import stats
from .metrics import _analysis, blimp_counts
from .render import fmt_diff, fmt_p
from .schema import AnalyzerMetric, BlimpMetric, Claim, KeyMetric, TaskAccuracy

VERDICTS = ("supported", "contradicted", "inconclusive", "not testable")


def _null(c: Claim) -> float:
    """The null difference in raw units (treatment - baseline): minus the margin on the claimed side."""
    if c.direction == "higher":
        return -c.test.margin
    if c.direction == "lower":
        return c.test.margin
    return 0.0


def _compare(c: Claim, card: dict, values: dict) -> None:
    tr = c.arm("treatment")
    bl = c.arm("baseline")
    t = c.test
    short = [a for a in card["arms"] if a["role"] in ("treatment", "baseline") and a["n"] < 2]
    if short:
        card["verdict"] = "not testable"
        card["reason"] = ("not run: " + ", ".join(f"{a['name']} has {a['n']} finished run(s) with the metric"
                                                  for a in short) + f"; run `kinlm claims run {c.id}`"
                          + (" --tier gpu" if c.tier == "gpu" else ""))
        return
    try:
        if t.kind == "one_sample":
            cmp = stats.one_sample(values[tr.name], t.value, t.scale, t.alpha)
        elif t.kind == "paired":
            tv, bv = _pair_by_seed(card, tr.name, bl.name, values)
            cmp = stats.paired(tv, bv, _null(c), t.scale, t.alpha)
        else:
            cmp = stats.welch(values[tr.name], values[bl.name], _null(c), t.scale, t.alpha)
    except stats.StatsError as e:
        card["verdict"], card["reason"] = "not testable", str(e)
        return
    card["comparison"] = cmp.as_dict()
    card["difference"], card["ci95"], card["p"] = cmp.difference, list(cmp.ci95), cmp.p
    if bl is not None:
        for a in c.arms:
            if a.role == "ablation":
                try:
                    ab = stats.welch(values[a.name], values[bl.name], 0.0, t.scale, t.alpha)
                    card["ablations"].append({"name": a.name, **ab.as_dict()})
                except stats.StatsError as e:
                    card["ablations"].append({"name": a.name, "error": str(e)})
    card["floor"] = _floor(c, card, values)


def _pair_by_seed(card, tname, bname, values):
    arms = {a["name"]: a for a in card["arms"]}
    tb = dict(zip(arms[bname]["seeds"], values[bname]))
    tv, bv = [], []
    for s, v in zip(arms[tname]["seeds"], values[tname]):
        if s in tb:
            tv.append(v)
            bv.append(tb[s])
    return tv, bv


def _floor(c: Claim, card: dict, values: dict) -> dict | None:
    """Whether each compared arm differs from the metric's floor (None: the metric has none)."""
    alpha = c.test.alpha
    out = {}
    roles = [a for a in card["arms"] if a["role"] in ("treatment", "baseline")]
    if isinstance(c.metric, BlimpMetric):
        for a in roles:
            k = n = 0
            for r in a["runs"]:
                data = _analysis(Path(r), "blimp")
                kn = blimp_counts(data or {}, c.metric.field)
                if kn:
                    k, n = k + kn[0], n + kn[1]
            p = stats.binomial_above_chance(k, n, 0.5) if n else 1.0
            out[a["name"]] = {"chance": 0.5, "correct": k, "pairs": n, "p": p, "differs": n > 0 and p < alpha}
        return {"test": "one-sided binomial test of the arm's pairs, pooled over its seeds (each seed's model scores "
                "the same pairs), against chance 0.5", "arms": out}
    chance = c.metric.chance if isinstance(c.metric, (KeyMetric, AnalyzerMetric, TaskAccuracy)) else None
    if chance is None:
        return None
    for a in roles:
        try:
            cmp = stats.one_sample(values[a["name"]], chance)
            out[a["name"]] = {"chance": chance, "p": cmp.p, "differs": cmp.p < alpha and cmp.difference > 0}
        except stats.StatsError as e:
            out[a["name"]] = {"chance": chance, "p": None, "differs": False, "error": str(e)}
    return {"test": f"one-sample t-test of the arm's values against chance {chance:g}", "arms": out}


def verdict(p_adjusted: float, difference: float, direction: str, margin: float = 0.0, alpha: float = 0.05) -> str:
    """The verdict of a tested claim: ``supported`` when the (Holm-adjusted) p < alpha and the
    difference (treatment - baseline) lies on the claimed side of -margin (lower: of +margin),
    ``contradicted`` when p < alpha on the other side, else ``inconclusive``. ``different`` is
    supported by any significant difference."""
    if not p_adjusted < alpha:
        return "inconclusive"
    if direction == "different":
        return "supported"
    better = difference if direction == "higher" else -difference
    return "supported" if better > -margin else "contradicted"


def decide(cards: list[dict]) -> list[dict]:
    """Holm's correction across the cards' p-values, then each card's verdict (in place)."""
    testable = [c for c in cards if c["verdict"] is None and c["comparison"] is not None]
    floor_out = []
    for c in testable:
        fl = c["floor"]
        if fl is not None and not any(a["differs"] for a in fl["arms"].values()):
            c["verdict"] = "not testable"
            c["reason"] = ("the metric cannot tell the arms from its floor: neither arm differs from chance ("
                           + "; ".join(f"{k}: p = {fmt_p(v['p'])}" for k, v in fl["arms"].items()) + ")")
            floor_out.append(c)
    family = [c for c in testable if c not in floor_out]
    adj = stats.holm([c["p"] for c in family])
    for c, pa in zip(family, adj):
        c["p_adjusted"] = pa
        c["family_size"] = len(family)
        test = c["test"]
        c["verdict"] = verdict(pa, c["difference"], c["direction"], test["margin"], test["alpha"])
        if c["verdict"] == "inconclusive":
            sc = c["comparison"]["scale"]
            c["reason"] = (f"no difference detected; this design detects a difference of "
                           f"{fmt_diff(c['comparison']['detectable'], sc).lstrip('+')} with 80% power "
                           f"(alpha {test['alpha']:g}, unadjusted)")
        elif c["direction"] == "different":
            c["reason"] = "the arms differ"
        elif test["kind"] == "one_sample":
            side = "above" if (c["verdict"] == "supported") == (c["direction"] == "higher") else "below"
            c["reason"] = f"{side} {test['value']:g}"
        elif test["margin"]:
            c["reason"] = (f"within the margin of {fmt_diff(test['margin'], c['comparison']['scale']).lstrip('+')}"
                           if c["verdict"] == "supported" else
                           f"worse by more than the margin of {fmt_diff(test['margin'], c['comparison']['scale']).lstrip('+')}")
        else:
            c["reason"] = "better than the baseline" if c["verdict"] == "supported" else "worse than the baseline"
        if any(f.startswith(("parameters not matched", "not at equal tokens")) for f in c["fairness"]):
            c["reason"] += " (the arms are not matched: see Fairness)"
    return cards
