"""A claim's card: each arm's runs, values, parameters, tokens seen and learning rate, the fairness
notes and the comparison (:mod:`.verdicts`); :func:`report` builds and decides the cards of a page."""

from __future__ import annotations

import math
from pathlib import Path

from . import archive
from .arms import MAX_EXTENSIONS, arm_runs, tuning_seeds
from .controls import apply_controls, evaluate_controls, prepare_test_split
from .manipulation import apply_manipulation, evaluate_manipulation
from .discovery import Installed, resolve_spec
from .metrics import _last, _records, _result, metric_value
from .figures import curves_figure
from .render import _count
from .schema import Arm, Claim, TokensToTarget
from .registration import status as registration_status
from .verdicts import _compare, decide

TOKENS_TOLERANCE = 0.01  # arms whose mean tokens seen differ by more than this share are "not at equal tokens"


def _params(folder: Path, runs: list[Path]) -> dict:
    data = archive.read_json(folder / "params.json")
    if isinstance(data, dict):
        return data
    total = _result(runs[0]).get("params") if runs else None
    return {"total": total, "non_embedding": None}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def evaluate(inst: Installed, out, seeds: int | None = None) -> dict:
    """One claim's card before the page's correction: arms, fairness, the comparison (or why
    there is none). :func:`decide` adds the verdict."""
    c = inst.claim
    out = Path(out)
    card: dict = {"id": c.id, "title": c.title, "plugin": inst.dist, "file": str(inst.path), "tier": c.tier,
                  "source": c.source.model_dump(), "metric": c.metric.label(), "metric_spec": c.metric.model_dump(),
                  "direction": c.direction, "test": c.test.model_dump(), "arms": [], "notes": list(c.notes),
                  "fairness": [], "problems": [], "comparison": None, "ablations": [], "floor": None,
                  "verdict": None, "reason": "", "difference": None, "ci95": None, "p": None, "p_adjusted": None,
                  # the design and the page's corrections (.verdicts), the registration (.registration)
                  "design": None, "family": c.family(), "family_size": None, "alpha_adjusted": None, "q_bh": None,
                  "detectable_adjusted": None, "registration": None}
    arms = {a.name: arm_runs(c, a, inst.path, out, seeds) for a in c.arms}
    card["controls"] = []
    card["problems"] += prepare_test_split(c, arms)[:3]  # a test/ metric: each run's final weights on the test split
    # tokens_to_target's target: the baseline's mean last value of the key
    target = None
    if isinstance(c.metric, TokensToTarget):
        if c.metric.target == "baseline_final":
            b = arms[c.arm("baseline").name]
            target = _mean([_last(_records(r), c.metric.key) for r in b.runs])
        else:
            target = float(c.metric.target)
        card["target"] = target
    values: dict[str, list[float | None]] = {}
    for a in c.arms:
        ar = arms[a.name]
        vals, notes, censored = [], [], 0
        for r in ar.runs:
            v, note = metric_value(c.metric, r, target)
            vals.append(v)
            if note == "censored":
                censored += 1
            elif note:
                notes.append(note)
        values[a.name] = vals
        res = [_result(r) for r in ar.runs]
        params = _params(ar.folder, ar.runs)
        seeds_seen = []
        for r in ar.runs:
            spec = archive.read_json(r / "spec.json")
            seeds_seen.append(spec.get("seed") if isinstance(spec, dict) else None)
        m, sd, n = _mean_sd(vals)
        card["arms"].append({
            "name": a.name, "label": a.label or a.name, "role": a.role, "spec": a.spec, "set": a.set,
            "folder": str(ar.folder), "runs": [str(r) for r in ar.runs], "seeds": seeds_seen, "values": vals,
            "grid_runs": {k: str(r) for k, r in ar.grid_runs.items()},
            "mean": m, "sd": sd, "n": n, "censored": censored,
            "tokens_seen": _mean([x.get("tokens_seen") for x in res]),
            "params_total": params.get("total"), "params_non_embedding": params.get("non_embedding"),
            "lr": {"grid": ar.grid, "chosen": ar.chosen, "key": c.lr_grid.key, "select_on": c.lr_grid.select_on,
                   "tuning_seeds": tuning_seeds(c), "extended": ar.extended, "pending": ar.pending,
                   "metric": {k: metric_value(c.metric, r, target)[0] for k, r in ar.grid_runs.items()}}
            if c.lr_grid else {"fixed": _lookup_lr(inst, a), "note": c.fairness.lr_note},
            "problem": ar.problem})
        card["problems"] += ([ar.problem] if ar.problem else []) + notes[:3]
        if ar.stale:
            card["problems"].append(f"arm {a.name}: {len(ar.stale)} run(s) left out, made from an earlier version of "
                                    f"its spec (delete them and run again): " + "; ".join(ar.stale[:2]))
        if censored:
            card["notes"].append(f"{a.name}: {censored} of {len(ar.runs)} runs never reached the target; counted at "
                                 "their last tokens seen (a lower bound)")
    _fairness(c, card)
    _registration(c, card, arms)
    if isinstance(c.metric, TokensToTarget):
        c, values = _censored_basis(c, card, arms, values)
    _compare(c, card, values)
    evaluate_controls(c, card, arms)
    evaluate_manipulation(c, card)
    return card


