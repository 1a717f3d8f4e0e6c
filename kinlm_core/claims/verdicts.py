"""A card's statistics and verdict: the test the design allows (:mod:`kinlm_core.stats`), the
ablations against the baseline, the metric's floor, Holm's correction within each claim's family
(Benjamini-Hochberg's FDR across the page beside it), and the verdict with its reason.

The test (:func:`_design`): ``test.kind`` ``auto`` pairs the arms by seed when both ran the same
seeds (a seed fixes a run's initialisation and data order), else Welch; ``one_sample`` tests the
treatment against a fixed value. The hypothesis (:func:`hypothesis`): ``superiority`` (direction
higher / lower, no margin; two-sided, the sign decides), ``difference`` (direction different),
``non-inferiority`` (higher / lower with a margin: the one-sided test of TOST's claimed side),
``equivalence`` (within +-margin: TOST) and ``threshold`` (one-sample). Every metric is one number
per seed before any test: item-level metrics (BLiMP's pairs) are never pooled across seeds."""

from __future__ import annotations

from .. import stats
from .render import fmt_diff, fmt_p
from .schema import AnalyzerMetric, BlimpMetric, Claim, KeyMetric, TaskAccuracy

VERDICTS = ("supported", "contradicted", "inconclusive", "not testable")
TEST_NAMES = {"welch": "Welch's t-test", "paired": "paired t-test by seed", "one_sample": "one-sample t-test"}


def hypothesis(direction: str, kind: str, margin: float) -> str:
    """What the claim's test asks: superiority, difference, non-inferiority, equivalence or threshold."""
    if kind == "one_sample":
        return "threshold"
    if direction == "equivalent":
        return "equivalence"
    if direction == "different":
        return "difference"
    return "non-inferiority" if margin else "superiority"


def _design(c: Claim, card: dict, values: dict, name: str, base: str) -> tuple[str, str, list, list]:
    """The two-arm test for arms ``name`` and ``base``: (kind, why, treatment values, baseline values),
    paired values in seed order when the test pairs."""
    arms = {a["name"]: a for a in card["arms"]}
    ts, bs = arms[name]["seeds"], arms[base]["seeds"]
    same = bool(ts) and None not in ts and None not in bs and sorted(ts) == sorted(bs)
    kind = c.test.kind
    if kind == "auto":
        kind = "paired" if same else "welch"
        why = (f"auto: both arms ran seeds {', '.join(map(str, sorted(ts)))}, and a seed fixes a run's initialisation "
               "and data order, so the runs pair by seed" if same else
               "auto: the arms did not run the same seeds (" + f"{', '.join(map(str, ts))} and {', '.join(map(str, bs))}"
               + "), so they are independent samples")
    else:
        why = f"the claim file asks for {kind}"
    if kind == "paired":
        tv, bv = _pair_by_seed(card, name, base, values)
        return kind, why, tv, bv
    return kind, why, values[name], values[base]


