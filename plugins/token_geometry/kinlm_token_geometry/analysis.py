"""The token-geometry analysis (imports torch and matplotlib).

States: ``layers="hidden_states"`` takes the model's hidden states (l = 0 the embeddings ..
n-1 after the final norm); ``layers="source"`` hooks each block's output (0..L-1) and the final
norm (L), as the source's analyzer does. For one text with states H_l (T x C), u_t = h_t / |h_t|:

    pairwise_cosine(l) = 1 / (T (T - 1)) * sum_{i != j} <u_i, u_j>        (the source's cosine_sim)
    intra_similarity(l) = 1 / T * sum_t cos(h_t, mean_s h_s)              (Ethayarajh's IntraSim, the text
                                                                            taken as his sentence)
    norm(l)   = 1 / T * sum_t |h_t|
    update(l) = 1 / T * sum_t |h_t^l - h_t^{l-1}|                          (l >= 1)
    grad(l)   = |dCE / dH_l|  (Frobenius norm; CE = mean next-token cross-entropy of the text)

Over the texts (Ethayarajh 2019), with every token of every text a "word" in its context:

    anisotropy(l) = mean of <u_i, u_j> over all ordered pairs of tokens i, j from different texts
                  = (|sum_all u|^2 - sum_texts |sum_text u|^2) / (N^2 - sum_texts T^2)
                  (the expectation his 1,000 random pairs estimate, computed exactly)
    self_similarity(l) = mean over token ids w in >= k texts of the mean <u_a, u_b> over ordered
                  pairs a != b of w's first occurrences in different texts
    *_adjusted(l) = measure(l) - anisotropy(l)

Each text is run alone (a batch of one), so padding never enters a metric (the source padded
batches with token 0 and let the pads in). Over texts: mean and std (population) per layer.
"""

from __future__ import annotations

import csv
import json
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np

from kinlm_core import FIGURE_DPI
import torch
import torch.nn.functional as F

SOURCE_PAIRS = [("LLaMA-PreLN", "LLaMA-PostLN"), ("Standard-PreLN", "Standard-PostLN"), ("LLaMA-PreLN", "Standard-PreLN")]
"""The source's difference columns: PreLN - PostLN for both families, and LLaMA - Standard (PreLN)."""

METRICS = (("pairwise_cosine", "within-text pairwise cosine"), ("intra_similarity", "intra-sentence similarity"),
           ("anisotropy", "anisotropy (cross-text cosine)"), ("norm", "mean token norm"),
           ("update_norm", "mean update norm"), ("grad_norm", "gradient norm |dCE/dh|"))
"""The per-layer measures: metrics.json key ``<key>_per_layer`` (std over texts ``std_<key>_per_layer``)."""

PER_TEXT = ("pairwise_cosine", "intra_similarity", "norm", "update_norm")


# --- the measures --------------------------------------------------------------------------------


def similarity(h: torch.Tensor) -> torch.Tensor:
    """(T, C) -> (T, T) cosine similarity of every pair of rows."""
    u = F.normalize(h.float(), dim=-1)
    return u @ u.T


def pairwise_cosine(h: torch.Tensor) -> float:
    """Mean cosine over the T (T - 1) ordered pairs i != j of the rows of h (T, C), T >= 2."""
    T = h.size(0)
    if T < 2:
        raise ValueError(f"the within-text pairwise cosine needs at least 2 tokens, got {T}")
    s = similarity(h)
    return float((s.sum() - s.diagonal().sum()) / (T * (T - 1)))


def intra_similarity(h: torch.Tensor) -> float:
    """Ethayarajh's IntraSim of one context: mean over rows of h (T, C) of cos(h_t, mean of the rows)."""
    h = h.float()
    return float(F.cosine_similarity(h, h.mean(0, keepdim=True), dim=-1).mean())


def text_metrics(hidden: list[torch.Tensor]) -> dict:
    """hidden: n tensors (T, C) of one text -> {measure: [n]} for the per-text measures (update None at 0)."""
    hs = [h.detach().float() for h in hidden]
    return {
        "pairwise_cosine": [pairwise_cosine(h) for h in hs],
        "intra_similarity": [intra_similarity(h) for h in hs],
        "norm": [float(h.norm(dim=-1).mean()) for h in hs],
        "update_norm": [None] + [float((b - a).norm(dim=-1).mean()) for a, b in zip(hs[:-1], hs[1:])],
    }


