"""The fixed-point losses of cvfp and the diversity regularizer (torch).

    mse(C, C_target)  = mean_{i, j} (C_ij - C_target_ij)^2            C: (N, d)
    diversity(C)      = -mean_i || C_i - mean_j C_j ||_2              (source: dist_reg)
    loss              = (1 - w) mse + w diversity                     w = dist_reg_weight
    change_i          = mean_j (C_n,ij - C_{n-1},ij)^2                per-token squared change
    convergence rate  = share of tokens with change_i < threshold
    ER(C)             = exp(-sum_k p_k log p_k),  p = s / sum(s),  s the singular values of C
                        (Roy and Vetterli 2007); ER / d in percent
"""

from __future__ import annotations

import torch


def diversity(C, mask=None):
    """-mean over tokens of each token's L2 distance to the tokens' mean. C: (N, d) or (B, T, d);
    mask (B, T) or (N,): 1 for real tokens (None: all)."""
    C = C.reshape(-1, C.size(-1)).float()
    if mask is None:
        center = C.mean(0, keepdim=True)
        return -(C - center).norm(dim=-1).mean()
    m = mask.reshape(-1).to(C.dtype)
    n = m.sum().clamp_min(1.0)
    center = (C * m[:, None]).sum(0, keepdim=True) / n
    return -((C - center).norm(dim=-1) * m).sum() / n


def per_token_change(C_new, C_old):
    """(N, d), (N, d) -> (N,): mean over d of the squared difference."""
    return (C_new.float() - C_old.float()).pow(2).mean(-1)


def convergence_rate(C_new, C_old, threshold: float) -> float:
    """Share of tokens whose per-token squared change is below ``threshold``."""
    return float((per_token_change(C_new, C_old) < threshold).float().mean())


def singular_values(C):
    return torch.linalg.svdvals(C.detach().reshape(-1, C.size(-1)).double())


def effective_rank(C) -> float:
    """Roy and Vetterli's effective rank of a (tokens x d) matrix: exp(entropy of s / sum(s))."""
    s = singular_values(C)
    s = s[s > 0]
    if s.numel() == 0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def diversity_regularizer(layer: int = -1):
    """fn(output, batch, step) -> {"diversity": scalar} over output.hidden_states[layer], padding masked."""

    def fn(output, batch, step):
        if not output.hidden_states:
            raise ValueError("regularizer diversity needs a model that returns hidden states")
        try:
            h = output.hidden_states[layer]
        except IndexError:
            raise ValueError(f"regularizer diversity: layer {layer} is out of range for "
                             f"{len(output.hidden_states)} hidden states") from None
        return {"diversity": diversity(h, batch.get("attention_mask"))}

    return fn
