"""Building blocks more than one method uses (public API; imports torch).

RMSNorm, rotary position embeddings (GPT-NeoX half-rotation layout, as LLaMA in transformers)
and the SwiGLU feed-forward. Shapes: B batch, H heads, T time, D head dim, C width.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight   (Zhang and Sennrich 2019); x: (..., C)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, n_positions: int, base: float = 10000.0, device=None):
    """cos, sin: (n_positions, head_dim) with angle_{t,i} = t / base^(2i/head_dim), each half repeated."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.outer(torch.arange(n_positions, dtype=torch.float32, device=device), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (x_i, x_{i+D/2}) of x (B, H, T, D) by the angles of cos, sin (T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([-x2, x1], dim=-1) * sin.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Holds cos/sin tables for ``n_positions`` (non-persistent buffers, grown on demand).
    ``forward(q, k, offset=0)`` rotates q, k (B, H, T, D) for positions offset..offset+T-1."""

    def __init__(self, head_dim: int, n_positions: int = 2048, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        cos, sin = rope_tables(head_dim, n_positions, base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, q, k, offset: int = 0):
        T = q.size(-2)
        if offset + T > self.cos.size(0):
            cos, sin = rope_tables(self.head_dim, 2 * (offset + T), self.base, device=self.cos.device)
            self.cos, self.sin = cos, sin
        cos, sin = self.cos[offset:offset + T], self.sin[offset:offset + T]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


class SwiGLU(nn.Module):
    """FFN(x) = W_down (SiLU(W_gate x) * W_up x)   (Shazeer 2020); x: (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))