class CrossText:
    """Running sums over texts for the measures that compare different texts (anisotropy,
    self-similarity), per layer; ``add`` one text at a time, then read the measures."""

    def __init__(self):
        self.total = None        # (n, C) sum of every unit vector
        self.within = None       # (n,) sum over texts of |sum of the text's unit vectors|^2
        self.tokens = 0          # N
        self.tokens_sq = 0       # sum over texts of T^2
        self.words: dict[int, list] = {}   # token id -> [texts it occurs in, (n, C) sum of its first occurrences]

    def add(self, ids: list[int], hidden: list[torch.Tensor]) -> None:
        u = torch.stack([F.normalize(h.detach().double(), dim=-1) for h in hidden])   # (n, T, C)
        s = u.sum(1)                                                                   # (n, C)
        self.total = s if self.total is None else self.total + s
        w = (s * s).sum(-1)                                                            # (n,)
        self.within = w if self.within is None else self.within + w
        self.tokens += u.size(1)
        self.tokens_sq += u.size(1) ** 2
        first: dict[int, int] = {}
        for t, i in enumerate(ids):
            first.setdefault(int(i), t)
        for i, t in first.items():
            entry = self.words.setdefault(i, [0, 0.0])
            entry[0] += 1
            entry[1] = entry[1] + u[:, t]

    def anisotropy(self) -> list | None:
        """Mean cosine over ordered token pairs from different texts, per layer (None: one text)."""
        pairs = self.tokens ** 2 - self.tokens_sq
        if self.total is None or pairs == 0:
            return None
        return [float(v) for v in ((self.total * self.total).sum(-1) - self.within) / pairs]

    def self_similarity(self, min_contexts: int) -> tuple[list | None, int]:
        """(mean over token ids in >= min_contexts texts of their self-similarity per layer, number of such ids)."""
        per = [((v * v).sum(-1) - c) / (c * (c - 1)) for c, v in self.words.values() if c >= min_contexts]
        if not per:
            return None, 0
        return [float(v) for v in torch.stack(per).mean(0)], len(per)


# --- running a model over texts ------------------------------------------------------------------


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


def _source_states(model, ids: torch.Tensor):
    """The source's states: forward hooks on every block (its output) and on the final norm ->
    (model output, [L + 1] tensors (1, T, C))."""
    net = getattr(model, "module", model)
    blocks, final = getattr(net, "blocks", None), getattr(net, "norm_f", None)
    if blocks is None or final is None:
        raise ValueError(f"token_geometry: layers='source' hooks the block outputs and the final norm, so it needs a "
                         f"model with .blocks and .norm_f (llama_like); {type(net).__name__} has not: use "
                         f"layers='hidden_states'")
    got: list[torch.Tensor] = []

    def keep(_module, _inputs, out):
        got.append(out[0] if isinstance(out, tuple) else out)

    handles = [m.register_forward_hook(keep) for m in [*blocks, final]]
    try:
        out = model(ids)
    finally:
        for h in handles:
            h.remove()
    return out, got


def _hidden_states(cfg, model, ids: torch.Tensor, vocab: int):
    """One text (1, T) -> (list of n (T, C) detached states, list of n gradient norms or None)."""
    with torch.enable_grad() if cfg.gradient_norm else torch.no_grad():
        if cfg.layers == "source":
            out, hs = _source_states(model, ids)
        else:
            out = model(ids, output_hidden_states=True)
            hs = out.hidden_states
            if not hs:
                raise ValueError("token_geometry needs a model that returns hidden states "
                                 "(forward(ids, output_hidden_states=True))")
        if not cfg.gradient_norm:
            return [h[0].detach() for h in hs], None
        logits = out.logits
        if logits is None or logits.dim() != 3 or logits.size(-1) < vocab:
            raise ValueError("token_geometry: gradient_norm needs a model with next-token logits (B, T, V)")
        if not all(h.requires_grad for h in hs):
            raise ValueError("token_geometry: gradient_norm needs hidden states that require grad (trainable parameters)")
        loss = F.cross_entropy(logits[0, :-1, :vocab].float(), ids[0, 1:])
        grads = torch.autograd.grad(loss, list(hs), allow_unused=True)
    return [h[0].detach() for h in hs], [float(g.norm()) if g is not None else math.nan for g in grads]


def collect(cfg, model, tokenizer, texts: list[str]) -> dict:
    """Per-text measures for every text with >= 2 tokens, the cross-text sums, plus the heatmap
    text's similarity matrices at every layer (first ``heatmap_tokens`` tokens)."""
    texts = choose_texts(cfg, texts)
    device = next(model.parameters()).device
    caps = [c for c in (cfg.max_tokens, getattr(model, "block_size", None)) if c is not None]
    limit = min(caps) if caps else None
    per, grads, used, heat, cross = [], [], 0, None, CrossText()
    for text in texts:
        ids = tokenizer.encode(text)[:limit]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids], dtype=torch.long, device=device)
        hs, g = _hidden_states(cfg, model, x, tokenizer.vocab_size)
        if per and len(hs) != len(per[0]["norm"]):
            raise ValueError("token_geometry: the model returned a different number of hidden states for different prompts")
        per.append(text_metrics(hs))
        cross.add(ids, hs)
        if g is not None:
            grads.append(g)
        if used == cfg.heatmap_prompt:
            t = min(len(ids), cfg.heatmap_tokens)
            heat = {"ids": ids[:t], "labels": [_label(tokenizer, i) for i in ids[:t]],
                    "sim": np.stack([similarity(h[:t]).cpu().numpy() for h in hs])}
        used += 1
    if not per:
        raise ValueError("token_geometry: no prompt with at least 2 tokens")
    return {"per_text": per, "grads": grads or None, "heat": heat, "cross": cross}