def _registration(c: Claim, card: dict, arms: dict) -> None:
    """The registration block, its state against the runs the verdict uses (theirs and the lr grid's)
    and whether the runs' seeds are the registered verdict seeds."""
    used = [r for ar in arms.values() for r in [*ar.runs, *ar.tuning_runs]]
    st = registration_status(c, sorted(set(used)))
    st["fields"] = c.registration.model_dump() if c.registration else None
    st["seed_notes"] = []
    if c.registration:
        verdict_seeds, tuning = set(c.registration.verdict_seeds), set(c.registration.tuning_seeds)
        both = sorted(verdict_seeds & tuning)
        if both:
            st["seed_notes"].append(f"tuning seed{'s' if len(both) > 1 else ''} {', '.join(map(str, both))} "
                                    "also decide{} the verdict: selection and decision share data".format(
                                        "" if len(both) > 1 else "s"))
        for a in c.arms:
            other = sorted(set(arms[a.name].off_seeds))
            if other:
                s = "s" if len(other) > 1 else ""
                st["seed_notes"].append(f"{a.name}'s run{s} of seed{s} {', '.join(map(str, other))} left out: not "
                                        "among the registered verdict seeds")
    card["registration"] = st


def _censored_basis(c: Claim, card: dict, arms: dict, values: dict):
    """tokens_to_target when a treatment run never reached the target: its tokens are only a lower
    bound (biased toward the claim), so the verdict compares the arms' final value of the key at
    equal tokens instead; the tokens stay on the card (``tokens_values``)."""
    tr = next(a for a in card["arms"] if a["role"] == "treatment")
    if not tr["censored"]:
        return c, values
    key = c.metric.key
    finals = {a.name: [_last(_records(r), key) for r in arms[a.name].runs] for a in c.arms}
    for a in card["arms"]:
        a["tokens_values"] = a["values"]
        a["values"] = finals[a["name"]]
        a["mean"], a["sd"], a["n"] = _mean_sd(finals[a["name"]])
    flip = {"lower": "higher", "higher": "lower"}
    card["direction"] = c.direction if c.metric.lower_is_better else flip.get(c.direction, c.direction)
    card["metric"] = f"final {key} (tokens to the target were censored)"
    card["test"] = {**card["test"], "margin": 0.0}
    card["basis"] = "final"
    card["notes"].append(
        f"The treatment did not reach the target in {tr['censored']} of {len(tr['tokens_values'])} runs, so its tokens "
        f"to the target are only a lower bound; the verdict compares the final {key} at equal tokens instead "
        f"({'lower' if c.metric.lower_is_better else 'higher'} is better). Tokens to the target, per arm: "
        + "; ".join(f"{a['name']} " + ", ".join(_count(round(v)) if v is not None else "-" for v in a["tokens_values"])
                    for a in card["arms"]) + ".")
    test = c.test.model_copy(update={"margin": 0.0})
    return c.model_copy(update={"test": test, "direction": card["direction"]}), finals


