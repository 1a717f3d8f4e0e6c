"""The analyzers: effective rank, fixed-point convergence, the identity-mapping check, and the
global-attractor and zero-solution checks (torch).

Every analyzer joins its texts into one token stream (end-of-text between texts when the tokenizer
has one) cut to ``max_tokens``: the stream a cvfp ContextBlock reads, sequentially from zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kinlm_core import FIGURE_DPI

from .losses import convergence_rate, effective_rank, mean_norm, pairwise, per_token_change, singular_values
from .training import parallel_iteration, sequential_contexts


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _device(model):
    return next(model.parameters()).device


def is_cvfp(model) -> bool:
    return hasattr(model, "context_block") and hasattr(model, "embed")


def _require_cvfp(model, who: str) -> None:
    if not is_cvfp(model):
        raise ValueError(f"analyzer {who} needs a cvfp model (one with a ContextBlock); got {type(model).__name__}")


def _stream(tokenizer, texts, max_tokens: int, device):
    ids: list[int] = []
    for t in texts:
        ids += tokenizer.encode(t)
        if tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("cvfp analyzers: the texts give fewer than 2 tokens")
    return torch.tensor(ids, dtype=torch.long, device=device)


@torch.no_grad()
def _context_matrices(model, tokenizer, texts, max_tokens, who: str = "effective_rank"):
    """{name: (tokens, d)}: a cvfp model's per-layer contexts over the stream, else every text's last hidden state."""
    if is_cvfp(model):
        cs = sequential_contexts(model, _stream(tokenizer, texts, max_tokens, _device(model)))
        return {f"context_{k + 1}": c.float() for k, c in enumerate(cs)}, "context"
    rows, n = [], 0
    limit = getattr(model, "block_size", None) or max_tokens
    for t in texts:
        ids = tokenizer.encode(t)[:min(limit, max_tokens - n)]
        if len(ids) < 1:
            continue
        out = model(torch.tensor([ids], device=_device(model)), output_hidden_states=True)
        if not out.hidden_states:
            raise ValueError(f"analyzer {who} needs a model that returns hidden states")
        rows.append(out.hidden_states[-1][0].float())
        n += len(ids)
        if n >= max_tokens:
            break
    if not rows:
        raise ValueError(f"analyzer {who}: no text gives a token")
    return {"hidden_last": torch.cat(rows)}, "hidden"


def effective_rank_analysis(cfg, model, tokenizer, texts, out_dir) -> dict:
    mats, source = _context_matrices(model, tokenizer, texts, cfg.max_tokens)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    out = {}
    for name, C in mats.items():
        er, d = effective_rank(C), C.size(-1)
        out[f"{name}/effective_rank"], out[f"{name}/effective_rank_pct"] = er, 100 * er / d
        s = singular_values(C)
        ax.semilogy((s / s.sum()).cpu().numpy(), label=f"{name}: ER {er:.1f} ({100 * er / d:.1f}% of {d})")
    last = list(mats)[-1]
    out.update({"effective_rank": out[f"{last}/effective_rank"], "effective_rank_pct": out[f"{last}/effective_rank_pct"],
                "tokens": float(mats[last].size(0)), "dim": float(mats[last].size(1))})
    ax.set(title=f"normalised singular values ({source})", xlabel="index", ylabel="s_k / sum s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "effective_rank.png", dpi=FIGURE_DPI)
    plt.close(fig)
    return out


@torch.no_grad()
def convergence_analysis(cfg, model, tokenizer, texts, out_dir) -> dict:
    """Jacobi (parallel) iterations from zero contexts at fixed weights, against the sequential contexts."""
    _require_cvfp(model, "convergence")
    ids = _stream(tokenizer, texts, cfg.max_tokens, _device(model))
    e = model.embed(ids)
    C_seq = sequential_contexts(model, ids)[-1]
    zero = torch.zeros_like(C_seq[:1])
    C_rep = parallel_iteration(model, e, torch.cat([zero, C_seq[:-1]]))
    reproduction = float(per_token_change(C_rep, C_seq).mean())
    C = torch.zeros_like(C_seq)
    rates, dists, exact = [], [], []
    for _ in range(cfg.iterations):
        C_new = parallel_iteration(model, e, torch.cat([zero, C[:-1]]))
        rates.append(convergence_rate(C_new, C, cfg.threshold))
        to_seq = per_token_change(C_new, C_seq)
        dists.append(float(to_seq.mean()))
        exact.append(float((to_seq < cfg.threshold).float().mean()))
        C = C_new
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    its = range(1, cfg.iterations + 1)
    ax.plot(its, rates, marker="o", label="converged (change < threshold)")
    ax.plot(its, exact, marker="s", label="at the sequential context")
    ax.set(title="parallel iterations from zero (fixed weights)", xlabel="iteration", ylabel="share of tokens", ylim=(0, 1.05))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "convergence.png", dpi=FIGURE_DPI)
    plt.close(fig)
    return {"convergence_rate": rates[-1], "share_at_sequential": exact[-1], "distance_to_sequential": dists[-1],
            "sequential_reproduction_mse": reproduction, "tokens": float(ids.numel()), "iterations": float(cfg.iterations)}


@torch.no_grad()
def identity_check_analysis(cfg, model, tokenizer, texts, out_dir) -> dict:
    """In/out cosine and relative change of the update c -> f(c, e), and its sensitivity to the token."""
    _require_cvfp(model, "identity_check")
    ids = _stream(tokenizer, texts, cfg.max_tokens, _device(model))
    e = model.embed(ids)
    C = sequential_contexts(model, ids)[-1]
    c_in, c_out, e1, ids1 = C[:-1], C[1:], e[1:], ids[1:]  # token 0 came in with a zero context: left out
    cos = F.cosine_similarity(c_in, c_out, dim=-1)
    rel = (c_out - c_in).norm(dim=-1) / c_in.norm(dim=-1).clamp_min(1e-8)
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(ids1.numel(), generator=g).to(ids.device)
    other = ids1[perm] != ids1
    if not other.any():
        raise ValueError("analyzer identity_check: the stream has a single distinct token")
    swapped = parallel_iteration(model, e1[perm], c_in)
    sens = ((swapped - c_out).norm(dim=-1) / c_out.norm(dim=-1).clamp_min(1e-8))[other]
    out = {"update_cosine": float(cos.mean()), "relative_change": float(rel.mean()),
           "token_sensitivity": float(sens.mean()), "tokens": float(ids.numel())}
    out["identity_like"] = float(out["update_cosine"] > cfg.cosine_above and out["token_sensitivity"] < cfg.sensitivity_below)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].hist(cos.cpu().numpy(), bins=40)
    axes[0].set(title="cos(c_in, c_out)", xlabel="cosine")
    axes[1].hist(sens.cpu().numpy(), bins=40)
    axes[1].set(title="token sensitivity", xlabel="||f(c, e') - f(c, e)|| / ||f(c, e)||")
    fig.tight_layout()
    fig.savefig(out_dir / "identity_check.png", dpi=FIGURE_DPI)
    plt.close(fig)
    return out


def _histograms(panels, title: str, path) -> None:
    """One histogram per (values, label) panel, side by side."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (values, label) in zip(axes[0], panels):
        ax.hist(values, bins=40)
        ax.set(xlabel=label)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


