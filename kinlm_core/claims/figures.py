"""A card's curves figure (#30 item 9): the claim's logged key against tokens seen, per arm, with
the learning-rate grid, the verdict seeds' band and the controls beside the arms."""

from __future__ import annotations

from pathlib import Path

from .metrics import _curve, _records

MIN_CURVE_POINTS = 8  # evaluations a run's curve needs to be read as a curve


def _tokens_label(x, _pos=None) -> str:
    """A tick label for tokens seen: 0, 500, 12k, 1.2M."""
    if x == 0:
        return "0"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def _band(curves: list[list[tuple[float, float]]]):
    """The seeds' curves on the tokens every seed logged (a seed's value at another seed's point:
    linear between its own): (xs, mean, low, high), the band being the seeds' range."""
    from .metrics import _interp

    curves = [sorted(c) for c in curves if c]
    if not curves:
        return [], [], [], []
    lo_x, hi_x = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    xs = sorted({x for c in curves for x, _ in c if lo_x <= x <= hi_x})
    ys = [[_interp(c, x) for c in curves] for x in xs]
    keep = [(x, [v for v in y if v is not None]) for x, y in zip(xs, ys)]
    keep = [(x, y) for x, y in keep if y]
    return ([x for x, _ in keep], [sum(y) / len(y) for _, y in keep], [min(y) for _, y in keep],
            [max(y) for _, y in keep])


def _controls_on(card: dict, key: str) -> tuple[dict, float | None]:
    """The controls a curves figure of ``key`` can draw: the n-gram's loss per arm (on the test
    split; loss curves only) and the untrained weights' mean on the same statistic."""
    stat = key.split("/", 1)[1] if "/" in key else key
    metric_key = card["metric_spec"].get("key", "")
    ngram: dict = {}
    untrained = None
    for r in card.get("controls", []):
        if r["role"] == "ngram" and stat == "loss":
            for arm, v in (r.get("per_arm") or {}).items():
                ngram[arm] = (v["ngram_loss"], r["label"])
        elif r["role"] == "untrained" and r.get("mean") is not None and "step-0 weights" in r.get("what", "") \
                and metric_key.split("/", 1)[-1] == stat:
            untrained = r["mean"]
    return ngram, untrained


def curves_fig(card: dict):
    """The curves figure of a card (matplotlib Figure, or None: see :func:`curves_figure`)."""
    m = card["metric_spec"]
    if m.get("kind") not in ("key", "tokens_to_target"):
        return None
    key = m["key"]
    if key.startswith("test/"):  # decided on the test split at the end; the curves are validation's
        key = "eval/" + key.split("/", 1)[1]
    arms = [a for a in card["arms"] if a["runs"] or a.get("grid_runs")]
    curves = {a["name"]: ([(k, _curve(_records(Path(r)), key)) for k, r in a.get("grid_runs", {}).items()],
                          [_curve(_records(Path(r)), key) for r in a["runs"]]) for a in arms}
    if not any(c for grid, seeds in curves.values() for c in [*(c for _, c in grid), *seeds]):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ngram, untrained = _controls_on(card, key)
    card["curve_points"] = min(len(c) for _, seeds in curves.values() for c in seeds if c) if any(
        c for _, seeds in curves.values() for c in seeds) else None
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.6), sharey=True, squeeze=False)
    for ax, a in zip(axes[0], arms):
        grid, seeds = curves[a["name"]]
        for k, c in grid:
            if c:
                ax.plot(*zip(*c), lw=1, alpha=0.6, label=f"lr {k}, tuning seed" + (" (chosen)" if k == a["lr"].get(
                    "chosen") else ""))
        xs, mean, low, high = _band(seeds)
        if xs:
            n = sum(bool(c) for c in seeds)
            ax.fill_between(xs, low, high, color="black", alpha=0.15, lw=0, label=f"verdict seeds' range ({n})")
            ax.plot(xs, mean, lw=2, color="black", label="verdict seeds' mean")
        if card.get("target") is not None:
            ax.axhline(card["target"], ls="--", color="grey", lw=1, label="target")
        if a["name"] in ngram:
            v, label = ngram[a["name"]]
            ax.axhline(v, ls=":", color="tab:red", lw=1.5, label=f"{label} (test split)")
        if untrained is not None and a["role"] == "treatment":
            ax.plot([0], [untrained], marker="o", ls="none", color="tab:purple", label="untrained (step 0)")
        ax.set_title(f"{a['label']} ({a['role']})", fontsize=9)
        ax.set_xlabel("tokens seen")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=2))
        ax.xaxis.set_major_formatter(FuncFormatter(_tokens_label))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel(key)
    fig.suptitle(card["id"], fontsize=10)
    fig.tight_layout()
    return fig


def curves_figure(card: dict, folder) -> str | None:
    """For a claim whose metric is a logged key (``key`` or ``tokens_to_target``; a ``test/X`` key:
    its validation curve ``eval/X``): the key against tokens seen, one panel per arm: every
    learning rate of the grid on the first tuning seed (thin), the verdict seeds' mean at the chosen
    rate with a band for their range, the target as a dashed line, and the controls beside them: the
    n-gram's test loss as a dotted line (loss curves), the untrained weights' value as a marker at
    step 0 (treatment). Tick labels are few (at most 5 per axis) and short (1.2M), so they never
    overlap. Writes FOLDER/<id>.png and returns its file name (None for other metrics or when no
    run logged the key)."""
    fig = curves_fig(card)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    from ..api import FIGURE_DPI

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{card['id']}.png"
    fig.savefig(folder / name, dpi=FIGURE_DPI)
    plt.close(fig)
    return name
