"""Fixed-state baselines from Zoology's set (Arora et al. 2023), pure PyTorch: linear attention with
Based's Taylor feature map, and BaseConv (a gated causal convolution). Each carries a state of fixed
size from token to token, so on MQAR they are the points of the state-size curve (``kinlm diagnose``).
Shapes: B batch, T time, C width, H heads, d = C / H, f the feature dimension, k the kernel, V vocabulary.

Both models share the frame (as conv_attention):

    h_0 = E[x]                                            (B, T, C), no position table
    for each block:
        h = h + Mixer(LN(h))                              the sequence mixer below
        h = h + MLP(LN(h))                                GELU, hidden 4C
    logits = W_out LN(h)                                  (B, T, V)

Linear attention (``linear_attention``; Katharopoulos et al. 2020 with Based's feature map):

    u   = x + (W_g x) * conv_3(x)                         gated depthwise causal conv (gives order)
    q_t, k_t = W_q u_t, W_k u_t   per head in R^f;  v_t = W_v u_t per head in R^d
    phi(z) = [1, z / f^(1/4), vec(z z^T) / (sqrt(2) sqrt(f))]        so phi(q).phi(k) = 1 + s + s^2 / 2,
                                                                     s = q.k / sqrt(f)  (> 0 always)
    y_t = sum_{s<=t} phi(q_t).phi(k_s) v_s / sum_{s<=t} phi(q_t).phi(k_s)
    Mixer(x)_t = W_o y_t

  The recurrent form carries S_t = sum phi(k_s) v_s^T (D x d) and z_t = sum phi(k_s) (D), with
  D = 1 + f + f^2, per head and layer, plus the conv's last 2 inputs: state per sequence
  n_layer (H D (d + 1) + 2C) numbers, whatever T. Training uses the equal quadratic form
  (T x T scores, masked), exact and fast at the diagnostics' lengths.

BaseConv (``base_conv``; Zoology's gated convolution, here with an explicit kernel of k taps):

    Mixer(x)_t = (W_p x_t) * sum_{j<k} w_j x_{t-j}  +  x_t          depthwise causal conv, k taps

  The state is the last k - 1 inputs of each layer: n_layer (k - 1) C numbers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..api import ModelOutput


def causal_conv(conv: nn.Conv1d, x, k: int):
    """Depthwise causal convolution of (B, T, C) with ``k`` taps (left padding)."""
    return conv(F.pad(x.transpose(1, 2), (k - 1, 0))).transpose(1, 2)


class LinearAttention(nn.Module):
    """The linear-attention mixer of the module docstring."""

    def __init__(self, C: int, H: int, f: int, conv_kernel: int = 3):
        super().__init__()
        self.H, self.f, self.k = H, f, conv_kernel
        self.conv = nn.Conv1d(C, C, conv_kernel, groups=C)
        self.gate = nn.Linear(C, C)
        self.qk = nn.Linear(C, 2 * H * f, bias=False)
        self.v, self.o = nn.Linear(C, C, bias=False), nn.Linear(C, C)

    def forward(self, x):
        B, T, C = x.shape
        u = x + self.gate(x) * causal_conv(self.conv, x, self.k)
        q, k = self.qk(u).view(B, T, 2, self.H, self.f).permute(2, 0, 3, 1, 4)   # (B, H, T, f) each
        v = self.v(u).view(B, T, self.H, C // self.H).transpose(1, 2)             # (B, H, T, d)
        s = q @ k.transpose(-1, -2) / self.f ** 0.5                               # (B, H, T, T)
        a = (1 + s + 0.5 * s * s).tril()                                          # phi(q).phi(k), causal
        y = (a @ v) / a.sum(-1, keepdim=True)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class BaseConv(nn.Module):
    """The BaseConv mixer of the module docstring."""

    def __init__(self, C: int, k: int):
        super().__init__()
        self.k = k
        self.conv = nn.Conv1d(C, C, k, groups=C)
        self.proj = nn.Linear(C, C)

    def forward(self, x):
        return self.proj(x) * causal_conv(self.conv, x, self.k) + x


class Block(nn.Module):
    def __init__(self, C: int, mixer: nn.Module):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.mixer = mixer
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))

    def forward(self, h):
        h = h + self.mixer(self.ln1(h))
        return h + self.mlp(self.ln2(h))


class FixedStateLM(nn.Module):
    """Token table, blocks of one mixer kind, final LayerNorm, untied head. No context limit."""

    def __init__(self, vocab_size: int, d_model: int, mixers: list[nn.Module]):
        super().__init__()
        self.block_size = None
        self.wte = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, m) for m in mixers)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Module:
        return self.wte

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.wte = module

    def forward(self, input_ids, output_hidden_states: bool = False) -> ModelOutput:
        h = self.wte(input_ids)
        hs = [h]
        for blk in self.blocks:
            h = blk(h)
            hs.append(h)
        h = self.ln_f(h)
        hs[-1] = h
        return ModelOutput(logits=self.head(h), hidden_states=tuple(hs) if output_hidden_states else None)


def linear_attention_lm(vocab_size: int, d_model: int, n_layer: int, n_head: int, feature_dim: int, conv_kernel: int):
    return FixedStateLM(vocab_size, d_model,
                        [LinearAttention(d_model, n_head, feature_dim, conv_kernel) for _ in range(n_layer)])


def base_conv_lm(vocab_size: int, d_model: int, n_layer: int, conv_kernel: int):
    return FixedStateLM(vocab_size, d_model, [BaseConv(d_model, conv_kernel) for _ in range(n_layer)])