@torch.no_grad()
def global_attractor_analysis(cfg, model, tokenizer, texts, out_dir) -> dict:
    """Mean pairwise L2 distance and cosine of the contexts over the stream (per layer); the last
    layer's are flagged as a global attractor when L2 < ``l2_below`` and cosine > ``cosine_above``."""
    mats, source = _context_matrices(model, tokenizer, texts, cfg.max_tokens, "global_attractor")
    out = {}
    for name, C in mats.items():
        out[f"{name}/mean_pairwise_l2"], out[f"{name}/mean_pairwise_cosine"] = pairwise(C)
    name = list(mats)[-1]
    last, l2, cos = mats[name], out[f"{name}/mean_pairwise_l2"], out[f"{name}/mean_pairwise_cosine"]
    out.update({"mean_pairwise_l2": l2, "mean_pairwise_cosine": cos, "tokens": float(last.size(0)),
                "global_attractor": float(l2 < cfg.l2_below and cos > cfg.cosine_above)})
    g = torch.Generator().manual_seed(0)  # the figure: up to 2,000 random pairs of the last layer
    i, j = torch.randint(0, last.size(0), (2, 2000), generator=g).to(last.device)
    keep = i != j
    a, b = last[i[keep]].double(), last[j[keep]].double()
    _histograms([((a - b).norm(dim=-1).cpu().numpy(), "||c_i - c_j||"),
                 (F.cosine_similarity(a, b, dim=-1).cpu().numpy(), "cos(c_i, c_j)")],
                f"pairs of {source}s (last layer): mean L2 {l2:.3g}, mean cos {cos:.3f}", out_dir / "global_attractor.png")
    return out


@torch.no_grad()
def zero_solution_analysis(cfg, model, tokenizer, texts, out_dir) -> dict:
    """Mean L2 norm of the contexts over the stream (per layer); the last layer's is flagged as the
    zero solution when below ``norm_below``."""
    mats, source = _context_matrices(model, tokenizer, texts, cfg.max_tokens, "zero_solution")
    out = {f"{name}/mean_norm": mean_norm(C) for name, C in mats.items()}
    name = list(mats)[-1]
    out.update({"mean_norm": out[f"{name}/mean_norm"], "tokens": float(mats[name].size(0)),
                "zero_solution": float(out[f"{name}/mean_norm"] < cfg.norm_below)})
    _histograms([(mats[name].double().norm(dim=-1).cpu().numpy(), "||c_i||")],
                f"{source} norms (last layer): mean {out['mean_norm']:.3g}", out_dir / "zero_solution.png")
    return out
