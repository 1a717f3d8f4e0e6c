"""The statistics behind a claim's verdict: tests a reviewer accepts at n = 3 seeds.

- :func:`welch`: two independent samples (each arm's seeds), Welch's t-test with the
  Welch-Satterthwaite degrees of freedom and its t-distribution (not a normal approximation: at
  n = 3 a two-sided 5% test needs |t| > 2.8-4.3, not 2).
- :func:`paired`: the same seeds in both arms, a t-test on the per-seed differences.
- :func:`one_sample`: one arm against a fixed value (an absolute criterion, e.g. "effective rank
  below 30% is failure").
- Each returns a :class:`Comparison`: the difference, its 95% confidence interval, the two-sided
  p-value of the null ``difference == null`` and the smallest difference this design could detect
  with 80% power (:func:`detectable`; ``power=None`` skips it, for simulations).
- :func:`one_sided_p`, :func:`tost`: one-sided tests of a :class:`Comparison` against a bound, and
  the two one-sided tests (TOST) of equivalence within +-margin (a non-inferiority claim is one of
  them); :func:`equivalence_detectable`: the smallest margin TOST establishes with 80% power.
- :func:`power`, :func:`equivalence_power`: the power of a t-test (of TOST) with a standard error
  and df at a true difference (the plan); for Welch's test, whose df is random,
  :func:`welch_power` and :func:`welch_detectable` integrate over it.
- :func:`pearson`: the correlation of paired values (what pairing by seed buys).
- :func:`holm`: Holm's step-down adjustment of the p-values of one family of claims;
  :func:`holm_levels`: the level each p-value is compared with in Holm's steps;
  :func:`bh`: Benjamini-Hochberg's adjusted p-values (q), the false discovery rate across a page.
- :func:`binomial_above_chance`: whether an accuracy over ``n`` pairs differs from chance.

``scale="log"`` compares the logarithms of the values, so the difference is a ratio: it is
reported as ``ratio - 1`` (e.g. +0.165 = 16.5% higher) with its interval transformed the same way.

Torch-free (scipy.stats).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

ALPHA = 0.05
POWER = 0.8


class StatsError(ValueError):
    """Not enough data for the test (fewer than 2 values where a variance is needed, a value <= 0 on
    the log scale)."""


@dataclass
class Comparison:
    test: str  # "welch", "paired", "one_sample"
    difference: float  # treatment - baseline (or - value); on the log scale: ratio - 1
    ci95: tuple[float, float]
    p: float  # two-sided, null: difference == null
    t: float
    df: float
    se: float  # on the scale the test works on (log units for scale="log")
    detectable: float  # smallest |difference| (same units as difference) found with 80% power
    n: tuple[int, ...]
    mean: tuple[float, ...]  # each sample's mean (original units)
    sd: tuple[float | None, ...]  # each sample's sample std (n - 1), None when n < 2
    scale: str = "absolute"
    null: float = 0.0  # the null difference (same units as difference)
    correlation: float | None = None  # paired: Pearson's r of the paired values (None: unpaired, or undefined)
    sd_test: tuple[float | None, ...] = ()  # welch: each sample's sd on the test's scale (log units for "log")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


def _clean(xs, scale: str, what: str) -> list[float]:
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if scale == "log":
        if any(v <= 0 for v in vals):
            raise StatsError(f"{what}: a value <= 0 cannot be compared on the log scale")
        vals = [math.log(v) for v in vals]
    return vals


def _mean_sd(xs: list[float]) -> tuple[float, float | None]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _to_null_scale(null: float, scale: str) -> float:
    return math.log1p(null) if scale == "log" else null


def _from_scale(d: float, scale: str) -> float:
    return math.expm1(d) if scale == "log" else d


def detectable(se: float, df: float, alpha: float = ALPHA, power: float = POWER, sides: int = 2) -> float:
    """The smallest true difference that a level-``alpha`` t-test (two-sided, or one-sided with
    ``sides=1``) with this standard error and these degrees of freedom detects with probability
    ``power``: the delta at which the noncentral t (noncentrality delta / se) exceeds the critical
    value with that probability. Exact for the one-sample and paired tests; for Welch's test an
    approximation at its df (rounded to 0.01)."""
    if not (se > 0) or not (df > 0):
        return 0.0
    return _noncentrality(round(float(df), 2), alpha, power, sides) * se


@functools.lru_cache(maxsize=4096)
def _noncentrality(df: float, alpha: float, power: float, sides: int = 2) -> float:
    from scipy import optimize, stats

    tc = stats.t.ppf(1 - alpha / sides, df)

    def short(nc):
        return _power_nc(nc, df, tc, sides) - power

    return float(optimize.brentq(short, 0.0, (tc + stats.t.ppf(power, df)) * 2 + 1))


def _power_nc(nc: float, df: float, tc: float, sides: int) -> float:
    from scipy import stats

    p = stats.nct.sf(tc, df, nc)
    if sides == 2:
        lower = stats.nct.cdf(-tc, df, nc)  # the wrong tail: ~0, and NaN in scipy far out
        p += lower if math.isfinite(lower) else 0.0
    return float(p)


def power(effect: float, se: float, df: float, alpha: float = ALPHA, sides: int = 2) -> float:
    """The probability that a level-``alpha`` t-test (``sides`` 2 or 1) with standard error ``se``
    and ``df`` degrees of freedom rejects when the true difference is ``effect`` (in the test's
    units; for a one-sided test, ``effect`` on the tested side)."""
    from scipy import stats

    if not (se > 0) or not (df > 0):
        return 1.0 if effect else alpha
    return _power_nc(abs(effect) / se, float(df), float(stats.t.ppf(1 - alpha / sides, df)), sides)


def equivalence_detectable(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest margin m for which TOST (two one-sided level-``alpha`` tests against -m and +m)
    shows equivalence with probability ``power`` when the true difference is 0: TOST rejects when
    |d| < m - t(1 - alpha, df) s, with d ~ N(0, se^2) and s = se sqrt(X / df), X ~ chi2(df), so the
    power is E[(2 Phi((m - t s) / se) - 1)+] (exact for paired and one-sample tests)."""
    if not (se > 0) or not (df > 0):
        return 0.0
    return _tost_multiplier(round(float(df), 2), alpha, power) * se


