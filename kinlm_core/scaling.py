"""Scaling laws: fit ``metric = a * x^alpha`` (optionally ``+ floor``) over runs, with a confidence
interval for the exponent, and draw it on log-log axes.

- Pure power law (:func:`fit_power_law`, ``floor=False``): ordinary least squares of ``log y`` on
  ``log x``; ``alpha`` is the slope, ``a = exp(intercept)``. Its interval is the t-interval of the
  slope, ``alpha ± t_{(1+level)/2, n-2} * se``, ``se = sqrt(SSR / (n - 2) / Sxx)``, and the figure's
  band is the regression's confidence band of the mean log y. Every run (every seed) is one point.
- With a floor (``floor=True``): ``y = a * x^alpha + floor`` (``floor >= 0``), least squares of the
  residuals ``log(a x^alpha + floor) - log y`` (scipy's ``least_squares`` from a few starting floors,
  the best kept). Its interval (and the band) is a percentile bootstrap over the points (runs),
  resampled with replacement from a seeded generator; resamples with too few distinct x are redrawn.
  It needs 4 distinct x (one more than its parameters).
- ``R^2`` is measured in log space: ``1 - SSR / SST`` of ``log y``.

Bad input raises :class:`ScalingError` with one line: fewer than the distinct x values a fit needs,
a value that is not positive (the logarithm) or not finite. Torch-free (numpy, scipy; matplotlib
only for :func:`figure`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FIELDS = {"tokens": "tokens seen", "parameters": "parameters", "steps": "steps"}


class ScalingError(ValueError):
    """Data that no power law can be fitted to; the message is one line."""


@dataclass
class ScalingFit:
    """A fitted ``y = a * x^alpha (+ floor)``; ``ci`` is the ``level`` interval of alpha."""

    a: float
    alpha: float
    ci: tuple[float, float]
    n: int  # points (runs)
    distinct_x: int
    r2: float  # in log space
    level: float = 0.95
    floor: float | None = None  # None: the pure power law
    floor_ci: tuple[float, float] | None = None
    method: str = "t"  # "t" (t-interval of the slope) or "bootstrap"
    se: float | None = None  # standard error of alpha (t method)
    df: int | None = None
    boots: int | None = None  # bootstrap resamples used
    seed: int | None = None
    _band: dict = field(default_factory=dict, repr=False)

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return self.a * x ** self.alpha + (self.floor or 0.0)

    def band(self, x) -> tuple[np.ndarray, np.ndarray]:
        """The ``level`` band of the fitted curve at ``x``: the confidence band of the mean (t
        method) or the pointwise percentiles of the bootstrap fits."""
        lx = np.log(np.asarray(x, dtype=float))
        b = self._band
        if self.method == "t":
            half = b["q"] * b["s"] * np.sqrt(1.0 / self.n + (lx - b["mean_lx"]) ** 2 / b["sxx"])
            mid = math.log(self.a) + self.alpha * lx
            return np.exp(mid - half), np.exp(mid + half)
        params = b["params"]  # (boots, 3): log a, alpha, floor
        curves = np.exp(params[:, :1] + params[:, 1:2] * lx[None, :]) + params[:, 2:3]
        tail = 100 * (1 - self.level) / 2
        return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if not k.startswith("_")}

    def formula(self, metric: str = "y", x: str = "x") -> str:
        return f"{metric} = a * {x}^alpha" + (" + floor" if self.floor is not None else "")

    def summary(self, metric: str = "y", x: str = "x") -> list[str]:
        """Lines to print: the law, a, alpha with its interval, floor, n and R^2."""
        pct = f"{100 * self.level:g}%"
        how = (f"t-interval, {self.df} df, se {self.se:.4g}" if self.method == "t"
               else f"bootstrap over runs, {self.boots} resamples, seed {self.seed}")
        lines = [f"scaling fit: {self.formula(metric, x)}  (least squares in log space; {self.n} runs, "
                 f"{self.distinct_x} distinct {x} values)",
                 f"  a     = {self.a:.6g}",
                 f"  alpha = {self.alpha:.4f}  {pct} CI [{self.ci[0]:.4f}, {self.ci[1]:.4f}]  ({how})"]
        if self.floor is not None:
            lines.append(f"  floor = {self.floor:.6g}  {pct} CI [{self.floor_ci[0]:.6g}, {self.floor_ci[1]:.6g}]")
        lines.append(f"  R^2   = {self.r2:.4f}  (of log {metric})")
        return lines


def _check(x, y, labels, need: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ScalingError(f"scaling fit: x and y must be two lists of equal length (got {x.shape} and {y.shape})")
    labels = list(labels) if labels is not None else [f"point {i + 1}" for i in range(len(x))]
    for name, v in (("x", x), ("y", y)):
        for i, val in enumerate(v):
            if not math.isfinite(val) or val <= 0:
                raise ScalingError(f"scaling fit: {labels[i]}: {name} = {val:g} is not a positive number "
                                   "(a power law is fitted to logarithms)")
    distinct = np.unique(x)
    if distinct.size < need:
        shown = ", ".join(f"{v:g}" for v in distinct)
        raise ScalingError(f"scaling fit: needs at least {need} distinct x values, got {distinct.size}"
                           + (f" ({shown})" if shown else ""))
    return x, y


def _r2(ly: np.ndarray, pred: np.ndarray) -> float:
    ssr, sst = float(((ly - pred) ** 2).sum()), float(((ly - ly.mean()) ** 2).sum())
    return 1.0 - ssr / sst if sst > 0 else (1.0 if ssr == 0 else math.nan)


def _ols(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of ly on lx."""
    mx = lx.mean()
    slope = float(((lx - mx) * (ly - ly.mean())).sum() / ((lx - mx) ** 2).sum())
    return float(ly.mean() - slope * mx), slope


