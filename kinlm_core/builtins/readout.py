"""The compression read-out: any kinlm model as the encoder of MAD's compression auto-encoder.

MAD (Poli et al. 2024) scores compression with an auto-encoder: the backbone reads the sequence
x_1..x_T (the last token a compression token), its state at the last position is the code, and a
small decoder must rebuild every token from the code alone:

    h      = inner(x).hidden_states[-1][:, -1]             the code (B, C): all the decoder sees
    z_t    = h + e_t                                       e_t: fixed sin-cos code of position t
    z_t    = GELU(W2 norm(GELU(W1 norm(z_t))))             MAD's non-expanding MLP decoder
    logit_t = W_out norm(z_t)                              (B, T, V)

Whatever the inner model is (attention, a recurrent state, a wrapper), the only path from the input
to the logits goes through one vector of width C, so accuracy measures how much of the sequence
that vector holds. The inner model's own logits are not used.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..api import ModelOutput
from ..objectives import model_inputs


def sincos(T: int, C: int) -> torch.Tensor:
    """(T, C) fixed sinusoidal position codes: sin on the first half of the channels, cos on the rest."""
    pos = torch.arange(T, dtype=torch.float32)[:, None]                      # (T, 1)
    half = C // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    out = torch.zeros(T, C)
    out[:, :half] = torch.sin(pos * freq)
    out[:, half:2 * half] = torch.cos(pos * freq)
    return out


class CompressionReadout(nn.Module):
    def __init__(self, inner: nn.Module, vocab_size: int, max_len: int):
        super().__init__()
        self.inner = inner
        self.block_size = getattr(inner, "block_size", None)
        self.forward_keys = frozenset(model_inputs(inner, {"input_ids": None})) | {"input_ids"}
        with torch.no_grad():  # the code's width: the inner model's last hidden state
            C = inner(torch.zeros(1, 2, dtype=torch.long), output_hidden_states=True).hidden_states[-1].size(-1)
        self.register_buffer("positions", sincos(max_len, C), persistent=False)   # (L, C)
        self.decoder = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C), nn.GELU(),
                                     nn.LayerNorm(C), nn.Linear(C, C), nn.GELU())
        self.norm = nn.LayerNorm(C)
        self.unembed = nn.Linear(C, vocab_size)

    def forward(self, input_ids, output_hidden_states: bool = False) -> ModelOutput:
        B, T = input_ids.shape
        out = self.inner(input_ids, output_hidden_states=True)
        code = out.hidden_states[-1][:, -1]                                  # (B, C)
        z = code[:, None, :] + self.positions[:T]                            # (B, T, C)
        logits = self.unembed(self.norm(self.decoder(z)))                    # (B, T, V)
        return ModelOutput(logits=logits, hidden_states=out.hidden_states if output_hidden_states else None,
                           aux_losses=out.aux_losses, metrics=out.metrics)
