"""A claim's metric read from one finished run directory: result.json and metrics.jsonl (the last
value, a value at N tokens seen, the tokens seen until a target), an analyzer's metrics.json and
BLiMP's pair counts."""

from __future__ import annotations

from pathlib import Path

from . import archive
from .schema import AnalyzerMetric, BlimpMetric, KeyMetric, ResourceMetric, TaskAccuracy, TokensToTarget


def _records(run: Path) -> list[dict]:
    """The run's metrics.jsonl records (through the archive seam, :mod:`.archive`)."""
    return archive.records(run)


def _result(run: Path) -> dict:
    data = archive.read_json(Path(run) / "result.json")
    return data if isinstance(data, dict) else {}


def _last(records: list[dict], key: str):
    val = None
    for r in records:
        if isinstance(r.get(key), (int, float)):
            val = float(r[key])
    return val


def _interp(curve: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of (tokens, value) at x (None outside the curve)."""
    curve = sorted(curve)
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if curve and curve[-1][0] == x:
        return curve[-1][1]
    return None


def _curve(records: list[dict], key: str) -> list[tuple[float, float]]:
    out, tokens = [], None
    for r in records:
        if "perf/tokens_seen" in r:
            tokens = r["perf/tokens_seen"]
        if isinstance(r.get(key), (int, float)):
            t = r.get("eval/tokens_seen", r.get("perf/tokens_seen", tokens))
            if t is not None:
                out.append((float(t), float(r[key])))
    return out


def _crossing(curve, target: float, lower: bool) -> float | None:
    """The tokens seen at which the curve first reaches target (linear between points)."""
    prev = None
    for t, v in sorted(curve):
        if (v <= target) if lower else (v >= target):
            if prev is None:
                return t
            (t0, v0) = prev
            return t0 + (t - t0) * (target - v0) / (v - v0) if v != v0 else t
        prev = (t, v)
    return None


def _analysis(run: Path, name: str, at: str = "last") -> dict | None:
    def step(d: str) -> int:
        n = d.split("_", 1)[1]
        return int(n) if n.isdigit() else -1

    folder = Path(run) / "analysis" / name
    steps = sorted(archive.listing(folder, "step_*"), key=step)
    steps = [d for d in steps if archive.read_json(folder / d / "metrics.json") is not None]
    if not steps:
        return None
    return archive.read_json(folder / steps[-1 if at == "last" else 0] / "metrics.json")


def _dotted(data, path: str):
    """The number at a dotted path of a JSON document, or None."""
    from ..compare import lookup

    cur = lookup(data, path)
    return float(cur) if isinstance(cur, (int, float)) and not isinstance(cur, bool) else None


def blimp_counts(data: dict, fld: str) -> tuple[int, int] | None:
    """(correct, pairs) of a BLiMP metrics.json, overall or for one field (pairs per paradigm are
    equal, so a field's pairs are its share of the paradigms)."""
    from ..blimp import PARADIGMS

    pairs = data.get("pairs")
    if not isinstance(pairs, int) or pairs <= 0:
        return None
    present = [p for p in PARADIGMS if isinstance(data.get(p), (int, float))]
    if fld == "overall" or not present:
        acc = data.get(fld)
        if not isinstance(acc, (int, float)) or fld != "overall":
            return None
        return round(acc * pairs), pairs
    per = pairs / len(present)
    mine = [p for p in present if PARADIGMS[p] == fld]
    return round(sum(data[p] * per for p in mine)), round(per * len(mine))


def eval_file(run: Path, split: str, untrained: bool = False) -> Path:
    """Where ``kinlm claims report`` keeps ``kinlm eval RUN --split SPLIT [--untrained]``'s output
    for a run (:func:`kinlm_core.claims.controls.ensure_eval` writes it)."""
    return Path(run) / f"eval_{split}{'_untrained' if untrained else ''}.json"


def read_eval(run: Path, split: str, untrained: bool = False) -> dict | None:
    """The kept evaluation of a run on a split, or None (none kept, or kept for another step of a
    run that went on since)."""
    data = archive.read_json(eval_file(run, split, untrained))
    if not isinstance(data, dict) or (not untrained and data.get("step") != _result(run).get("step")):
        return None
    return data


def metric_value(metric, run: Path, target: float | None = None) -> tuple[float | None, str | None]:
    """(value, note) of one run; value None when the run lacks it. ``target``: tokens_to_target's
    resolved target value. A key ``test/X`` is X (loss, ppl, bpb, accuracy) of the run's final
    weights on the test split, as ``kinlm claims report`` evaluated them (:func:`read_eval`)."""
    if isinstance(metric, KeyMetric) and metric.key.startswith("test/"):
        data = read_eval(run, "test") or {}
        v = data.get(metric.key.split("/", 1)[1])
        return ((float(v), None) if isinstance(v, (int, float)) else
                (None, f"{run}: no {metric.key}: its final weights have not been evaluated on the test split"))
    if isinstance(metric, (KeyMetric, TaskAccuracy)):
        recs = _records(run)
        if isinstance(metric, KeyMetric) and metric.at_tokens:
            v = _interp(_curve(recs, metric.key), metric.at_tokens)
            return v, None if v is not None else f"{run}: {metric.key} not logged around {metric.at_tokens:,.0f} tokens"
        res = _result(run)
        if isinstance(res.get(metric.key), (int, float)):
            return float(res[metric.key]), None
        v = _last(recs, metric.key)
        return v, None if v is not None else f"{run}: no {metric.key} in result.json or metrics.jsonl"
    if isinstance(metric, TokensToTarget):
        curve = _curve(_records(run), metric.key)
        if not curve or target is None:
            return None, f"{run}: no {metric.key} curve"
        t = _crossing(curve, target, metric.lower_is_better)
        if t is None:
            return max(x for x, _ in curve), "censored"
        return t, None
    if isinstance(metric, BlimpMetric):
        data = _analysis(run, "blimp")
        if data is None:
            return None, f"{run}: no analysis/blimp"
        v = data.get(metric.field)
        return (float(v), None) if isinstance(v, (int, float)) else (None, f"{run}: BLiMP has no {metric.field}")
    if isinstance(metric, AnalyzerMetric):
        data = _analysis(run, metric.analyzer, metric.at)
        if data is None:
            return None, f"{run}: no analysis/{metric.analyzer}"
        v = _dotted(data, metric.key)
        return v, None if v is not None else f"{run}: {metric.analyzer}'s metrics.json has no number at {metric.key}"
    if isinstance(metric, ResourceMetric):
        if metric.what == "tokens_per_s":
            v = _result(run).get("tokens_per_s")
            return (float(v), None) if isinstance(v, (int, float)) else (None, f"{run}: no tokens_per_s")
        vals = [float(r["perf/peak_mem_mb"]) for r in _records(run) if isinstance(r.get("perf/peak_mem_mb"), (int, float))]
        return (max(vals), None) if vals else (None, f"{run}: no perf/peak_mem_mb logged")
    raise TypeError(metric)
