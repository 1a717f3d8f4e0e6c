"""The token-geometry analysis (imports torch and matplotlib).

For one prompt with hidden states H_l (T x C), l = 0 (embeddings) .. n-1 (after the final norm):

    cosine(l) = 1 / (T (T - 1)) * sum_{i != j} <h_i, h_j> / (|h_i| |h_j|)     (diagonal excluded)
    norm(l)   = 1 / T * sum_t |h_t|
    update(l) = 1 / T * sum_t |h_t^l - h_t^{l-1}|                             (l >= 1)
    grad(l)   = |dCE / dH_l|  (Frobenius norm; CE = mean next-token cross-entropy of the prompt)

Each prompt is run alone (a batch of one), so padding never enters a metric (the source padded
batches with token 0 and let the pads in). Over prompts: mean and std (population) per layer.
"""

from __future__ import annotations

import csv
import json
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SOURCE_PAIRS = [("LLaMA-PreLN", "LLaMA-PostLN"), ("Standard-PreLN", "Standard-PostLN"), ("LLaMA-PreLN", "Standard-PreLN")]
"""The source's difference columns: PreLN - PostLN for both families, and LLaMA - Standard (PreLN)."""

METRICS = (("cosine", "mean token cosine"), ("norm", "mean token norm"), ("update", "mean update norm"),
           ("grad", "gradient norm |dCE/dh|"))


# --- the metrics ---------------------------------------------------------------------------------


def similarity(h: torch.Tensor) -> torch.Tensor:
    """(T, C) -> (T, T) cosine similarity of every pair of rows."""
    u = F.normalize(h.float(), dim=-1)
    return u @ u.T


def mean_offdiag_cosine(h: torch.Tensor) -> float:
    """Mean cosine over the T (T - 1) ordered pairs i != j of the rows of h (T, C), T >= 2."""
    T = h.size(0)
    if T < 2:
        raise ValueError(f"the mean off-diagonal cosine needs at least 2 tokens, got {T}")
    s = similarity(h)
    return float((s.sum() - s.diagonal().sum()) / (T * (T - 1)))


def prompt_metrics(hidden: list[torch.Tensor]) -> dict:
    """hidden: n tensors (T, C) of one prompt -> {"cosine": [n], "norm": [n], "update": [n] (None at 0)}."""
    hs = [h.detach().float() for h in hidden]
    return {
        "cosine": [mean_offdiag_cosine(h) for h in hs],
        "norm": [float(h.norm(dim=-1).mean()) for h in hs],
        "update": [None] + [float((b - a).norm(dim=-1).mean()) for a, b in zip(hs[:-1], hs[1:])],
    }


# --- running a model over prompts ----------------------------------------------------------------


def packaged_prompts() -> list[str]:
    """The source's 87 WikiText-2 validation excerpts (see ATTRIBUTION.md)."""
    text = resources.files("kinlm_token_geometry").joinpath("prompts.txt").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def choose_texts(cfg, texts: list[str]) -> list[str]:
    if cfg.prompts:
        texts = list(cfg.prompts)
    elif cfg.packaged_prompts:
        texts = packaged_prompts()
    return list(texts)[: cfg.max_prompts] if cfg.max_prompts else list(texts)


def _hidden_states(model, ids: torch.Tensor, with_grad: bool, vocab: int):
    """One prompt (1, T) -> (list of n (T, C) detached states, list of n gradient norms or None)."""
    if not with_grad:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        hs = out.hidden_states
        if not hs:
            raise ValueError("token_geometry needs a model that returns hidden states (forward(ids, output_hidden_states=True))")
        return [h[0].detach() for h in hs], None
    with torch.enable_grad():
        out = model(ids, output_hidden_states=True)
        hs = out.hidden_states
        if not hs:
            raise ValueError("token_geometry needs a model that returns hidden states (forward(ids, output_hidden_states=True))")
        logits = out.logits
        if logits is None or logits.dim() != 3 or logits.size(-1) < vocab:
            raise ValueError("token_geometry: gradient_norm needs a model with next-token logits (B, T, V)")
        if not all(h.requires_grad for h in hs):
            raise ValueError("token_geometry: gradient_norm needs hidden states that require grad (trainable parameters)")
        loss = F.cross_entropy(logits[0, :-1, :vocab].float(), ids[0, 1:])
        grads = torch.autograd.grad(loss, list(hs), allow_unused=True)
    return [h[0].detach() for h in hs], [float(g.norm()) if g is not None else math.nan for g in grads]


