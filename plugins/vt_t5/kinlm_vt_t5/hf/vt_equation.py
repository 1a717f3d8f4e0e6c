"""kinlm's VT ("vector transition") embeddings, the equation alone (torch only; a file of the
exports of the kinlm-vt-t5 plugin, which never imports it). e: (B, T, C) input embeddings.

    add:            e'_t = e_t + w (e_t - e_{t-1}),  e_{-1} = 0
    concat_project: v_t = e_t - e_{t-1}, a_t = v_t - v_{t-1} (both 0 at first positions);
                    e'_t = W [e_t; v_t (; a_t)] + b
    replace:        e'_t = v_t

First positions: the row start, and with ``reset`` the positions after padding (attention_mask 0).
"""

import torch
import torch.nn as nn


def restarts(shape, attention_mask=None, reset=True, device=None):
    """(B, T) bool: positions whose predecessor counts as 0."""
    r = torch.zeros(shape, dtype=torch.bool, device=device)
    r[:, 0] = True
    usable = attention_mask is not None and attention_mask.dim() == 2 and tuple(attention_mask.shape) == tuple(shape)
    if reset and usable:
        r[:, 1:] |= attention_mask[:, :-1] == 0
    return r


def difference(x, restart, first="zero"):
    """x_t - x_{t-1} along dim 1; at restarts 0 (first="zero") or x_t (first="self")."""
    prev = torch.zeros_like(x)
    prev[:, 1:] = x[:, :-1]
    d = x - prev
    r = restart.unsqueeze(-1)
    return d.masked_fill(r, 0.0) if first == "zero" else torch.where(r, x, d)


class VT(nn.Module):
    """The VT map of a config's ``vt_mode``, ``vt_w``, ``vt_acceleration``, ``vt_reset``; concat_project
    holds ``proj`` (a Linear from 2C or 3C to C)."""

    def __init__(self, config, width):
        super().__init__()
        self.mode, self.w = config.vt_mode, float(config.vt_w)
        self.acceleration, self.reset = bool(config.vt_acceleration), bool(config.vt_reset)
        if self.mode == "concat_project":
            self.proj = nn.Linear((3 if self.acceleration else 2) * width, width)

    def forward(self, e, attention_mask=None):
        r = restarts(e.shape[:2], attention_mask, self.reset, e.device)
        if self.mode == "add":
            return e + self.w * difference(e, r, first="self")
        v = difference(e, r)
        if self.mode == "replace":
            return v
        parts = [e, v] + ([difference(v, r)] if self.acceleration else [])
        return self.proj(torch.cat(parts, dim=-1))
