"""The acceleration penalty on hidden-state trajectories.

For one layer's hidden states H (B, T, d):
    a_t = H_t - 2 H_{t-1} + H_{t-2}                     (B, T-2, d), t = 2..T-1
    valid_t = m_t m_{t-1} m_{t-2} [doc_t = doc_{t-1} = doc_{t-2}]   (B, T-2)   (m: attention_mask)
    P = sum_{b,t} valid_t ||a_t||^2 / sum_{b,t} valid_t  (0 when nothing is valid)
With mask="none" every t counts: P = mean_{b,t} ||a_t||^2, exactly the source's
``torch.mean(torch.norm(acceleration, p=2, dim=2) ** 2)``.

Layers (L = len(hidden_states) - 1): first_middle_last {1, L//2+1, L}, all 1..L, weighted 1..L,
last {L}, or explicit indices; a seq2seq model's encoder stack is treated like the decoder's and
the two stack totals are added.
"""

from __future__ import annotations

import torch

from kinlm_core import ModelOutput


def second_difference(h: torch.Tensor) -> torch.Tensor:
    """a_t = h_t - 2 h_{t-1} + h_{t-2} for t = 2..T-1: (B, T, d) -> (B, T-2, d)."""
    return h[:, 2:] - 2 * h[:, 1:-1] + h[:, :-2]


def valid_triples(T: int, attention_mask=None, document_ids=None, device=None) -> torch.Tensor | None:
    """(B, T-2) bool: positions t = 2..T-1 whose t, t-1, t-2 are real tokens of one document, or
    None when neither mask is given (everything valid)."""
    valid = None
    if attention_mask is not None:
        m = attention_mask.to(device=device).bool()
        valid = m[:, 2:] & m[:, 1:-1] & m[:, :-2]
    if document_ids is not None:
        d = document_ids.to(device=device)
        same = (d[:, 2:] == d[:, 1:-1]) & (d[:, 1:-1] == d[:, :-2])
        valid = same if valid is None else valid & same
    return valid


def resolve_layers(layers, n_hidden: int) -> list[int]:
    """Hidden-state indices (ascending, unique) that a ``layers`` setting selects for a stack of
    ``n_hidden`` states (embeddings + L layers)."""
    L = n_hidden - 1
    if L < 1:
        raise ValueError(f"accel_penalty: the model returned {n_hidden} hidden state(s); it needs the embeddings "
                         "and at least one layer")
    if layers == "first_middle_last":
        idx = [1, L // 2 + 1, L]
    elif layers in ("all", "weighted"):
        idx = list(range(1, L + 1))
    elif layers == "last":
        idx = [L]
    else:
        idx = []
        for i in layers:
            if not -n_hidden <= i < n_hidden:
                raise ValueError(f"accel_penalty.layers: index {i} is out of range for a model with {L} layers "
                                 f"(hidden states 0..{L}, or -{n_hidden}..-1)")
            idx.append(i % n_hidden)
    return sorted(set(idx))


def layer_penalty(h: torch.Tensor, valid: torch.Tensor | None, norm: str = "squared", normalize: str = "none"):
    """P of one layer: h (B, T, d), valid (B, T-2) bool or None -> scalar (float32)."""
    if h.size(1) < 3:
        return h.float().sum() * 0.0  # no second difference: zero, still attached to the graph
    h = h.float()
    a = second_difference(h)                                   # (B, T-2, d)
    size = a.pow(2).sum(-1)                                    # (B, T-2): ||a_t||^2
    if norm == "l2":
        size = torch.linalg.vector_norm(a, dim=-1)              # ||a_t||; its gradient at a_t = 0 is 0
    if normalize == "dim":
        size = size / h.size(-1)
    if valid is None:
        p = size.mean()
    else:
        w = valid.to(size.dtype)
        p = (size * w).sum() / w.sum().clamp_min(1.0)
    if normalize == "scale":
        hs = h.pow(2).sum(-1) if norm == "squared" else torch.linalg.vector_norm(h, dim=-1)  # (B, T)
        if valid is None:
            scale = hs.mean()
        else:
            real = torch.zeros_like(hs, dtype=torch.bool)
            real[:, 2:] |= valid
            real[:, 1:-1] |= valid
            real[:, :-2] |= valid
            scale = (hs * real).sum() / real.sum().clamp_min(1)
        p = p / scale.detach().clamp_min(1e-12)
    return p


class AccelPenalty:
    """``fn(output, batch, step) -> {name: P_total}`` (the engine multiplies by ``weight`` = lambda)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def _stack(self, hidden, ids_len, attention_mask, document_ids, seq2seq: bool, where: str):
        cfg = self.cfg
        idx = resolve_layers(cfg.layers, len(hidden))
        valid = None
        if cfg.mask != "none":
            T = hidden[idx[0]].size(1)
            if T >= 3 and (attention_mask is not None or document_ids is not None):
                if T != ids_len:
                    raise ValueError(f"accel_penalty: the model's {where} hidden states have {T} positions but the "
                                     f"batch has {ids_len}; masks cannot be aligned (set mask: \"none\")")
                valid = valid_triples(T, attention_mask, document_ids if cfg.mask == "padding_and_documents" else None,
                                      device=hidden[idx[0]].device)
        ps = torch.stack([layer_penalty(hidden[i], valid, cfg.norm, cfg.normalize) for i in idx])  # (n,)
        w = torch.ones_like(ps)
        if cfg.layers == "weighted":
            L = len(hidden) - 1
            if len(cfg.layer_weights) == L:  # otherwise equal weights, as the source falls back
                w = torch.tensor(cfg.layer_weights, dtype=ps.dtype, device=ps.device)
        reduce = cfg.reduce
        if reduce == "auto":  # the source: all/weighted average; first_middle_last, last, lists add up (T5: average)
            reduce = "mean" if cfg.layers in ("all", "weighted") or seq2seq else "sum"
        return (w * ps).sum() if reduce == "sum" else (w * ps).sum() / w.sum()

    def __call__(self, output: ModelOutput, batch: dict, step: int) -> dict:
        if not output.hidden_states:
            raise ValueError("accel_penalty needs a model that returns hidden states (output_hidden_states=True)")
        ids = batch["input_ids"]
        enc = output.encoder_hidden_states
        if enc:  # seq2seq: the decoder's states go with decoder_input_ids
            dec_ids = batch.get("decoder_input_ids", batch.get("labels"))
            total = self._stack(enc, ids.size(1), batch.get("attention_mask"), batch.get("document_ids"), True, "encoder")
            total = total + self._stack(output.hidden_states, dec_ids.size(1), batch.get("decoder_attention_mask"),
                                        None, True, "decoder")
        else:
            total = self._stack(output.hidden_states, ids.size(1), batch.get("attention_mask"),
                                batch.get("document_ids"), False, "")
        return {self.cfg.name: total}