def collect(cfg, model, tokenizer, texts: list[str]) -> dict:
    """Per-prompt metrics for every text with >= 2 tokens, plus the heatmap prompt's similarity
    matrices at every layer (first ``heatmap_tokens`` tokens)."""
    texts = choose_texts(cfg, texts)
    device = next(model.parameters()).device
    block = getattr(model, "block_size", None) or cfg.max_tokens
    limit = min(cfg.max_tokens, block)
    per, grads, used, heat = [], [], 0, None
    for text in texts:
        ids = tokenizer.encode(text)[:limit]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids], dtype=torch.long, device=device)
        hs, g = _hidden_states(model, x, cfg.gradient_norm, tokenizer.vocab_size)
        per.append(prompt_metrics(hs))
        if g is not None:
            grads.append(g)
        if used == cfg.heatmap_prompt:
            t = min(len(ids), cfg.heatmap_tokens)
            heat = {"ids": ids[:t], "labels": [_label(tokenizer, i) for i in ids[:t]],
                    "sim": np.stack([similarity(h[:t]).cpu().numpy() for h in hs])}
        used += 1
    if not per:
        raise ValueError("token_geometry: no prompt with at least 2 tokens")
    if len({len(p["cosine"]) for p in per}) != 1:
        raise ValueError("token_geometry: the model returned a different number of hidden states for different prompts")
    return {"per_prompt": per, "grads": grads or None, "heat": heat}


def _label(tokenizer, i: int) -> str:
    try:
        s = tokenizer.decode([i])
    except Exception:  # noqa: BLE001 - a byte that is half a UTF-8 character, etc.
        s = f"<{i}>"
    s = s.replace("\n", "\\n").replace("\t", "\\t")
    return s if s.strip() else (repr(s) if s else f"<{i}>")


def aggregate(collected: dict) -> dict:
    """Mean and std over prompts per layer, under the stable metrics.json keys, plus scalars."""
    per = collected["per_prompt"]
    n = len(per[0]["cosine"])

    def stats(key):
        a = np.array([[np.nan if v is None else v for v in p[key]] for p in per], dtype=float)
        return a.mean(0), a.std(0)

    out = {"layers": n, "prompts": len(per)}
    for key, name in (("cosine", "mean_cosine"), ("norm", "norm"), ("update", "update_norm")):
        m, s = stats(key)
        out[f"{name}_per_layer"] = _list(m)
        out[f"std_{name.replace('mean_', '')}_per_layer"] = _list(s)
    if collected["grads"]:
        g = np.array(collected["grads"], dtype=float)
        out["grad_norm_per_layer"], out["std_grad_norm_per_layer"] = _list(g.mean(0)), _list(g.std(0))
    c = out["mean_cosine_per_layer"]
    out.update({"cosine_embeddings": c[0], "cosine_last": c[-1], "cosine_max": max(c),
                "cosine_argmax_layer": int(np.argmax(c)), "norm_last": out["norm_per_layer"][-1],
                "update_norm_mean": float(np.mean(out["update_norm_per_layer"][1:])) if n > 1 else 0.0})
    return out


def _list(a) -> list:
    return [None if (isinstance(v, float) and math.isnan(v)) else float(v) for v in np.asarray(a, dtype=float)]


