"""The `representation` regularizer (kinlm's design) and the source's no-op as an ablation.

anti_collapse: with H (N, C) the final states of the batch's real tokens (at most max_tokens, evenly
strided) and Ĥ its rows normalised to unit length,

    S = Ĥ Ĥ^T  (N, N)        anti_collapse = sum_{i != j} S_ij / (N (N - 1))

1 when every state points the same way (collapse), about 0 for spread-out states.
source_noop: alpha^2 with alpha a constant, times the regularizer's weight (the source: 0.01). In the
source alpha is a parameter that only this term reads, so no weight of the model ever changes
because of it; a constant reproduces that exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_offdiag_cosine(h: torch.Tensor) -> torch.Tensor:
    """h: (N, C) -> mean cosine similarity over the N (N - 1) ordered pairs i != j."""
    n = h.shape[0]
    if n < 2:
        return h.sum() * 0.0
    u = F.normalize(h.float(), dim=-1)
    s = u @ u.T                                                  # (N, N)
    return (s.sum() - s.diagonal().sum()) / (n * (n - 1))


def representation_fn(cfg):
    def fn(output, batch, step):
        if cfg.source_noop:
            return {"alpha_l2": torch.tensor(cfg.alpha_init ** 2)}
        if cfg.require_vt_input and "vt_w" not in output.metrics:
            raise ValueError("regularizer representation: the model has no learnable VT input; wrap it as "
                             '{"type": "vt_embeddings", "mode": "add", "learnable": true, "w": 0.1, '
                             '"w_range": [0.01, 0.5], "inner": {...}} or set require_vt_input false')
        out = {}
        if cfg.anti_collapse:
            seq2seq = output.encoder_hidden_states is not None
            if cfg.states == "encoder" and seq2seq:
                h, mask = output.encoder_hidden_states[-1], batch.get("attention_mask")
            else:
                states = output.hidden_states
                if not states:
                    raise ValueError("regularizer representation: the model returned no hidden states")
                h = states[-1]
                mask = batch.get("decoder_attention_mask") if seq2seq else batch.get("attention_mask")
            flat = h.reshape(-1, h.shape[-1])                                   # (B*T, C)
            if mask is not None:
                flat = flat[mask.reshape(-1).bool()]
            if flat.shape[0] > cfg.max_tokens:
                idx = torch.linspace(0, flat.shape[0] - 1, cfg.max_tokens, device=flat.device).long()
                flat = flat[idx]
            out["anti_collapse"] = mean_offdiag_cosine(flat)
        return out

    return fn