def _compare(c: Claim, card: dict, values: dict) -> None:
    tr = c.arm("treatment")
    bl = c.arm("baseline")
    t = c.test
    card["family"] = c.family()
    short = [a for a in card["arms"] if a["role"] in ("treatment", "baseline") and a["n"] < 2]
    if short:
        card["verdict"] = "not testable"
        card["reason"] = ("not run: " + ", ".join(f"{a['name']} has {a['n']} finished run(s) with the metric"
                                                  for a in short) + f"; run `kinlm claims run {c.id}`"
                          + (" --tier gpu" if c.tier == "gpu" else ""))
        return
    hyp = hypothesis(c.direction, t.kind, t.margin)
    design = {"hypothesis": hyp, "test": t.kind, "why": "", "correlation": None, "p_against": None}
    try:
        if t.kind == "one_sample":
            cmp = stats.one_sample(values[tr.name], t.value, t.scale, t.alpha)
            design["why"] = "one arm against a fixed value"
        else:
            kind, design["why"], tv, bv = _design(c, card, values, tr.name, bl.name)
            design["test"] = kind
            test = stats.paired if kind == "paired" else stats.welch
            cmp = test(tv, bv, 0.0, t.scale, t.alpha)
            design["correlation"] = cmp.correlation
    except stats.StatsError as e:
        card["verdict"], card["reason"] = "not testable", str(e)
        return
    p = cmp.p
    if hyp == "non-inferiority":  # the claimed side of the margin: one-sided (TOST's half)
        bound, claimed_up = (-t.margin, True) if c.direction == "higher" else (t.margin, False)
        p = stats.one_sided_p(cmp, bound, claimed_up)
        design["p_against"] = stats.one_sided_p(cmp, bound, not claimed_up)
    elif hyp == "equivalence":
        p = stats.tost(cmp, t.margin)
        design["p_against"] = min(stats.one_sided_p(cmp, t.margin, True), stats.one_sided_p(cmp, -t.margin, False))
    card["design"] = design
    card["comparison"] = cmp.as_dict()
    card["difference"], card["ci95"], card["p"] = cmp.difference, list(cmp.ci95), p
    if bl is not None:
        for a in c.arms:
            if a.role == "ablation":
                try:
                    kind, _, av, bv = _design(c, card, values, a.name, bl.name)
                    test = stats.paired if kind == "paired" else stats.welch
                    card["ablations"].append({"name": a.name, **test(av, bv, 0.0, t.scale, t.alpha).as_dict()})
                except stats.StatsError as e:
                    card["ablations"].append({"name": a.name, "error": str(e)})
    card["floor"] = _floor(c, card, values)


def _pair_by_seed(card, tname, bname, values):
    arms = {a["name"]: a for a in card["arms"]}
    tb = dict(zip(arms[bname]["seeds"], values[bname]))
    tv, bv = [], []
    for s, v in sorted(zip(arms[tname]["seeds"], values[tname]), key=lambda x: (x[0] is None, x[0] or 0)):
        if s in tb:
            tv.append(v)
            bv.append(tb[s])
    return tv, bv


def _floor(c: Claim, card: dict, values: dict) -> dict | None:
    """Whether each compared arm differs from the metric's floor (None: the metric has none), by a
    one-sample t-test of its per-seed values: BLiMP (chance 0.5) is each seed's accuracy, one
    number per seed, so pairs are never pooled across seeds."""
    alpha = c.test.alpha
    chance = 0.5 if isinstance(c.metric, BlimpMetric) else \
        c.metric.chance if isinstance(c.metric, (KeyMetric, AnalyzerMetric, TaskAccuracy)) else None
    if chance is None:
        return None
    out = {}
    for a in [a for a in card["arms"] if a["role"] in ("treatment", "baseline")]:
        try:
            cmp = stats.one_sample(values[a["name"]], chance, power=None)
            out[a["name"]] = {"chance": chance, "p": cmp.p, "n": cmp.n[0], "differs": cmp.p < alpha and cmp.difference > 0}
        except stats.StatsError as e:
            out[a["name"]] = {"chance": chance, "p": None, "differs": False, "error": str(e)}
    return {"test": f"one-sample t-test of the arm's per-seed values (one number per seed) against chance {chance:g}",
            "arms": out}


def verdict(p_adjusted: float, difference: float, direction: str, margin: float = 0.0, alpha: float = 0.05) -> str:
    """The verdict of a two-sided test (superiority, difference, threshold): ``supported`` when the
    (Holm-adjusted) p < alpha and the difference (treatment - baseline) lies on the claimed side of
    -margin (lower: of +margin), ``contradicted`` when p < alpha on the other side, else
    ``inconclusive``. ``different`` is supported by any significant difference. (Non-inferiority
    and equivalence are decided by their one-sided tests in :func:`decide`.)"""
    if not p_adjusted < alpha:
        return "inconclusive"
    if direction == "different":
        return "supported"
    better = difference if direction == "higher" else -difference
    return "supported" if better > -margin else "contradicted"


