"""`kinlm claims plan`: a claim's pre-registered design, printed before anything trains: the
fields, the seeds, the arms and controls, the test the design allows, the level after Holm within
its family, and the power: the smallest effect detectable with the planned power and the power at
the effect of interest, estimated from a pilot's spread (the claim's finished runs under OUT that
the report would use: its verdict seeds, e.g. a pilot at fewer steps in another OUT) when there is one, else what a pilot would have to show."""

from __future__ import annotations

import json
import math

from .. import stats
from .card import evaluate
from .discovery import Installed, resolve_spec
from .registration import registration_hash
from .verdicts import TEST_NAMES, hypothesis


def _spec_seed(inst: Installed, arm) -> int | None:
    for s in arm.set:
        if s.startswith("seed="):
            return int(s.split("=", 1)[1])
    try:
        return json.loads(resolve_spec(arm.spec, inst.path).read_text()).get("seed")
    except (OSError, ValueError, AttributeError):
        return None


def _planned_test(inst: Installed) -> tuple[str, str]:
    """The test the runner's seeds will allow: every arm runs seeds S..S+n-1 of its spec's seed S."""
    c = inst.claim
    if c.test.kind != "auto":
        return c.test.kind, "the claim file asks for it"
    if c.registration:
        return "paired", (f"every compared arm runs the registered verdict seeds "
                          f"{', '.join(map(str, c.registration.verdict_seeds))}, so the runs pair by seed")
    starts = {_spec_seed(inst, a) for a in c.arms if a.role in ("treatment", "baseline")}
    if len(starts) == 1 and None not in starts:
        return "paired", f"every compared arm runs the seeds from {starts.pop()} on, so the runs pair by seed"
    return "welch", "the compared arms start from different seeds"


def _logs(xs, scale):
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return [math.log(x) for x in xs if x > 0] if scale == "log" else xs


def _sd(xs):
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _pilot(inst: Installed, out, kind: str) -> dict | None:
    """The spread of the claim's finished runs under ``out`` (test units): the per-seed paired
    differences' sd (paired), each arm's sd (Welch), the treatment's sd (one-sample); None with
    fewer than 2 values where a spread is needed."""
    c = inst.claim
    card = evaluate(inst, out)
    arms = {a["role"]: a for a in card["arms"] if a["role"] in ("treatment", "baseline")}
    sc = c.test.scale
    tr = arms["treatment"]
    if kind == "one_sample":
        sd = _sd(_logs(tr["values"], sc))
        return None if sd is None else {"sd": sd, "runs": tr["n"]}
    bl = arms["baseline"]
    if kind == "paired":
        tb = dict(zip(bl["seeds"], bl["values"]))
        pairs = [(v, tb[s]) for s, v in zip(tr["seeds"], tr["values"]) if s in tb and v is not None and tb[s] is not None]
        d = [a - b for a, b in zip(_logs([a for a, _ in pairs], sc), _logs([b for _, b in pairs], sc))]
        sd = _sd(d)
        return None if sd is None else {"sd_diff": sd, "pairs": len(d)}
    st, sb = _sd(_logs(tr["values"], sc)), _sd(_logs(bl["values"], sc))
    return None if st is None or sb is None else {"sd": [st, sb], "runs": [tr["n"], bl["n"]]}


def _se_df(kind: str, pilot: dict, n: int) -> tuple[float, float]:
    if kind == "paired":
        return pilot["sd_diff"] / math.sqrt(n), n - 1
    if kind == "one_sample":
        return pilot["sd"] / math.sqrt(n), n - 1
    va, vb = (s ** 2 / n for s in pilot["sd"])
    se = math.sqrt(va + vb)
    return se, ((va + vb) ** 2 / ((va ** 2 + vb ** 2) / (n - 1)) if se > 0 else 2 * (n - 1))


def _kind(hyp: str) -> str:
    return {"equivalence": "tost", "non-inferiority": "one-sided"}.get(hyp, "two-sided")


def _mde(hyp: str, test: str, se: float, df: float, level: float, power: float, welch=None) -> float:
    """The smallest effect (test units) detected with ``power`` at ``level``; ``welch``: (sd_t, sd_b, n)."""
    if test == "welch" and welch:
        sd_t, sd_b, n = welch
        return stats.welch_detectable(sd_t, sd_b, n, n, level, power, _kind(hyp))
    if hyp == "equivalence":
        return stats.equivalence_detectable(se, df, level, power)
    return stats.detectable(se, df, level, power, sides=1 if hyp == "non-inferiority" else 2)


def _power_at(hyp: str, test: str, effect: float, se: float, df: float, level: float, welch=None) -> float:
    if test == "welch" and welch:
        sd_t, sd_b, n = welch
        return stats.welch_power(effect, sd_t, sd_b, n, n, level, _kind(hyp))
    if hyp == "equivalence":  # the margin shown at a true difference 0
        return stats.equivalence_power(effect, se, df, level)
    return stats.power(effect, se, df, level, sides=1 if hyp == "non-inferiority" else 2)


