"""The figures a user opens: blimp.png shows every paradigm's whole name and its legend covers no
bar; hidden_stats.png labels both y axes. The figure is taken at savefig and measured."""

import random

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402


@pytest.fixture
def saved(monkeypatch):
    figs = []
    real = Figure.savefig

    def keep(self, *a, **k):
        figs.append((self, k))
        return real(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figs


@pytest.mark.slow
def test_blimp_png_names_whole_and_a_legend_over_no_bar(tmp_path, saved):
    from matplotlib.patches import Rectangle

    from kinlm_core import blimp

    rng = random.Random(0)
    m = {p: rng.uniform(0.3, 1.0) for p in blimp.PARADIGMS}
    m.update({f: 0.6 for f in blimp.FIELDS}, overall=0.6, pairs=67000)
    m.update({p: 1.0 for p, f in blimp.PARADIGMS.items() if f == "syntax_semantics"})  # full bars at the bottom
    blimp.plot(m, tmp_path / "blimp.png")
    (fig, kw), = saved
    assert (tmp_path / "blimp.png").read_bytes()[:4] == b"\x89PNG"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = FigureCanvasAgg(fig).get_renderer()  # the figure was closed after saving
    ax = fig.axes[0]
    bars = [p.get_window_extent(r) for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0]
    assert len(bars) == 67
    legend = ax.get_legend().get_window_extent(r)
    assert not any(legend.overlaps(b) for b in bars), "the legend covers a bar"
    # the saved area (bbox_inches="tight") holds every tick label whole, the longest name included
    assert kw.get("bbox_inches") == "tight"
    area = fig.get_tightbbox(r).transformed(fig.dpi_scale_trans)
    labels = {t.get_text(): t.get_window_extent(r) for t in ax.get_yticklabels()}
    longest = max(blimp.PARADIGMS, key=len)
    assert longest in labels and all(area.x0 <= b.x0 and b.x1 <= area.x1 for b in labels.values())


@pytest.mark.slow
def test_hidden_stats_png_labels_its_axes(tmp_path, saved):
    from kinlm_core.builtins.analyzers import HiddenStatsConfig
    from kinlm_core.data.tokenizers import ByteTokenizer
    from kinlm_core.testing import tiny_model

    HiddenStatsConfig().analyze(tiny_model().eval(), ByteTokenizer(), ["Hello there, world.", "Two texts."], tmp_path)
    (fig, _), = saved
    assert [ax.get_ylabel() for ax in fig.axes] == ["L2 norm (mean over tokens and texts)",
                                                    "cosine (mean over pairs of tokens)"]
    assert all(ax.get_xlabel() == "layer (0 = embeddings)" for ax in fig.axes)