def _detectable(card: dict, level: float) -> tuple[float, str]:
    """The smallest effect the design detects with 80% power at ``level`` (the Holm-adjusted alpha),
    for the test used, and what it means."""
    import math

    cmp, hyp, sc = card["comparison"], card["design"]["hypothesis"], card["comparison"]["scale"]
    welch = card["design"]["test"] == "welch" and all(cmp.get("sd_test") or [None])
    kind = {"equivalence": "tost", "non-inferiority": "one-sided"}.get(hyp, "two-sided")
    if welch:  # its df is random: integrate over both sample variances (stats.welch_power)
        d = stats.welch_detectable(*cmp["sd_test"], *cmp["n"], level, kind=kind)
    elif hyp == "equivalence":
        d = stats.equivalence_detectable(cmp["se"], cmp["df"], level)
    else:
        d = stats.detectable(cmp["se"], cmp["df"], level, sides=1 if hyp == "non-inferiority" else 2)
    what = {"tost": "shows equivalence with 80% power, when the arms are equal, only for a margin of +-{}",
            "one-sided": "detects with 80% power a true difference lying {} beyond the margin on the claimed side",
            "two-sided": "detects a true difference of {} with 80% power"}[kind]
    d = math.expm1(d) if sc == "log" else d
    return d, what.format(fmt_diff(d, sc).lstrip("+"))


def decide(cards: list[dict]) -> list[dict]:
    """Holm's correction within each claim's family, Benjamini-Hochberg's q across the page, then
    each card's verdict (in place)."""
    testable = [c for c in cards if c["verdict"] is None and c["comparison"] is not None]
    floor_out = []
    for c in testable:
        fl = c["floor"]
        if fl is not None and not any(a["differs"] for a in fl["arms"].values()):
            c["verdict"] = "not testable"
            c["reason"] = ("the metric cannot tell the arms from its floor: neither arm differs from chance ("
                           + "; ".join(f"{k}: p = {fmt_p(v['p'])}" for k, v in fl["arms"].items()) + ")")
            floor_out.append(c)
    tested = [c for c in testable if c not in floor_out]
    for c, q in zip(tested, stats.bh([c["p"] for c in tested])):
        c["q_bh"], c["page_size"] = q, len(tested)
    families: dict[str, list[dict]] = {}
    for c in tested:
        families.setdefault(c["family"], []).append(c)
    for members in families.values():
        alpha = min(c["test"]["alpha"] for c in members)
        ps = [c["p"] for c in members]
        for c, pa, level in zip(members, stats.holm(ps), stats.holm_levels(ps, alpha)):
            c["p_adjusted"], c["alpha_adjusted"], c["family_size"] = pa, level, len(members)
            _verdict(c, pa, level, alpha)
    return cards


def _verdict(c: dict, pa: float, level: float, alpha: float) -> None:
    test, design, sc = c["test"], c["design"], c["comparison"]["scale"]
    hyp = design["hypothesis"]
    margin = fmt_diff(test["margin"], sc).lstrip("+")
    if hyp in ("non-inferiority", "equivalence"):
        c["verdict"] = ("supported" if pa < alpha else
                        "contradicted" if design["p_against"] < level else "inconclusive")
    else:
        c["verdict"] = verdict(pa, c["difference"], c["direction"], 0.0, alpha)
    c["detectable_adjusted"], what = _detectable(c, level)
    if c["verdict"] == "inconclusive":
        lo, hi = (fmt_diff(x, sc) for x in c["ci95"])
        c["reason"] = (f"undecided at the adjusted level {level:.3g} (Holm within {c['family']}, "
                       f"{c['family_size']} claim{'s' if c['family_size'] > 1 else ''}): 95% CI [{lo}, {hi}]; "
                       f"this design ({TEST_NAMES[design['test']]}) {what}")
    elif hyp == "difference":
        c["reason"] = "the arms differ"
    elif hyp == "threshold":
        side = "above" if (c["verdict"] == "supported") == (c["direction"] == "higher") else "below"
        c["reason"] = f"{side} {test['value']:g}"
    elif hyp == "equivalence":
        c["reason"] = (f"equivalent within +-{margin} (TOST)" if c["verdict"] == "supported" else
                       f"outside the +-{margin} margin")
    elif hyp == "non-inferiority":
        c["reason"] = (f"within the margin of {margin}" if c["verdict"] == "supported" else
                       f"worse by more than the margin of {margin}")
    else:
        c["reason"] = "better than the baseline" if c["verdict"] == "supported" else "worse than the baseline"
    if any(f.startswith(("parameters not matched", "not at equal tokens")) for f in c["fairness"]):
        c["reason"] += " (the arms are not matched: see Fairness)"