def _label(tokenizer, i: int) -> str:
    try:
        s = tokenizer.decode([i])
    except Exception:  # noqa: BLE001 - a byte that is half a UTF-8 character, etc.
        s = f"<{i}>"
    s = s.replace("\n", "\\n").replace("\t", "\\t")
    return s if s.strip() else (repr(s) if s else f"<{i}>")


def aggregate(cfg, collected: dict) -> dict:
    """Mean and std over texts per layer, the cross-text measures, under the stable metrics.json
    keys (``<measure>_per_layer``, ``std_<measure>_per_layer``), plus scalars."""
    per = collected["per_text"]
    n = len(per[0]["norm"])
    out = {"layers": n, "layer_indexing": cfg.layers, "prompts": len(per)}
    for key in PER_TEXT:
        a = np.array([[np.nan if v is None else v for v in p[key]] for p in per], dtype=float)
        out[f"{key}_per_layer"], out[f"std_{key}_per_layer"] = _list(a.mean(0)), _list(a.std(0))
    if collected["grads"]:
        g = np.array(collected["grads"], dtype=float)
        out["grad_norm_per_layer"], out["std_grad_norm_per_layer"] = _list(g.mean(0)), _list(g.std(0))
    cross = collected["cross"]
    aniso = cross.anisotropy()
    selfsim, words = cross.self_similarity(cfg.self_similarity_min_contexts)
    out["anisotropy_per_layer"] = aniso
    out["intra_similarity_adjusted_per_layer"] = None if aniso is None else [
        a - b for a, b in zip(out["intra_similarity_per_layer"], aniso)]
    out["self_similarity_per_layer"], out["self_similarity_words"] = selfsim, words
    out["self_similarity_adjusted_per_layer"] = None if aniso is None or selfsim is None else [
        a - b for a, b in zip(selfsim, aniso)]
    c = out["pairwise_cosine_per_layer"]
    out.update({"pairwise_cosine_first": c[0], "pairwise_cosine_last": c[-1], "pairwise_cosine_max": max(c),
                "pairwise_cosine_argmax_layer": int(np.argmax(c)),
                "intra_similarity_last": out["intra_similarity_per_layer"][-1], "norm_last": out["norm_per_layer"][-1],
                "update_norm_mean": float(np.mean(out["update_norm_per_layer"][1:])) if n > 1 else 0.0})
    if aniso is not None:
        out.update({"anisotropy_first": aniso[0], "anisotropy_last": aniso[-1],
                    "intra_similarity_adjusted_last": out["intra_similarity_adjusted_per_layer"][-1]})
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
    """(x, mean, std) of one measure with its null entries dropped (the update at layer 0); None if absent."""
    mean, std = metrics.get(f"{key}_per_layer"), metrics.get(f"std_{key}_per_layer")
    if not mean:
        return None
    std = std or [0.0] * len(mean)
    rows = [(i, m, sd) for i, (m, sd) in enumerate(zip(mean, std)) if m is not None]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] or 0.0 for r in rows]


def _xlabel(metrics: dict) -> str:
    return "layer (0 = embeddings)" if metrics.get("layer_indexing", "hidden_states") == "hidden_states" \
        else f"layer (block outputs 0..{metrics['layers'] - 2}, then the final norm)"


def plot_per_layer(metrics: dict, path: Path, title: str = "") -> None:
    plt = _plt()
    keys = [k for k, _ in METRICS if _series(metrics, k)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.3))
    for ax, key in zip(np.atleast_1d(axes), keys):
        x, m, s = _series(metrics, key)
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3)
        ax.set(title=dict(METRICS)[key], xlabel=_xlabel(metrics))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
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
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