# --- figures -------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(metrics: dict, key: str):
    """(x, mean, std) of one metric with the null update at layer 0 dropped."""
    names = {"cosine": ("mean_cosine_per_layer", "std_cosine_per_layer"),
             "norm": ("norm_per_layer", "std_norm_per_layer"),
             "update": ("update_norm_per_layer", "std_update_norm_per_layer"),
             "grad": ("grad_norm_per_layer", "std_grad_norm_per_layer")}[key]
    if names[0] not in metrics:
        return None
    rows = [(i, m, s) for i, (m, s) in enumerate(zip(metrics[names[0]], metrics[names[1]])) if m is not None]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] or 0.0 for r in rows]


def plot_per_layer(metrics: dict, path: Path, title: str = "") -> None:
    plt = _plt()
    keys = [k for k, _ in METRICS if _series(metrics, k)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.3))
    for ax, key in zip(np.atleast_1d(axes), keys):
        x, m, s = _series(metrics, key)
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3)
        ax.set(title=dict(METRICS)[key], xlabel="layer (0 = embeddings)")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_heatmap(sim: np.ndarray, labels: list[str], path: Path, title: str, vmin=-1.0, vmax=1.0) -> None:
    plt = _plt()
    t = len(labels)
    size = 2.5 + 0.18 * t
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(sim, vmin=vmin, vmax=vmax, cmap="RdBu_r")
    ax.set_xticks(range(t), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(t), labels, fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def heatmap_layers(cfg, n: int) -> list[int]:
    if cfg.heatmap_layers is None:
        return sorted({0, (n - 1) // 4, (n - 1) // 2, n - 1})
    out = []
    for layer in cfg.heatmap_layers:
        if not -n <= layer < n:
            raise ValueError(f"token_geometry.heatmap_layers: layer {layer} out of range for {n} hidden states")
        out.append(layer % n)
    return sorted(set(out))


def write_csv(metrics: dict, path: Path) -> None:
    keys = [k for k in ("mean_cosine_per_layer", "std_cosine_per_layer", "norm_per_layer", "std_norm_per_layer",
                        "update_norm_per_layer", "std_update_norm_per_layer", "grad_norm_per_layer",
                        "std_grad_norm_per_layer") if k in metrics]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer"] + [k.replace("_per_layer", "") for k in keys])
        for i in range(metrics["layers"]):
            w.writerow([i] + ["" if metrics[k][i] is None else f"{metrics[k][i]:.6g}" for k in keys])


# --- one model -----------------------------------------------------------------------------------


def _analyze_one(cfg, model, tokenizer, texts, out_dir: Path, title: str = ""):
    out_dir.mkdir(parents=True, exist_ok=True)
    collected = collect(cfg, model, tokenizer, texts)
    metrics = aggregate(collected)
    if cfg.figures:
        plot_per_layer(metrics, out_dir / "per_layer.png", title)
    write_csv(metrics, out_dir / "per_layer.csv")
    heat = collected["heat"]
    if heat is not None:
        np.savez(out_dir / "similarity.npz", ids=np.array(heat["ids"]), labels=np.array(heat["labels"]), sim=heat["sim"])
        for layer in heatmap_layers(cfg, metrics["layers"]) if cfg.figures else []:
            plot_heatmap(heat["sim"][layer], heat["labels"], out_dir / f"heatmap_layer_{layer:02d}.png",
                         f"{title + ': ' if title else ''}cosine, layer {layer}")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics, heat


def analyze(cfg, model, tokenizer, texts, out_dir: Path) -> dict:
    metrics, _ = _analyze_one(cfg, model, tokenizer, texts, out_dir)
    if cfg.evolution and out_dir.name.startswith("step_"):
        earlier = sorted(d for d in out_dir.parent.glob("step_*") if d != out_dir and (d / "metrics.json").exists()
                         and d.name < out_dir.name)
        if earlier:
            if cfg.figures:
                evolution_figures(earlier + [out_dir], out_dir)
            first = json.loads((earlier[0] / "metrics.json").read_text())
            if first.get("layers") == metrics["layers"]:
                metrics["cosine_last_change"] = metrics["cosine_last"] - first["cosine_last"]
                metrics["cosine_mean_abs_change"] = float(np.mean(
                    [abs(a - b) for a, b in zip(metrics["mean_cosine_per_layer"], first["mean_cosine_per_layer"])]))
            (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# --- several models ------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name) or "model"


def default_pairs(names: list[str]) -> list[tuple[str, str]]:
    present = [(a, b) for a, b in SOURCE_PAIRS if a in names and b in names]
    return present or [(n, names[0]) for n in names[1:]]


def _rel(layer_frac: float, n: int) -> int:
    return int(round(layer_frac * (n - 1)))


def analyze_many(cfg, models: dict, texts, out_dir: Path) -> dict:
    """Every model into out_dir/<name>/, then one-line-per-model plots (compare_<metric>.png),
    comparison.csv (per-model columns and a - b difference columns) and difference heatmaps
    (diff_heatmap_<a>_minus_<b>.png) at layers 0, L/4, L/2 and the last."""
    if not models:
        raise ValueError("token_geometry.analyze_many: no models given")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(models)
    res, heats = {}, {}
    for name, (model, tok) in models.items():
        res[name], heats[name] = _analyze_one(cfg, model, tok, texts, out_dir / _safe(name), name)
    pairs = [tuple(p) for p in cfg.differences] if cfg.differences is not None else default_pairs(names)
    for a, b in pairs:
        for x in (a, b):
            if x not in res:
                raise ValueError(f"token_geometry.differences: no model named '{x}'; models: {', '.join(names)}")

    plt = _plt()
    for key, label in METRICS if cfg.figures else []:
        if not all(_series(res[n], key) for n in names):
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for n in names:
            x, m, s = _series(res[n], key)
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=n)
        ax.set(title=label, xlabel="layer (0 = embeddings)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"compare_{key}.png", dpi=80)
        plt.close(fig)

    cols = [("cosine", "mean_cosine_per_layer"), ("norm", "norm_per_layer"), ("update", "update_norm_per_layer")]
    if all("grad_norm_per_layer" in res[n] for n in names):
        cols.append(("grad", "grad_norm_per_layer"))
    rows = max(res[n]["layers"] for n in names)

    def val(n, k, i):
        v = res[n][k]
        return v[i] if i < len(v) else None

    out = {}
    with open(out_dir / "comparison.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer"] + [f"{n}:{c}" for c, _ in cols for n in names] + [f"{a}-{b}:{c}" for c, _ in cols for a, b in pairs])
        for i in range(rows):
            line = [i] + [val(n, k, i) for _, k in cols for n in names]
            for _, k in cols:
                for a, b in pairs:
                    va, vb = val(a, k, i), val(b, k, i)
                    line.append(None if va is None or vb is None else va - vb)
            w.writerow(["" if v is None else (v if isinstance(v, int) else f"{v:.6g}") for v in line])
    for n in names:
        out.update({f"{n}/{k}": v for k, v in res[n].items() if isinstance(v, (int, float))})
    for a, b in pairs:
        out[f"{a}-{b}/cosine_last"] = res[a]["cosine_last"] - res[b]["cosine_last"]
        ha, hb = heats[a], heats[b]
        if ha is None or hb is None or list(ha["ids"]) != list(hb["ids"]):
            out[f"{a}-{b}/heatmap"] = "skipped: the two models tokenize the heatmap prompt differently"
            continue
        if not cfg.figures:
            continue
        fracs = [0.0, 0.25, 0.5, 1.0]
        fig, axes = plt.subplots(3, len(fracs), figsize=(3.3 * len(fracs), 9.6))
        for j, f in enumerate(fracs):
            la, lb = _rel(f, len(ha["sim"])), _rel(f, len(hb["sim"]))
            for r, (m, t, lim) in enumerate(((ha["sim"][la], f"{a} L{la}", 1), (hb["sim"][lb], f"{b} L{lb}", 1),
                                             (ha["sim"][la] - hb["sim"][lb], f"difference L{la}", 2))):
                ax = axes[r, j]
                im = ax.imshow(m, vmin=-lim, vmax=lim, cmap="RdBu_r")
                ax.set_title(t, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks(range(len(ha["labels"])), ha["labels"], fontsize=5) if j == 0 else ax.set_yticks([])
                fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(f"token cosine: {a} - {b}")
        fig.tight_layout()
        fig.savefig(out_dir / f"diff_heatmap_{_safe(a)}_minus_{_safe(b)}.png", dpi=80)
        plt.close(fig)
    (out_dir / "comparison.json").write_text(json.dumps({"models": res, "differences": [list(p) for p in pairs],
                                                       "summary": out}, indent=2) + "\n")
    return out


# --- evolution over a run ------------------------------------------------------------------------


def evolution_figures(step_dirs: list[Path], out_dir: Path) -> list[Path]:
    """From analyses of one model at several steps (folders step_NNNNNNN with metrics.json and
    similarity.npz): evolution.png (cosine per layer at every step; first vs last with the per-layer
    change as bars; norm and update norm first vs last) and evolution_heatmaps.png (layers 0, L/3,
    2L/3, L: first / last / difference), the source's before/after figures."""
    plt = _plt()
    ms = [(int(d.name.split("_")[-1]) if d.name.startswith("step_") else i, json.loads((d / "metrics.json").read_text()))
          for i, d in enumerate(step_dirs)]
    (s0, first), (s1, last) = ms[0], ms[-1]
    written = []
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    cmap = plt.get_cmap("viridis")
    for i, (s, m) in enumerate(ms):
        axes[0].plot(m["mean_cosine_per_layer"], marker=".", color=cmap(i / max(1, len(ms) - 1)), label=f"step {s}")
    axes[0].set(title="mean token cosine per layer", xlabel="layer")
    axes[0].legend(fontsize=6)
    if first["layers"] == last["layers"]:
        x = np.arange(first["layers"])
        c0, c1 = np.array(first["mean_cosine_per_layer"]), np.array(last["mean_cosine_per_layer"])
        axes[1].plot(x, c0, marker="o", label=f"step {s0}")
        axes[1].plot(x, c1, marker="o", label=f"step {s1}")
        axes[1].bar(x, c1 - c0, alpha=0.3, color="gray", label="change")
        axes[1].set(title="cosine: before vs after", xlabel="layer")
        axes[1].legend(fontsize=7)
        for ax, key, title in ((axes[2], "norm_per_layer", "mean norm"), (axes[3], "update_norm_per_layer", "update norm")):
            ax.plot(first[key], marker="o", label=f"step {s0}")
            ax.plot(last[key], marker="o", label=f"step {s1}")
            ax.set(title=f"{title}: before vs after", xlabel="layer")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "evolution.png", dpi=80)
    plt.close(fig)
    written.append(out_dir / "evolution.png")

    f0, f1 = step_dirs[0] / "similarity.npz", step_dirs[-1] / "similarity.npz"
    if f0.exists() and f1.exists():
        a, b = np.load(f0), np.load(f1)
        if list(a["ids"]) == list(b["ids"]) and a["sim"].shape == b["sim"].shape:
            n = a["sim"].shape[0]
            layers = sorted({0, round((n - 1) / 3), round(2 * (n - 1) / 3), n - 1})
            fig, axes = plt.subplots(3, len(layers), figsize=(3.3 * len(layers), 9.6), squeeze=False)
            for j, layer in enumerate(layers):
                for r, (mat, t, lim) in enumerate(((a["sim"][layer], f"step {s0}, layer {layer}", 1),
                                                   (b["sim"][layer], f"step {s1}, layer {layer}", 1),
                                                   (b["sim"][layer] - a["sim"][layer], "after - before", 2))):
                    ax = axes[r, j]
                    im = ax.imshow(mat, vmin=-lim, vmax=lim, cmap="RdBu_r")
                    ax.set_title(t, fontsize=8)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    fig.colorbar(im, ax=ax, fraction=0.046)
            fig.tight_layout()
            fig.savefig(out_dir / "evolution_heatmaps.png", dpi=80)
            plt.close(fig)
            written.append(out_dir / "evolution_heatmaps.png")
    return written
