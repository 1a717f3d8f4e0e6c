"""Zoology's attention baseline: a short causal convolution before attention, no position embeddings.

Zoology (Arora et al. 2023) runs its "attention" model as a hybrid sequence mixer: a gated short
convolution (BaseConv) followed by multi-head attention, in each of 2 blocks, with no position
embeddings (the convolution supplies the order). The convolution puts each token's predecessor into
its features, so attention can match a query key against "the token after this key" in one step:
the induction circuit MQAR needs, without first learning a previous-token head from absolute
positions. Shapes: B batch, T time, C width, H heads, V vocabulary.

    h_0 = E[x]                                                         (B, T, C)
    for each block:
        u = LN(h)
        u = u + (W_p u) * conv_k(u)        gated depthwise causal conv, kernel k   (B, T, C)
        h = h + W_o Attn(u)                causal softmax attention, H heads        (B, T, C)
        h = h + MLP(LN(h))                 GELU, hidden 4C
    logits = W_out LN(h)                                                (B, T, V)

Kept small on purpose: a reference model for the synthetic tasks, not a language-model method.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..api import ModelOutput


class Block(nn.Module):
    def __init__(self, C: int, H: int, k: int):
        super().__init__()
        self.H, self.k = H, k
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.conv = nn.Conv1d(C, C, k, groups=C)                            # padded on the left in forward
        self.gate = nn.Linear(C, C)
        self.qkv, self.out = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))

    def forward(self, h):
        B, T, C = h.shape
        u = self.ln1(h)
        c = self.conv(F.pad(u.transpose(1, 2), (self.k - 1, 0))).transpose(1, 2)   # (B, T, C), causal
        u = u + self.gate(u) * c
        q, k, v = self.qkv(u).view(B, T, 3, self.H, C // self.H).permute(2, 0, 3, 1, 4)  # (B, H, T, C/H) each
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)       # (B, H, T, C/H)
        h = h + self.out(a.transpose(1, 2).reshape(B, T, C))
        return h + self.mlp(self.ln2(h))


class ConvAttentionLM(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, n_layer: int, n_head: int, conv_kernel: int, block_size: int):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head, conv_kernel) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Module:
        """The token table E (no positions: the convolution supplies the order)."""
        return self.wte

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.wte = module

    def forward(self, input_ids, output_hidden_states: bool = False) -> ModelOutput:
        h = self.wte(input_ids)                                            # (B, T, C)
        hs = [h]
        for blk in self.blocks:
            h = blk(h)
            hs.append(h)
        h = self.ln_f(h)
        hs[-1] = h
        return ModelOutput(logits=self.head(h), hidden_states=tuple(hs) if output_hidden_states else None)
