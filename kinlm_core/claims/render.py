"""A card for readers: numbers as the page prints them, the card as markdown or JSON, and the
curves figure (a logged key against tokens seen, per arm and learning rate)."""

from __future__ import annotations

import math
from pathlib import Path

from .metrics import _curve, _records


def _num(x) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax == 0:
        return "0"
    if ax < 1e-3:
        return f"{x:.2e}"
    return f"{x:.4f}"


def fmt_diff(x, scale: str) -> str:
    """A difference in the test's units: a percentage on the log scale (ratio - 1)."""
    if x is None:
        return "-"
    return f"{100 * x:+.1f}%" if scale == "log" else (_num(x) if x < 0 else "+" + _num(x))


def fmt_p(p) -> str:
    if p is None:
        return "-"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _count(n) -> str:
    return "-" if not n else f"{n:,}"


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


def markdown_card(card: dict, figures_url: str = "") -> str:
    """A claim's card as markdown: source, arms (runs, lr, parameters, tokens, metric), the test,
    fairness notes and the verdict; the curves figure (``card["figure"]``, a file name under
    ``figures_url``) when :func:`curves_figure` drew one."""
    src = card["source"]
    lines = [f"### {card['title']}", "",
             f"`{card['id']}`" + (f" ({card['plugin']})" if card["plugin"] else "") + f", tier {card['tier']}. "
             f"**Verdict: {card['verdict']}**" + (f": {card['reason']}" if card["reason"] else "")
             + (" (not pre-registered: see Registration)." if card["verdict"] in ("supported", "contradicted")
                and not (card.get("registration") or {}).get("pre_registered") else "."), "",
             f"The source: \"{src['statement']}\" ({src['where']})."]
    fig = src.get("figure")
    if fig:
        lines[-1] += f" Its own figure: {fig['value']:g} {fig['unit']} ({fig['text']})."
    lines += ["", f"Metric: {card['metric']}" + (f" (target {_num(card['target'])})" if card.get("target") is not None
                                                   else "") + f"; the claim: the treatment is {card['direction']}"
              + (f" (margin {card['test']['margin']:g})" if card["test"]["margin"] else "")
              + (f" than {card['test']['value']:g}" if card["test"]["kind"] == "one_sample" else " than the baseline")
              + ".", "",
              "| arm | role | spec | runs | learning rate | non-embedding params | total params | tokens seen | metric |",
              "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for a in card["arms"]:
        lr = a["lr"]
        if "grid" in lr:
            lr_txt = (", ".join(f"{k}{'*' if k == lr['chosen'] else ''}: {_num(v)}" if v is not None else f"{k}: -"
                                for k, v in lr["grid"].items()) + f" ({lr['select_on']}, " + (
                f"tuning seed{'s' if len(lr['tuning_seeds']) > 1 else ''} {', '.join(map(str, lr['tuning_seeds']))}"
                if lr.get("tuning_seeds") else "first seed") + ")")
        else:
            lr_txt = (f"no grid: {lr['note']}" if lr.get("note") else
                      f"{lr['fixed']} (the spec's; no grid)" if lr.get("fixed") is not None else "the spec's; no grid")
        spec = a["spec"] + "".join(f" `{s}`" for s in a["set"])
        metric = "-" if a["mean"] is None else _num(a["mean"]) + (f" ± {_num(a['sd'])}" if a["sd"] else "")
        ne = _count(a["params_non_embedding"]) + (f" ({a['params_ratio']:.2f}x)" if a.get("params_ratio") else "")
        lines.append(f"| {a['label']} | {a['role']} | {spec} | {a['n']} | {lr_txt} | {ne} | "
                     f"{_count(a['params_total'])} | {_count(round(a['tokens_seen'])) if a['tokens_seen'] else '-'} | "
                     f"{metric} |")
    lines += [_control_row(r) for r in card.get("controls", [])]
    grids = [a for a in card["arms"] if a["lr"].get("metric")]
    if grids:
        lines += ["", "The metric at each learning rate of the grid (first tuning seed): " + "; ".join(
            f"{a['name']} " + ", ".join(f"{k}: {_num(v)}" for k, v in a["lr"]["metric"].items()) for a in grids) + "."]
    cmp = card["comparison"]
    lines.append("")
    reg = card.get("registration")
    if reg:
        lines.append(_registration_text(reg, card))
        lines.append("")
    if cmp:
        design = card.get("design") or {}
        kind = design.get("test", cmp["test"])
        what = {"welch": "Welch's t-test", "paired": "paired t-test by seed",
                "one_sample": f"one-sample t-test against {card['test'].get('value')}"}[kind]
        sc = cmp["scale"]
        unit = " (treatment / baseline - 1)" if sc == "log" and cmp["test"] != "one_sample" else \
            " (mean / value - 1)" if sc == "log" else ""
        hyp = design.get("hypothesis")
        ptxt = {"non-inferiority": "one-sided p against the margin", "equivalence": "TOST p (the larger one-sided p)"}
        lines.append(f"Test: {what}" + (f" ({design['why']})" if design.get("why") else "")
                     + (f"; Pearson's r of the paired values {design['correlation']:+.2f}"
                        if design.get("correlation") is not None else "")
                     + (f"; hypothesis: {hyp}" if hyp else "") + ".")
        lines.append(f"Difference{unit}: {fmt_diff(cmp['difference'], sc)}, 95% CI [{fmt_diff(cmp['ci95'][0], sc)}, "
                     f"{fmt_diff(cmp['ci95'][1], sc)}], {ptxt.get(hyp, 'p')} = {fmt_p(card['p'])} (df {cmp['df']:.1f})"
                     + (f"; Holm within the family {card['family']} ({card['family_size']} claim"
                        f"{'s' if card['family_size'] > 1 else ''}): p = {fmt_p(card['p_adjusted'])} at level "
                        f"{card['alpha_adjusted']:.3g}" if card.get("p_adjusted") is not None else "")
                     + (f"; Benjamini-Hochberg across the page ({card['page_size']} claims): q = {fmt_p(card['q_bh'])}"
                        if card.get("q_bh") is not None else "")
                     + (f"; detectable with 80% power at that level: "
                        f"{fmt_diff(card['detectable_adjusted'], sc).lstrip('+')}"
                        if card.get("detectable_adjusted") is not None else "") + ".")
        if fig and fig.get("compare") == "difference":
            lines.append(f"The source's figure: {fig['value']:g} {fig['unit']}; ours: {fmt_diff(cmp['difference'], sc)}.")
        elif fig and fig.get("compare") == "treatment":
            tr = next(a for a in card["arms"] if a["role"] == "treatment")
            lines.append(f"The source's figure: {fig['value']:g} {fig['unit']}; ours: {_num(tr['mean'])}.")
    if card.get("floor"):
        fl = card["floor"]
        lines.append("Floor (" + fl["test"] + "): " + "; ".join(
            f"{k} {'differs' if v['differs'] else 'does not differ'} (p = {fmt_p(v['p'])}"
            + (f", {v['correct']:,} of {v['pairs']:,} pairs" if "pairs" in v else "") + ")"
            for k, v in fl["arms"].items()) + ".")
    for ab in card["ablations"]:
        if "error" in ab:
            lines.append(f"Ablation {ab['name']} against the baseline: {ab['error']}.")
        else:
            sc = ab["scale"]
            lines.append(f"Ablation {ab['name']} against the baseline: {fmt_diff(ab['difference'], sc)}, 95% CI "
                         f"[{fmt_diff(ab['ci95'][0], sc)}, {fmt_diff(ab['ci95'][1], sc)}], p = {fmt_p(ab['p'])} "
                         f"({'paired by seed' if ab['test'] == 'paired' else 'Welch'}, unadjusted).")
    lines += [_control_line(r) for r in card.get("controls", []) if r["gate"] is not None]
    if card["fairness"]:
        lines += ["", "Fairness: " + "; ".join(card["fairness"]) + "."]
    for n in card["notes"]:
        lines += ["", n]
    if card["problems"]:
        lines += ["", "Missing: " + "; ".join(card["problems"][:5]) + "."]
    if card.get("figure"):
        lines += ["", f"![{card['id']}: {card['metric']} against tokens seen, per arm and learning rate]"
                      f"({figures_url}{card['figure']})"]
        pts = card.get("curve_points")
        if pts is not None and pts < MIN_CURVE_POINTS:
            lines += ["", f"The curves have {pts} evaluation point{'s' if pts != 1 else ''} a run, fewer than the "
                          f"{MIN_CURVE_POINTS} a readable curve needs (the arms' specs evaluate too rarely: eval.every)."]
    return "\n".join(lines) + "\n"


def _registration_text(reg: dict, card: dict) -> str:
    """The registration paragraph: its state, the quoted source, the margin's and family's reasons,
    the seeds and the power the design has."""
    f = reg.get("fields")
    text = "Registration: " + reg["text"]
    if f:
        text += (f" Quoted: \"{f['quote']}\" ({f['quote_where']}). Margin: {f['margin_reason']}. Family "
                 f"{card['family']}: {f['family_reason']}. Seeds: tuning {', '.join(map(str, f['tuning_seeds'])) or '-'}"
                 f"; verdict {', '.join(map(str, f['verdict_seeds']))}." + (f" Power: {f['power_note']}" if f["power_note"]
                                                                            else ""))
        text = text.rstrip(".") + "."
    for n in reg.get("seed_notes", []):
        text += f" Note: {n}."
    return text


def _control_row(r: dict) -> str:
    """A control as a row of the arms table: what it is, its runs (seeds) and its mean."""
    what = (f"{'unigram' if r.get('order') == 1 else 'bigram'} counted on the training split, add-{r.get('k', 0):g}"
            if r["role"] == "ngram" else f"the treatment at step 0: {r.get('what', '')}" if r["role"] == "untrained"
            else r.get("what", ""))
    vals = [v for v in r.get("values", []) if v is not None]
    m = r.get("mean")
    sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else None
    metric = "-" if m is None else _num(m) + (f" ± {_num(sd)}" if sd else "")
    return f"| {r['label']} | control: {r['role']} | {what} | {len(vals)} | - | - | - | - | {metric} |"


def _control_line(r: dict) -> str:
    """Whether the treatment beats the control, with the figures."""
    g = r["gate"]
    if r["role"] == "ngram":
        parts = [f"{n} {', '.join(_num(x) for x in v['losses'])} against {_num(v['ngram_loss'])} nats per token "
                 f"({'beaten' if v['beaten'] else 'not beaten'} by every run)" for n, v in r["per_arm"].items()]
        return f"Control {r['label']} on the test split: " + "; ".join(
            parts + [f"{n} not evaluated" for n in g.get("missing", [])]) + "."
    if "error" in g:
        return f"Control {r['label']} ({r['role']}): {g['error']}."
    sc = g["scale"]
    return (f"Control {r['label']} ({r['role']}): treatment - control {fmt_diff(g['difference'], sc)}, 95% CI "
            f"[{fmt_diff(g['ci95'][0], sc)}, {fmt_diff(g['ci95'][1], sc)}], p = {fmt_p(g['p'])} "
            f"({'paired by seed' if g['test'] == 'paired' else 'Welch'}, unadjusted): "
            + ("beaten." if g["beaten"] else "not beaten, so the verdict cannot be supported."))


def json_card(card: dict) -> dict:
    """The card as JSON: id, verdict, difference, ci95 ([lo, hi] or null), p (the claim's test,
    unadjusted: two-sided, or one-sided / TOST for a margin), design (the test used and why, the
    hypothesis, Pearson's r of paired values), family, p_adjusted (Holm within the family),
    alpha_adjusted (its Holm level), q_bh (Benjamini-Hochberg across the page), detectable_adjusted,
    registration (its state and hash), controls (each control's values and its gate: beaten or not,
    with the test) and the rest of the card."""
    return {k: v for k, v in card.items() if k != "metric_spec"}