def plan(inst: Installed, out, family_size: int) -> dict:
    """The design of one claim (see the module docstring); ``family_size``: the claims in its family."""
    c = inst.claim
    reg = c.registration
    kind, why = _planned_test(inst) if c.test.kind != "one_sample" else ("one_sample", "one arm against a fixed value")
    hyp = hypothesis(c.direction, c.test.kind, c.test.margin)
    n = len(reg.verdict_seeds) if reg else c.seeds
    power = reg.planned_power if reg else stats.POWER
    level = c.test.alpha / family_size  # Holm's strictest step: the level the plan must hold at
    effect = (reg.effect_of_interest if reg and reg.effect_of_interest else c.test.margin or None)
    if effect is None and c.source.figure is not None and c.source.figure.compare == "difference":
        effect = abs(c.source.figure.value)
    log = c.test.scale == "log"
    to_units = math.expm1 if log else (lambda x: x)
    d = {"id": c.id, "hash": registration_hash(c), "registration": reg.model_dump() if reg else None,
         "source": c.source.model_dump(), "metric": c.metric.label(), "direction": c.direction, "hypothesis": hyp,
         "test": kind, "why": why, "scale": c.test.scale, "margin": c.test.margin, "alpha": c.test.alpha,
         "family": c.family(), "family_size": family_size, "alpha_holm_strictest": level, "verdict_seeds": n,
         "planned_power": power, "effect_of_interest": effect, "arms": [a.model_dump() for a in c.arms],
         "controls": [x.model_dump(mode="json") for x in c.controls],
         "manipulation_checks": [x.model_dump(mode="json") for x in c.manipulation_checks],
         "tier": c.tier, "budget_minutes": c.budget_minutes,
         "lr_grid": c.lr_grid.values if c.lr_grid else None, "pilot": None, "detectable": None, "power": None}
    try:
        pilot = _pilot(inst, out, kind)
    except Exception as e:  # noqa: BLE001 - the plan prints what it can; a broken run folder is said
        pilot, d["pilot_problem"] = None, str(e)
    if pilot is not None:
        se, df = _se_df(kind, pilot, n)
        w = (*pilot["sd"], n) if kind == "welch" else None
        d["pilot"] = pilot
        d["detectable"] = to_units(_mde(hyp, kind, se, df, level, power, w))
        if effect is not None:
            d["power"] = _power_at(hyp, kind, math.log1p(effect) if log else effect, se, df, level, w)
    else:  # in units of the spread sigma (of the per-seed differences for a paired test)
        d["detectable_in_sd"] = _mde(hyp, kind, 1 / math.sqrt(n), n - 1, level, power, (1.0, 1.0, n))
    return d


def _test_units(x: float, scale: str) -> float:
    return math.log1p(x) if scale == "log" else x