def welch_power(effect: float, sd_t: float, sd_b: float, n_t: int, n_b: int, alpha: float = ALPHA,
                kind: str = "two-sided", grid: int = 200) -> float:
    """The power of Welch's test at a true difference ``effect`` with true spreads ``sd_t`` and
    ``sd_b`` and ``n_t``, ``n_b`` seeds, integrating over both sample variances (its degrees of
    freedom are random, so the noncentral t at one df overstates it: at n = 3 a design planned
    for 80% that way has about 70%). ``kind``: ``two-sided``, ``one-sided`` (``effect`` on the
    tested side) or ``tost`` (equivalence within +-``effect`` at a true difference 0). The sample
    variances are integrated on a grid of ``grid`` quantiles each."""
    import numpy as np
    from scipy import stats

    if n_t < 2 or n_b < 2:
        raise StatsError("Welch's test needs 2 or more values per arm")
    q = (np.arange(grid) + 0.5) / grid
    va = sd_t ** 2 / n_t * (stats.chi2.ppf(q, n_t - 1) / (n_t - 1))[:, None]
    vb = sd_b ** 2 / n_b * (stats.chi2.ppf(q, n_b - 1) / (n_b - 1))[None, :]
    se_hat = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (n_t - 1) + vb ** 2 / (n_b - 1))
    sd_d = math.sqrt(sd_t ** 2 / n_t + sd_b ** 2 / n_b)
    if not sd_d > 0:
        return 1.0
    if kind == "tost":
        c = stats.t.ppf(1 - alpha, df) * se_hat
        return float(np.clip(stats.norm.cdf((effect - c) / sd_d) - stats.norm.cdf((c - effect) / sd_d), 0, 1).mean())
    c = stats.t.ppf(1 - alpha / (1 if kind == "one-sided" else 2), df) * se_hat
    p = stats.norm.cdf((abs(effect) - c) / sd_d)
    if kind != "one-sided":
        p = p + stats.norm.cdf((-abs(effect) - c) / sd_d)
    return float(p.mean())


def welch_detectable(sd_t: float, sd_b: float, n_t: int, n_b: int, alpha: float = ALPHA, power: float = POWER,
                     kind: str = "two-sided") -> float:
    """The smallest true difference (``tost``: margin) Welch's test finds with probability
    ``power`` (:func:`welch_power`)."""
    from scipy import optimize

    sd_d = math.sqrt(sd_t ** 2 / n_t + sd_b ** 2 / n_b)
    if not sd_d > 0:
        return 0.0
    hi = sd_d
    while welch_power(hi, sd_t, sd_b, n_t, n_b, alpha, kind) < power:
        hi *= 2
    return float(optimize.brentq(lambda d: welch_power(d, sd_t, sd_b, n_t, n_b, alpha, kind) - power, 0.0, hi,
                                 xtol=1e-6 * sd_d))


