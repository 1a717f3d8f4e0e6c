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
    pairwise(C)       = mean over pairs i < j of ||C_i - C_j||_2 and of cos(C_i, C_j)
                        (cos 0 where a row is zero)              global attractor: L2 < 0.1 and cos > 0.99
    mean_norm(C)      = mean_i ||C_i||_2                          zero solution: mean norm < 0.1
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


def pairwise(C, chunk: int = 1024) -> tuple[float, float]:
    """(mean L2 distance, mean cosine) over the N (N - 1) / 2 pairs i < j of the rows of C (N, d),
    N >= 2; a zero row has cosine 0 with every row. Row blocks of ``chunk`` bound the memory."""
    C = C.detach().reshape(-1, C.size(-1)).double()
    n = C.size(0)
    if n < 2:
        raise ValueError("pairwise statistics need at least 2 rows")
    norms = C.norm(dim=-1, keepdim=True)
    U = torch.where(norms > 0, C / norms.clamp_min(1e-300), torch.zeros_like(C))
    dist = cos = 0.0
    for a in range(0, n, chunk):
        rows = slice(a, min(a + chunk, n))
        # each pair once: column j > row i
        upper = torch.arange(n, device=C.device)[None, :] > torch.arange(a, rows.stop, device=C.device)[:, None]
        exact = torch.cdist(C[rows], C, compute_mode="donot_use_mm_for_euclid_dist")  # 0 between equal rows
        dist += float(exact[upper].sum())
        cos += float((U[rows] @ U.T)[upper].sum())
    pairs = n * (n - 1) / 2
    return dist / pairs, cos / pairs


def mean_norm(C) -> float:
    """Mean L2 norm of the rows of C (N, d)."""
    return float(C.detach().reshape(-1, C.size(-1)).double().norm(dim=-1).mean())


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