def _lookup_lr(inst: Installed, arm: Arm):
    for s in arm.set:
        if s.startswith("train.lr="):
            return float(s.split("=", 1)[1])
    data = archive.read_json(resolve_spec(arm.spec, inst.path))
    return data.get("train", {}).get("lr") if isinstance(data, dict) else None


def _mean_sd(vals):
    xs = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return m, sd, len(xs)


def _fairness(c: Claim, card: dict) -> None:
    base = next((a for a in card["arms"] if a["role"] == "baseline"), None)
    lines = card["fairness"]
    if c.lr_grid:
        for a in card["arms"]:
            lr, ch = a["lr"], a["lr"].get("chosen")
            grid = sorted(lr["grid"], key=float)
            if lr.get("extended"):
                lines.append(f"{a['name']}'s grid was extended beyond its edge to {', '.join(lr['extended'])} "
                             "(its best rate was at the edge)")
            if ch is None or len(grid) < 2 or ch not in (grid[0], grid[-1]):
                continue
            edge = "top" if ch == grid[-1] else "bottom"
            if lr.get("pending"):
                lines.append(f"{a['name']}'s best rate {ch} is at the {edge} of the grid, and its extension to "
                             f"{lr['pending']} has not run (`kinlm claims run` trains it)")
            elif len(lr.get("extended") or []) >= MAX_EXTENSIONS:
                lines.append(f"{a['name']}'s best rate {ch} is still at the {edge} of the grid after "
                             f"{MAX_EXTENSIONS} extensions: a rate beyond it might do better")
            else:
                lines.append(f"{a['name']}'s best rate {ch} is at the {edge} of the grid: a rate beyond it might "
                             "do better")
    if base is None:
        return
    tol = c.fairness.non_embedding_tolerance
    for a in card["arms"]:
        if a is base:
            continue
        ne, bne = a["params_non_embedding"], base["params_non_embedding"]
        if ne and bne:
            ratio = ne / bne
            a["params_ratio"] = ratio
            if abs(ratio - 1) > tol:
                lines.append(f"parameters not matched: {a['name']} has {ratio:.2f}x the baseline's non-embedding "
                             f"parameters ({ne:,} vs {bne:,}; tolerance {tol:.0%})"
                             + (f": {c.fairness.params_note}" if c.fairness.params_note else ""))
        elif a["runs"] and base["runs"]:
            lines.append(f"non-embedding parameters not counted for {a['name']} or the baseline "
                         "(params.json is written by `kinlm claims run`)")
        t, bt = a["tokens_seen"], base["tokens_seen"]
        if t and bt and abs(t / bt - 1) > TOKENS_TOLERANCE:
            lines.append(f"not at equal tokens: {a['name']} saw {t:,.0f} tokens, the baseline {bt:,.0f} "
                         f"({t / bt - 1:+.0%})" + (f": {c.fairness.tokens_note}" if c.fairness.tokens_note else ""))
    if c.fairness.tokens_note and not any("not at equal tokens" in x for x in lines) and not c.fairness.equal_tokens:
        lines.append(f"tokens: {c.fairness.tokens_note}")


def report(selected: list[Installed], out, seeds: int | None = None, figures=None) -> list[dict]:
    """The decided cards of the selected claims, in order (Holm across all of them). ``figures``: a
    folder for each card's curves figure (:func:`curves_figure`; its file name in ``card["figure"]``)."""
    cards = apply_manipulation(apply_controls(decide([evaluate(i, out, seeds) for i in selected])))
    if figures is not None:
        for c in cards:
            c["figure"] = curves_figure(c, figures)
    return cards