def _fit_floor(lx: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(log a, alpha, floor) minimising sum (log(a x^alpha + floor) - log y)^2, floor >= 0."""
    from scipy.optimize import least_squares

    ly, cx = np.log(y), lx.mean()  # centred log x: better conditioned

    def resid(p):  # p = (log a + alpha * cx, alpha, floor)
        return np.log(np.exp(p[0] + p[1] * (lx - cx)) + p[2]) - ly

    best = None
    for share in (0.0, 0.5, 0.9):
        f0 = share * float(y.min())
        c0, s0 = _ols(lx - cx, np.log(y - f0))
        r = least_squares(resid, [c0, s0, f0], bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, np.inf]),
                          xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
        if best is None or r.cost < best.cost:
            best = r
    c, alpha, floor = best.x
    return np.array([c - alpha * cx, alpha, floor])


def fit_power_law(x, y, floor: bool = False, level: float = 0.95, boots: int = 1000, seed: int = 0,
                  labels=None) -> ScalingFit:
    """Fit ``y = a * x^alpha`` (``floor``: ``+ floor``) by least squares in log space; see the module
    docstring for the intervals. ``labels`` name the points in error messages (e.g. run directories)."""
    if not 0 < level < 1:
        raise ScalingError(f"scaling fit: level must be between 0 and 1, got {level}")
    x, y = _check(x, y, labels, 4 if floor else 3)
    lx, ly, n = np.log(x), np.log(y), len(x)
    distinct = int(np.unique(x).size)
    if not floor:
        from scipy import stats

        intercept, alpha = _ols(lx, ly)
        pred = intercept + alpha * lx
        ssr, sxx = float(((ly - pred) ** 2).sum()), float(((lx - lx.mean()) ** 2).sum())
        df = n - 2
        s = math.sqrt(ssr / df)
        se = s / math.sqrt(sxx)
        q = float(stats.t.ppf((1 + level) / 2, df))
        return ScalingFit(a=math.exp(intercept), alpha=alpha, ci=(alpha - q * se, alpha + q * se), n=n,
                          distinct_x=distinct, r2=_r2(ly, pred), level=level, method="t", se=se, df=df,
                          _band={"q": q, "s": s, "mean_lx": float(lx.mean()), "sxx": sxx})
    p = _fit_floor(lx, y)
    pred = np.log(np.exp(p[0] + p[1] * lx) + p[2])
    rng = np.random.default_rng(seed)
    params, tries = [], 0
    while len(params) < boots:
        tries += 1
        if tries > 20 * boots:
            raise ScalingError(f"scaling fit: the bootstrap drew too few resamples with 4 distinct x values "
                               f"({len(params)} of {boots}); add runs at more x values")
        idx = rng.integers(0, n, n)
        if np.unique(x[idx]).size < 4:
            continue
        params.append(_fit_floor(lx[idx], y[idx]))
    params = np.array(params)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(params, [tail, 100 - tail], axis=0)
    return ScalingFit(a=float(math.exp(p[0])), alpha=float(p[1]), ci=(float(lo[1]), float(hi[1])), n=n,
                      distinct_x=distinct, r2=_r2(ly, pred), level=level, floor=float(p[2]),
                      floor_ci=(float(lo[2]), float(hi[2])), method="bootstrap", boots=boots, seed=seed,
                      _band={"params": params})


def figure(fit: ScalingFit, x, y, path, metric: str = "y", xlabel: str = "x", title: str | None = None) -> None:
    """Log-log figure: the points, the fitted curve and its band, written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .api import REPORT_DPI

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    grid = np.geomspace(x.min(), x.max(), 200)
    lo, hi = fit.band(grid)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x, y, color="C0", zorder=3, label=f"runs (n={fit.n})")
    ax.plot(grid, fit.predict(grid), color="C1",
            label=f"fit: alpha = {fit.alpha:.3f} [{fit.ci[0]:.3f}, {fit.ci[1]:.3f}], R^2 = {fit.r2:.3f}")
    ax.fill_between(grid, lo, hi, color="C1", alpha=0.2,
                    label=f"{100 * fit.level:g}% band ({'t' if fit.method == 't' else 'bootstrap'})")
    if fit.floor is not None and fit.floor > 1e-3 * y.min():  # a floor at ~0 would stretch the log axis
        ax.axhline(fit.floor, color="grey", ls="--", lw=1, label=f"floor {fit.floor:.4g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title or fit.formula(metric, xlabel), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=REPORT_DPI)
    plt.close(fig)