def plan_text(d: dict) -> str:
    """The plan as the terminal shows it."""
    reg = d["registration"]
    sc = d["scale"]

    def u(x):
        return f"{100 * x:.1f}%" if sc == "log" else f"{x:.4g}"

    lines = [f"{d['id']}  registration {d['hash']}" + (f" ({reg['date']}, {reg['status'].replace('_', ' ')})" if reg
                                                        else " (no registration block: not pre-registered)")]
    if reg:
        lines.append(f"  source: \"{reg['quote']}\" ({reg['quote_where']})")
    else:
        lines.append(f"  source: {d['source']['statement']} ({d['source']['where']})")
    lines.append(f"  metric: {d['metric']}; direction: {d['direction']}; hypothesis: {d['hypothesis']}; scale {sc}")
    lines.append(f"  test: {TEST_NAMES[d['test']]} ({d['why']})")
    lines.append(f"  margin: {u(d['margin']) if d['margin'] else '0'}" + (f" (why: {reg['margin_reason']})" if reg else ""))
    lines.append(f"  family: {d['family']}, {d['family_size']} claim{'s' if d['family_size'] > 1 else ''}"
                 + (f" ({reg['family_reason']})" if reg else "")
                 + f"; alpha {d['alpha']:g}, after Holm between {d['alpha_holm_strictest']:.3g} (the smallest p of the "
                 f"family) and {d['alpha']:g}; the plan holds at {d['alpha_holm_strictest']:.3g}")
    if reg:
        both = sorted(set(reg["tuning_seeds"]) & set(reg["verdict_seeds"]))
        lines.append(f"  seeds: tuning {', '.join(map(str, reg['tuning_seeds'])) or '-'}; verdict "
                     f"{', '.join(map(str, reg['verdict_seeds']))}"
                     + (f" (seed {', '.join(map(str, both))} both tunes and decides)" if both else ""))
    else:
        lines.append(f"  seeds: {d['verdict_seeds']} per arm")
    lines.append("  arms: " + "; ".join(f"{a['name']} ({a['role']}) {a['spec']}" + "".join(f" {s}" for s in a["set"])
                                      for a in d["arms"]) + (f"; lr grid {d['lr_grid']}" if d["lr_grid"] else ""))
    if d["controls"]:
        lines.append("  controls: " + "; ".join(_control_words(x) for x in d["controls"]))
    if d.get("manipulation_checks"):
        lines.append("  manipulation checks: " + "; ".join(
            f"{m['name']} (the treatment's {_metric_words(m['metric'])} {m['direction']} than "
            f"{m['arm'] or 'the baseline'}'s)" for m in d["manipulation_checks"]))
    pw = d["planned_power"]
    what = {"equivalence": "the smallest margin it shows equivalence within (arms truly equal)",
            "non-inferiority": "the smallest true distance from the margin, on the claimed side,"}.get(
        d["hypothesis"], "the smallest effect")
    equal = d["hypothesis"] in ("equivalence", "non-inferiority")
    at = "when the arms are truly equal (margin {})" if equal else "at the effect of interest {}"
    if d["pilot"] is not None:
        p = d["pilot"]
        spread = (f"sd of the per-seed differences {p['sd_diff']:.4g} over {p['pairs']} pairs" if "sd_diff" in p else
                  f"sd {p['sd'][0]:.4g} and {p['sd'][1]:.4g} over {p['runs'][0]} and {p['runs'][1]} runs"
                  if isinstance(p["sd"], list) else f"sd {p['sd']:.4g} over {p['runs']} runs")
        lines.append(f"  power (pilot: the claim's finished runs, {spread}; test units): with {d['verdict_seeds']} "
                     f"verdict seeds, {what} detected with {pw:.0%} power at {d['alpha_holm_strictest']:.3g} is "
                     f"{u(d['detectable'])}" + (f"; power {at.format(u(d['effect_of_interest']))}: {d['power']:.0%}"
                                               if d["power"] is not None else ""))
    else:
        lines.append(f"  power: no pilot (fewer than 2 finished runs per compared arm under the runs folder"
                     + (f": {d['pilot_problem']}" if d.get("pilot_problem") else "") + "); run the tuning seeds "
                     f"first. With {d['verdict_seeds']} verdict seeds, {what} detected with {pw:.0%} power at "
                     f"{d['alpha_holm_strictest']:.3g} is {d['detectable_in_sd']:.2f} sigma, sigma the per-seed spread"
                     + (" of the paired differences" if d["test"] == "paired" else "")
                     + (f"; for {pw:.0%} power {at.format(u(d['effect_of_interest']))}, sigma must be at most "
                        f"{u(_test_units(d['effect_of_interest'], sc) / d['detectable_in_sd'])} (test units)"
                        if d["effect_of_interest"] else ""))
    if reg and reg["power_note"]:
        lines.append(f"  registered: {reg['power_note']}")
    return "\n".join(lines)


def _control_words(x: dict) -> str:
    """A control as the plan names it: its name, role and what it is."""
    m = x.get("metric")
    what = {"untrained": "the treatment's step-0 weights" + (f", {m.get('key') or m['kind']}" if m else ""),
            "ablation": f"arm {x['arm']}",
            "ngram": f"{'unigram' if x['order'] == 1 else 'bigram'}, add-{x['k']:g}, on the test split"}[x["role"]]
    return f"{x['name']} ({x['role']}: {what})"



def _metric_words(m: dict) -> str:
    """A check's metric (as JSON) in the card's words."""
    from pydantic import TypeAdapter

    from .schema import Metric

    return TypeAdapter(Metric).validate_python(m).label()


def budget_text(plans: list[dict]) -> str:
    """The estimate ``kinlm claims plan`` prints first: the CPU-tier claims' ``budget_minutes``
    summed (each claim's share of the runs on 2 CPU cores; shared arms counted once, in one claim),
    and which claims have no estimate."""
    cpu = [d for d in plans if d["tier"] == "cpu"]
    known = [d["budget_minutes"] for d in cpu if d["budget_minutes"] is not None]
    missing = [d["id"] for d in cpu if d["budget_minutes"] is None]
    gpu = len(plans) - len(cpu)
    text = (f"Estimated regeneration of the {len(cpu)} CPU-tier claim{'s' if len(cpu) != 1 else ''}: "
            f"{sum(known):g} minutes ({sum(known) / 60:.1f} h) of runs on 2 CPU cores, from each claim's budget_minutes "
            "(specs/claims/README.md); finished runs are skipped")
    if missing:
        text += f"; no estimate for {', '.join(missing)}"
    if gpu:
        text += f"; {gpu} tier-gpu claim{'s' if gpu != 1 else ''} not counted (`--tier gpu`)"
    return text + "."
