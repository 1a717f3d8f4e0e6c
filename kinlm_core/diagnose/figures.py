"""The suite's figures: accuracy against difficulty per task, and MQAR's accuracy against state bytes.
Every point is a mean over verdict seeds with its 95% t-interval as a band (lines) or error bar (the
attention points); legends sit outside the axes, below the panels, so they never cover data."""

from __future__ import annotations

import math
from pathlib import Path

from .report import interval


def _clip(values) -> list[float]:
    """An interval's ends drawn inside [0, 1] (an accuracy cannot leave it; the table keeps the t-interval)."""
    return [min(1.0, max(0.0, v)) for v in values]


def _setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_difficulty(sel, results: dict, path: Path) -> Path:
    plt = _setup()
    from ..api import REPORT_DPI

    tasks = [t for t in sel.tasks if results.get(t.task)]
    cols = min(3, len(tasks)) or 1
    rows = max(1, math.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows + 0.9), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    handles = {}
    for ax, task in zip(axes.ravel(), tasks):
        r, knob = results[task.task], task.tiers[sel.tier_name].knob
        levels = r["levels"]
        for j, a in enumerate(sel.archs):
            pts = [(i, *iv) for i, lv in enumerate(levels)
                   if (iv := interval(r["acc"].get((a.architecture, lv), [])))]
            if not pts:
                continue
            xs, ms, lo, hi = zip(*pts)
            (h,) = ax.plot(xs, ms, marker="o", ms=3, color=colors[j % 20], label=a.architecture)
            ax.fill_between(xs, _clip(lo), _clip(hi), color=colors[j % 20], alpha=0.15, linewidth=0)
            handles[a.architecture] = h
        ax.set_xticks(range(len(levels)), [str(v) for v in levels])
        ax.set_xlabel(knob)
        ax.set_ylabel("test accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(task.task + (" (dropped)" if r["dropped"] else ""), fontsize=10)
    for ax in axes.ravel()[len(tasks):]:
        ax.axis("off")
    ncol = min(5, max(1, len(handles)))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    legend_rows = math.ceil(len(handles) / ncol) if handles else 0
    fig.tight_layout(rect=(0, 0.04 + 0.035 * legend_rows, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=REPORT_DPI)
    plt.close(fig)
    return path


def accuracy_vs_state(sel, task, state: dict, path: Path) -> Path:
    """Fixed-state architectures as lines over their state sizes (log bytes) with bands; attention
    models as single points with error bars at their KV cache size (several attention models of one
    size are drawn side by side, a few percent apart, so none hides another)."""
    plt = _setup()
    from ..api import REPORT_DPI

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "os^DvP*X"
    by_arch: dict[str, list] = {}
    for (a, v), s in state.items():
        by_arch.setdefault(a, []).append((s["bytes"], v, s["acc"]))
    attention = sorted(a for a, pts in by_arch.items() if all(v is None for _, v, _ in pts))
    for j, (a, pts) in enumerate(sorted(by_arch.items())):
        pts.sort(key=lambda p: p[0])
        if a in attention:  # side by side around their common KV-cache size, so no point hides another
            k = attention.index(a) - (len(attention) - 1) / 2
            pts = [(b * 1.06 ** k, v, acc) for b, v, acc in pts]
        ivs = [(b, *iv) for b, _, acc in pts if (iv := interval(acc))]
        if not ivs:
            continue
        xs, ms, lo, hi = zip(*ivs)
        if all(v is None for _, v, _ in pts):  # attention: its own point(s)
            lo, hi = _clip(lo), _clip(hi)
            ax.errorbar(xs, ms, yerr=[[m - l for m, l in zip(ms, lo)], [h - m for m, h in zip(ms, hi)]],
                        fmt=markers[j % len(markers)], ms=7, capsize=3, label=f"{a} (KV cache)")
        else:
            (h,) = ax.plot(xs, ms, marker=markers[j % len(markers)], ms=4, label=a)
            ax.fill_between(xs, _clip(lo), _clip(hi), color=h.get_color(), alpha=0.18, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("state carried per sequence (bytes, fp32, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    t = task.tiers[sel.tier_name]
    ax.set_title(f"{task.task}: accuracy against state size ({t.knob} = {sel.state_level(task)})", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=REPORT_DPI, bbox_inches="tight")
    plt.close(fig)
    return path
