"""The fixed-point losses of cvfp and the diversity regularizer (torch).

    mse(C, C_target)  = mean_{i, j} (C_ij - C_target_ij)^2            C: (N, d)
    diversity(C)      = -|| C - 1 mean_rows(C) ||_F / N                (source: the dist_reg term)
                        the Frobenius norm (not squared) of the whole centred N x d matrix, divided
                        by the token count N; NOT the mean of the per-token distances, which is
                        about sqrt(N) times larger
    loss              = (1 - w) mse + w diversity                     w = dist_reg_weight
    change_i          = mean_j (C_n,ij - C_{n-1},ij)^2                per-token squared change
    convergence rate  = share of tokens with change_i < threshold
    ER(C)             = exp(-sum_k p_k log(p_k + 1e-10)),  p = s / sum(s),  s the singular values
                        of the uncentred C (Roy and Vetterli 2007, with the source's 1e-10 guard);
                        ER / d in percent
"""

from __future__ import annotations

import torch


def diversity(C, mask=None):
    """-||C - mean_rows(C)||_F / N: minus the Frobenius norm of the centred (N, d) matrix over the
    token count. C: (N, d) or (B, T, d); mask (B, T) or (N,): 1 for real tokens (None: all); masked
    rows count neither in the mean, nor in the norm, nor in N."""
    C = C.reshape(-1, C.size(-1)).float()                                  # (N, d)
    m = C.new_ones(C.size(0)) if mask is None else mask.reshape(-1).to(C.dtype)
    n = m.sum().clamp_min(1.0)
    center = (C * m[:, None]).sum(0, keepdim=True) / n                     # (1, d)
    centred = (C - center) * m[:, None]                                    # (N, d)
    return -torch.linalg.vector_norm(centred) / n                          # (the source: torch.norm(., p=2))


def per_token_change(C_new, C_old):
    """(N, d), (N, d) -> (N,): mean over d of the squared difference."""
    return (C_new.float() - C_old.float()).pow(2).mean(-1)


def convergence_rate(C_new, C_old, threshold: float) -> float:
    """Share of tokens whose per-token squared change is below ``threshold``."""
    return float((per_token_change(C_new, C_old) < threshold).float().mean())


def singular_values(C):
    return torch.linalg.svdvals(C.detach().reshape(-1, C.size(-1)).double())


def effective_rank(C) -> float:
    """Roy and Vetterli's effective rank of a (tokens x d) matrix, as the source computes it:
    exp(-sum p log(p + 1e-10)) with p = s / sum(s) (0 for an all-zero matrix)."""
    s = singular_values(C)
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * (p + 1e-10).log()).sum()))


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
