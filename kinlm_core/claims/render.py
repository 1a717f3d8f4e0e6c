"""A card for readers: numbers as the page prints them, the card as markdown or JSON (its curves
figure: :mod:`.figures`)."""

from __future__ import annotations

import math

from .figures import MIN_CURVE_POINTS


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


def markdown_card(card: dict, figures_url: str = "") -> str:
    """A claim's card as markdown: source, arms (runs, lr, parameters, tokens, metric), the test,
    fairness notes and the verdict; the curves figure (``card["figure"]``, a file name under
    ``figures_url``) when :func:`.figures.curves_figure` drew one."""
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
    grids = [a for a in card["arms"]  # a test/ metric has no value on tuning runs: they never see the test split
             if any(v is not None for v in (a["lr"].get("metric") or {}).values())]
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
    if card.get("manipulation"):
        from .manipulation import check_text

        lines += [f"Manipulation check {check_text(r)}." + (f" ({r['why']})" if r.get("why") else "")
                  for r in card["manipulation"]]
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
    with the test), manipulation (each check's values, test and whether it passed) and the rest of the card."""
    return {k: v for k, v in card.items() if k != "metric_spec"}
