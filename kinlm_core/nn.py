"""Building blocks more than one method uses (public API; imports torch).

RMSNorm, rotary position embeddings (GPT-NeoX half-rotation layout, as LLaMA in transformers),
the SwiGLU feed-forward, and ``CompiledStep``, one time step of a recurrence compiled so that a loop
over tokens does not launch every small op on its own. Shapes: B batch, H heads, T time, D head dim,
C width.
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


class CompiledStep:
    """``step = CompiledStep(fn)``; ``step(*args)`` runs ``fn`` (one time step of a recurrence that is
    nonlinear in its state, so it has no parallel scan) compiled by ``torch.compile``.

    A per-token loop in eager PyTorch launches every small op of the step on its own (matmuls of a few
    rows, a ReLU, a LayerNorm): on a GPU the chip then waits on Python. Compiled, the step's elementwise
    work is fused by inductor, and on CUDA ``mode="reduce-overhead"`` records the fused kernels as CUDA
    graphs (torch's CUDAGraph trees: a graph per call of one forward, their backward likewise) that later
    iterations replay with one launch each. Elsewhere (the CPU) the default mode compiles without graphs.

    Shapes are static (``dynamic=False``): the first call for a new batch size, width, dtype or Python
    constant compiles (seconds to a minute), later calls reuse it. Autocast is traced, so the step runs
    in bf16 under the engine's autocast (TorchScript cannot). ``fn`` must be traceable as one graph
    (``fullgraph=True``): tensors, lists of tensors and Python constants in, tensors out, no ``.item()``.

    A CUDA graph's outputs live in its memory pool and a call that starts a new iteration overwrites the
    previous iteration's; CUDAGraph trees start one at every call with no backward pending, which is every
    call under ``torch.no_grad()``. There the outputs are cloned, so a loop may keep every step's output.
    """

    def __init__(self, fn):
        self.fn = fn
        self._compiled: dict = {}

    def compiled(self, device_type: str):
        """``fn`` compiled for one device type (once per process)."""
        if device_type not in self._compiled:
            mode = "reduce-overhead" if device_type == "cuda" else "default"
            self._compiled[device_type] = torch.compile(self.fn, mode=mode, dynamic=False, fullgraph=True)
        return self._compiled[device_type]

    def __call__(self, *args):
        device_type = next(_tensors(args)).device.type
        out = self.compiled(device_type)(*args)
        if device_type == "cuda" and not torch.is_grad_enabled():
            out = torch.utils._pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, out)
        return out


def _tensors(args):
    """The tensors among ``args`` and the lists or tuples in them, in order."""
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _tensors(a)