def equivalence_power(margin: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """The probability that TOST within +-``margin`` shows equivalence when the true difference is 0
    (see :func:`equivalence_detectable`)."""
    from scipy import stats

    if not (se > 0) or not (df > 0):
        return 1.0
    return _tost_power(margin / se, float(df), float(stats.t.ppf(1 - alpha, df)))


def _tost_power(k: float, df: float, tc: float) -> float:
    """TOST's power at a true difference 0 with margin = k se: E[(2 Phi(k - tc sqrt(X / df)) - 1)+]."""
    from scipy import integrate, stats

    if k <= 0:
        return 0.0

    def f(x):
        return max(0.0, 2 * stats.norm.cdf(k - tc * math.sqrt(x / df)) - 1) * stats.chi2.pdf(x, df)

    return float(integrate.quad(f, 0, (k / tc) ** 2 * df, limit=200)[0])


@functools.lru_cache(maxsize=1024)
def _tost_multiplier(df: float, alpha: float, power: float) -> float:
    from scipy import optimize, stats

    tc = float(stats.t.ppf(1 - alpha, df))
    return float(optimize.brentq(lambda k: _tost_power(k, df, tc) - power, 1e-6, 4 * (tc + 3) + 10))


def _finish(test, d, se, df, null, n, means, sds, scale, alpha, power) -> Comparison:
    from scipy import stats

    null_s = _to_null_scale(null, scale)
    if se == 0:  # no spread at all: the difference is exact
        t = 0.0 if d == null_s else math.copysign(math.inf, d - null_s)
        p = 1.0 if d == null_s else 0.0
        lo = hi = d
    else:
        t = (d - null_s) / se
        p = float(2 * stats.t.sf(abs(t), df))
        q = float(stats.t.ppf(0.975, df))
        lo, hi = d - q * se, d + q * se
    mde = detectable(se, df, alpha, power) if power is not None else math.nan  # power None: not computed
    if scale == "log":
        mde = math.expm1(mde)
    return Comparison(test=test, difference=_from_scale(d, scale), ci95=(_from_scale(lo, scale), _from_scale(hi, scale)),
                      p=p, t=float(t), df=float(df), se=float(se), detectable=float(mde), n=n, mean=means, sd=sds,
                      scale=scale, null=null)


def welch(treatment, baseline, null: float = 0.0, scale: str = "absolute", alpha: float = ALPHA,
          power: float | None = POWER) -> Comparison:
    """Welch's two-sample t-test of mean(treatment) - mean(baseline) against ``null``.
    Needs at least 2 values in each sample."""
    a, b = _clean(treatment, scale, "treatment"), _clean(baseline, scale, "baseline")
    if len(a) < 2 or len(b) < 2:
        raise StatsError(f"Welch's test needs 2 or more values per arm (treatment {len(a)}, baseline {len(b)})")
    ma, sa = _mean_sd(a)
    mb, sb = _mean_sd(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else float(len(a) + len(b) - 2)
    ra, rb = [x for x in treatment if x is not None], [x for x in baseline if x is not None]
    means = (_mean_sd([float(x) for x in ra])[0], _mean_sd([float(x) for x in rb])[0])
    sds = (_mean_sd([float(x) for x in ra])[1], _mean_sd([float(x) for x in rb])[1])
    cmp = _finish("welch", ma - mb, se, df, null, (len(a), len(b)), means, sds, scale, alpha, power)
    cmp.sd_test = (sa, sb)
    return cmp


def paired(treatment, baseline, null: float = 0.0, scale: str = "absolute", alpha: float = ALPHA,
           power: float | None = POWER) -> Comparison:
    """A paired t-test: ``treatment[i]`` and ``baseline[i]`` share a seed. Needs 2 or more pairs."""
    if len(treatment) != len(baseline):
        raise StatsError(f"a paired test needs as many treatment values as baseline values "
                         f"({len(treatment)} and {len(baseline)})")
    pairs = [(x, y) for x, y in zip(treatment, baseline) if x is not None and y is not None
             and math.isfinite(float(x)) and math.isfinite(float(y))]
    if len(pairs) < 2:
        raise StatsError(f"a paired test needs 2 or more complete pairs ({len(pairs)})")
    a = _clean([x for x, _ in pairs], scale, "treatment")
    b = _clean([y for _, y in pairs], scale, "baseline")
    diffs = [x - y for x, y in zip(a, b)]
    md, sd = _mean_sd(diffs)
    se = sd / math.sqrt(len(diffs))
    means = (_mean_sd([float(x) for x, _ in pairs])[0], _mean_sd([float(y) for _, y in pairs])[0])
    sds = (_mean_sd([float(x) for x, _ in pairs])[1], _mean_sd([float(y) for _, y in pairs])[1])
    cmp = _finish("paired", md, se, len(diffs) - 1, null, (len(pairs), len(pairs)), means, sds, scale, alpha, power)
    cmp.correlation = pearson(a, b)
    return cmp


def one_sample(values, value: float, scale: str = "absolute", alpha: float = ALPHA, power: float | None = POWER) -> Comparison:
    """A one-sample t-test of mean(values) against a fixed ``value``; the difference is
    mean - value (on the log scale: mean / value - 1)."""
    xs = _clean(values, scale, "values")
    if len(xs) < 2:
        raise StatsError(f"a one-sample test needs 2 or more values ({len(xs)})")
    m, sd = _mean_sd(xs)
    ref = math.log(value) if scale == "log" else value
    raw = [float(x) for x in values if x is not None]
    return _finish("one_sample", m - ref, sd / math.sqrt(len(xs)), len(xs) - 1, 0.0, (len(xs),),
                   (_mean_sd(raw)[0],), (_mean_sd(raw)[1],), scale, alpha, power)


def pearson(x, y) -> float | None:
    """Pearson's correlation of paired values (None with fewer than 3 pairs or no spread in one)."""
    x, y = [float(v) for v in x], [float(v) for v in y]
    if len(x) != len(y) or len(x) < 3:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def one_sided_p(cmp: Comparison, bound: float, greater: bool) -> float:
    """The one-sided p-value of a comparison's difference against ``bound`` (same units as the
    difference): the null ``difference <= bound`` against ``difference > bound`` (``greater``) or
    the null ``difference >= bound`` against ``difference < bound``; on its t-distribution."""
    from scipy import stats

    d = math.log1p(cmp.difference) if cmp.scale == "log" else cmp.difference
    b = _to_null_scale(bound, cmp.scale)
    if cmp.se == 0:
        return 0.0 if (d > b if greater else d < b) else 1.0
    t = (d - b) / cmp.se
    return float(stats.t.sf(t, cmp.df) if greater else stats.t.cdf(t, cmp.df))


def tost(cmp: Comparison, margin: float) -> float:
    """The p-value of equivalence within +-``margin`` by two one-sided tests: the larger of the
    tests that the difference is above -margin and below +margin (on the log scale the bounds are
    the ratios 1 - margin and 1 + margin)."""
    if not margin > 0:
        raise StatsError("an equivalence test needs a margin > 0")
    return max(one_sided_p(cmp, -margin, True), one_sided_p(cmp, margin, False))


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and is not counted): sort the m p-values,
    p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j)). A claim is significant at level alpha
    after the correction when its adjusted p < alpha; the family-wise error rate stays <= alpha."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def binomial_above_chance(correct: int, n: int, chance: float = 0.5) -> float:
    """One-sided exact binomial p-value that ``correct`` successes in ``n`` trials exceed ``chance``."""
    from scipy import stats

    if n <= 0:
        return 1.0
    return float(stats.binomtest(int(correct), int(n), chance, alternative="greater").pvalue)


def holm_levels(pvalues: list[float | None], alpha: float = ALPHA) -> list[float | None]:
    """The level Holm's step-down compares each p-value with: the i-th smallest (0-based) against
    alpha / (m - i) while the steps reject; every p-value from the first that fails on is judged at
    that failing step's level, alpha / (m - r) after r rejections. A p-value below its level is
    significant after the correction (the same decision as holm(p) < alpha)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    stopped = None
    for rank, i in enumerate(order):
        level = alpha / (m - rank)
        if stopped is None and not pvalues[i] < level:
            stopped = level
        out[i] = level if stopped is None else stopped
    return out


def bh(pvalues: list[float | None]) -> list[float | None]:
    """Benjamini-Hochberg's adjusted p-values (q; None stays None and is not counted): the i-th
    smallest of m becomes min over j >= i of min(1, m p_(j) / j). Claims with q < alpha keep the
    expected share of false discoveries among them below alpha."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, m * pvalues[i] / (rank + 1))
        out[i] = min(1.0, running)
    return out