def heatmap_layers(cfg, n: int) -> list[int]:
    if cfg.heatmap_layers is None:
        return sorted({0, n // 4, n // 2, n - 1})
    out = []
    for layer in cfg.heatmap_layers:
        if not -n <= layer < n:
            raise ValueError(f"token_geometry.heatmap_layers: layer {layer} out of range for {n} hidden states")
        out.append(layer % n)
    return sorted(set(out))


def write_csv(metrics: dict, path: Path) -> None:
    keys = [k for m, _ in METRICS for k in (f"{m}_per_layer", f"std_{m}_per_layer") if metrics.get(k)]
    keys += [k for k in ("intra_similarity_adjusted_per_layer", "self_similarity_per_layer",
                         "self_similarity_adjusted_per_layer") if metrics.get(k)]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer"] + [k.replace("_per_layer", "") for k in keys])
        for i in range(metrics["layers"]):
            w.writerow([i] + ["" if metrics[k][i] is None else f"{metrics[k][i]:.6g}" for k in keys])


# --- one model -----------------------------------------------------------------------------------


def _analyze_one(cfg, model, tokenizer, texts, out_dir: Path, title: str = ""):
    out_dir.mkdir(parents=True, exist_ok=True)
    collected = collect(cfg, model, tokenizer, texts)
    metrics = aggregate(cfg, collected)
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
                metrics["pairwise_cosine_last_change"] = metrics["pairwise_cosine_last"] - first["pairwise_cosine_last"]
                metrics["pairwise_cosine_mean_abs_change"] = float(np.mean(
                    [abs(a - b) for a, b in zip(metrics["pairwise_cosine_per_layer"], first["pairwise_cosine_per_layer"])]))
            (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# --- several models ------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name) or "model"


def default_pairs(names: list[str]) -> list[tuple[str, str]]:
    present = [(a, b) for a, b in SOURCE_PAIRS if a in names and b in names]
    return present or [(n, names[0]) for n in names[1:]]


def _quarters(n: int) -> list[int]:
    """The source's key layers of n states: 0, n//4, n//2, n-1."""
    return [0, n // 4, n // 2, n - 1]


def analyze_many(cfg, models: dict, texts, out_dir: Path) -> dict:
    """Every model into out_dir/<name>/, then one-line-per-model plots (compare_<metric>.png),
    comparison.csv (per-model columns and a - b difference columns) and difference heatmaps
    (diff_heatmap_<a>_minus_<b>.png) at the source's layers 0, n//4, n//2, n-1 of the n states."""
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
        ax.set(title=label, xlabel=_xlabel(res[names[0]]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"compare_{key}.png", dpi=FIGURE_DPI)
        plt.close(fig)

    cols = [(m, f"{m}_per_layer") for m, _ in METRICS if all(res[n].get(f"{m}_per_layer") for n in names)]
    rows = max(res[n]["layers"] for n in names)

    def val(n, k, i):
        v = res[n][k]
        return v[i] if v is not None and i < len(v) else None

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
        out[f"{a}-{b}/pairwise_cosine_last"] = res[a]["pairwise_cosine_last"] - res[b]["pairwise_cosine_last"]
        ha, hb = heats[a], heats[b]
        if ha is None or hb is None or list(ha["ids"]) != list(hb["ids"]):
            out[f"{a}-{b}/heatmap"] = "skipped: the two models tokenize the heatmap prompt differently"
            continue
        if not cfg.figures:
            continue
        qa, qb = _quarters(len(ha["sim"])), _quarters(len(hb["sim"]))
        fig, axes = plt.subplots(3, len(qa), figsize=(3.3 * len(qa), 9.6))
        for j, (la, lb) in enumerate(zip(qa, qb)):
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
        fig.savefig(out_dir / f"diff_heatmap_{_safe(a)}_minus_{_safe(b)}.png", dpi=FIGURE_DPI)
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
        axes[0].plot(m["pairwise_cosine_per_layer"], marker=".", color=cmap(i / max(1, len(ms) - 1)), label=f"step {s}")
    axes[0].set(title="within-text pairwise cosine per layer", xlabel="layer")
    axes[0].legend(fontsize=6)
    if first["layers"] == last["layers"]:
        x = np.arange(first["layers"])
        c0, c1 = np.array(first["pairwise_cosine_per_layer"]), np.array(last["pairwise_cosine_per_layer"])
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
    fig.savefig(out_dir / "evolution.png", dpi=FIGURE_DPI)
    plt.close(fig)
    written.append(out_dir / "evolution.png")

    f0, f1 = step_dirs[0] / "similarity.npz", step_dirs[-1] / "similarity.npz"
    if f0.exists() and f1.exists():
        a, b = np.load(f0), np.load(f1)
        if list(a["ids"]) == list(b["ids"]) and a["sim"].shape == b["sim"].shape:
            n = a["sim"].shape[0]
            layers = sorted({0, n // 3, 2 * n // 3, n - 1})                 # the source's sample layers
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
            fig.savefig(out_dir / "evolution_heatmaps.png", dpi=FIGURE_DPI)
            plt.close(fig)
            written.append(out_dir / "evolution_heatmaps.png")
    return written
