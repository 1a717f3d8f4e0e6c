"""The "Hamiltonian" language model (sonnguyenasu/Hamiltonian-LLM), written from the method note.

Read top to bottom: momentum scan -> embeddings -> RoPE -> attention -> block -> model.
Shapes: B batch, T time, C = d_model, H heads, D = C / H head dim, V (padded) vocabulary.

    q_t = E_q[x_t]                      (E_q tied to the output head)
    p_t = E_p[x_t]                      (untied)
    v_t = p_t - p_{t-1},  v_0 = 0
    m_t = (beta m_{t-1} + (1 - beta) v_t)(1 - r_t),  m_{-1} = 0,  r_t = reset_strength if x_t == eot else 0
    h_0 = dropout(q + m)
    h   = h + Attn(LN1(h)) + SiLU(CausalDepthwiseConv(h))
    h   = h + MLP(LN2(h))
    logits = LN_f(h) E_q^T

Attention scores: s_ij = q_i.k_j / sqrt(D) - distance_scale * softplus(W_g u_i + b_g)_h * min(|i-j|, cap),
u = LN1(h), RoPE on q and k, causal. The penalty is an additive float mask for
``F.scaled_dot_product_attention``.

Despite the name there is NO Hamiltonian integrator, potential or energy term here or in the
source: the "physics" is the momentum input (an EMA high-pass of a second embedding) and the
distance-decayed attention (ALiBi with a learned, per-token, per-head slope).

Decoding (``decode``, the core's protocol): the state holds, per layer, a preallocated KV cache
(B, H, block_size, D) and the last conv_kernel - 1 block inputs of the causal conv, plus the
momentum m_{t-1} and the embedding p_{t-1}: each new token costs one step of the recurrence and
one query against the cache, with the same logits as a full forward.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from kinlm_core import ModelOutput
from kinlm_core.nn import apply_rope, rope_tables  # noqa: F401 - apply_rope is part of this module's surface


class DecodeState:
    """Everything a new token needs from the tokens before it (see the module docstring)."""

    def __init__(self, n_layer: int, size: int):
        self.k: list = [None] * n_layer                                   # (B, H, size, D) per layer
        self.v: list = [None] * n_layer
        self.conv: list = [None] * n_layer                                # (B, C, conv_kernel - 1) per layer
        self.m = self.p = None                                            # (B, C): m_{t-1}, p_{t-1}
        self.size, self.pos = size, 0

    def update(self, layer: int, k, v):
        """Write k, v (B, H, T, D) at positions pos..pos+T; return the filled prefix (B, H, pos+T, D)."""
        if self.k[layer] is None:
            B, H, _, D = k.shape
            self.k[layer], self.v[layer] = k.new_empty(B, H, self.size, D), v.new_empty(B, H, self.size, D)
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos:end], self.v[layer][:, :, self.pos:end] = k, v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

# --- momentum: m_t = a_t m_{t-1} + b_t, a_t = beta (1 - r_t), b_t = (1 - beta)(1 - r_t) v_t -----------


def momentum_loop(v: torch.Tensor, beta: float, r: torch.Tensor) -> torch.Tensor:
    """Reference recurrence, one token at a time. v: (B, T, C) velocities, r: (B, T) resets -> m (B, T, C)."""
    m = torch.zeros_like(v[:, 0])
    out = []
    for t in range(v.size(1)):
        m = (beta * m + (1.0 - beta) * v[:, t]) * (1.0 - r[:, t, None])
        out.append(m)
    return torch.stack(out, dim=1)


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """x: (..., L) -> (..., L, L) with [t, s] = sum_{u=s+1..t} x_u for s <= t, -inf above the diagonal.
    Built by a masked cumsum (no differences of cumulative sums), so log a = -inf (a full reset) is exact."""
    L = x.size(-1)
    x = x[..., :, None].expand(*x.shape, L)  # [t, s] = x_t
    x = x.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=x.device).tril(-1), 0.0)
    x = x.cumsum(dim=-2)
    return x.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=x.device).tril(0), float("-inf"))


def momentum_scan(v: torch.Tensor, beta: float, r: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Chunked parallel form of :func:`momentum_loop` (same inputs and output).

    Within a chunk of length L: m = Dec @ b + A * m_carry, where Dec[t, s] = prod_{u=s+1..t} a_u
    (from log a in segment-sum form, so beta^T never under- or overflows) and A_t = prod_{u<=t} a_u.
    The carry m at each chunk's end is propagated across the T/L chunks by a short sequential loop.
    The decay a_t is one scalar per token (shared by the C channels), so Dec is (B, n, L, L).
    """
    B, T, C = v.shape
    L = min(chunk, T)
    pad = (-T) % L
    a = (beta * (1.0 - r)).to(v.dtype)                                   # (B, T)
    coef = ((1.0 - beta) * (1.0 - r)).to(v.dtype)                        # (B, T): b_t = coef_t v_t
    if pad:  # padded steps come after the data and are cut off, so their values are irrelevant
        a, coef, v = F.pad(a, (0, pad), value=1.0), F.pad(coef, (0, pad)), F.pad(v, (0, 0, 0, pad))
    n = (T + pad) // L
    log_a = torch.log(a).view(B, n, L)                                    # (B, n, L)
    dec = torch.exp(_segsum(log_a)) * coef.view(B, n, 1, L)               # (B, n, L, L): Dec[t, s] * coef_s
    local = dec @ v.reshape(B, n, L, C)                                   # (B, n, L, C): chunk started at m = 0
    decay_in = torch.exp(torch.cumsum(log_a, dim=-1))                     # (B, n, L): prod_{u<=t} a_u
    carries, m = [], v.new_zeros(B, C)
    for k in range(n):                                                    # m entering chunk k
        carries.append(m)
        m = local[:, k, -1] + decay_in[:, k, -1, None] * m
    carry = torch.stack(carries, dim=1)                                   # (B, n, C)
    out = local.addcmul_(decay_in[..., None], carry[:, :, None, :])    # in place: one less (B, T, C) buffer
    return out.reshape(B, n * L, C)[:, :T]


class MomentumEmbedding(nn.Module):
    """h_0 = q + m with q = E_q[x] and m the reset-damped EMA of the velocity of p = E_p[x]."""

    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.q_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.p_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.beta, self.reset_strength = cfg.beta, cfg.reset_strength
        self.scan, self.chunk = cfg.momentum_scan, cfg.scan_chunk

    def momentum(self, idx, eot_token_id=None, steer_v=None):
        """idx (B, T) -> m (B, T, C). ``steer_v`` (B, C) is added to every velocity (momentum steering)."""
        p = self.p_emb(idx)                                               # (B, T, C)
        v = torch.cat([torch.zeros_like(p[:, :1]), p[:, 1:] - p[:, :-1]], dim=1)
        if steer_v is not None:
            v = v + steer_v[:, None, :]
        if eot_token_id is None:
            r = torch.zeros(idx.shape, dtype=v.dtype, device=idx.device)
        else:
            r = (idx == eot_token_id).to(v.dtype) * self.reset_strength  # (B, T)
        if self.scan == "loop":
            return momentum_loop(v, self.beta, r)
        return momentum_scan(v, self.beta, r, self.chunk)

    def forward(self, idx, eot_token_id=None, steer_q=None, steer_v=None, state: DecodeState | None = None):
        """h_0 (B, T, C). With a decoding ``state`` past its prompt, the recurrence goes on from the
        state's m_{t-1}, p_{t-1} (one step per new token); the state keeps the last m and p."""
        if state is None or state.pos == 0:
            m = self.momentum(idx, eot_token_id, steer_v)
            p_last = self.p_emb(idx[:, -1]) if state is not None else None
        else:
            p = self.p_emb(idx)                                           # (B, T, C)
            v = p - torch.cat([state.p[:, None], p[:, :-1]], dim=1)
            if steer_v is not None:
                v = v + steer_v[:, None, :]
            r = torch.zeros(idx.shape, dtype=v.dtype, device=idx.device) if eot_token_id is None else \
                (idx == eot_token_id).to(v.dtype) * self.reset_strength
            m_t, out = state.m, []
            for t in range(idx.size(1)):
                m_t = (self.beta * m_t + (1.0 - self.beta) * v[:, t]) * (1.0 - r[:, t, None])
                out.append(m_t)
            m, p_last = torch.stack(out, dim=1), p[:, -1]
        if state is not None:
            state.m, state.p = m[:, -1], p_last
        h = self.q_emb(idx) + m
        return h if steer_q is None else h + steer_q[:, None, :]


# --- attention ---------------------------------------------------------------------------------


class GravityAttention(nn.Module):
    """Causal multi-head attention with RoPE and a learned, input-dependent distance penalty."""

    def __init__(self, cfg):
        super().__init__()
        C, self.n_head = cfg.d_model, cfg.n_head
        self.c_attn = nn.Linear(C, 3 * C, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.gravity = nn.Linear(C, cfg.n_head)                           # g = softplus(W_g u + b_g), per head
        self.scale, self.dropout = cfg.distance_scale, cfg.attn_dropout
        T = cfg.block_size
        i = torch.arange(T)
        self.register_buffer("dist", (i[:, None] - i[None, :]).abs().clamp(max=cfg.distance_cap).float(),
                             persistent=False)                            # (T, T): min(|i-j|, cap)
        self.register_buffer("causal", torch.full((T, T), float("-inf")).triu(1), persistent=False)

    def gravity_mask(self, u, offset: int = 0):
        """u: (B, T, C) at positions offset..offset+T -> additive mask (B, H, T, offset+T):
        -scale * g_h(u_i) * min(|i-j|, cap), -inf for j > i."""
        T = u.size(1)
        S = offset + T
        g = F.softplus(self.gravity(u)).transpose(1, 2)                   # (B, H, T)
        return self.causal[offset:S, :S] - self.scale * g[..., None] * self.dist[offset:S, :S]

    def forward(self, u, cos, sin, state: DecodeState | None = None, layer: int = 0):
        B, T, C = u.shape
        q, k, v = self.c_attn(u).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        offset = 0 if state is None else state.pos
        if state is not None:
            k, v = state.update(layer, k, v)                              # (B, H, offset+T, D)
        mask = self.gravity_mask(u, offset).to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


# --- block and model ---------------------------------------------------------------------------


class Block(nn.Module):
    """h = h + Attn(LN1(h)) + Reflex(h);  h = h + MLP(LN2(h)).  Reflex: depthwise causal conv + SiLU."""

    def __init__(self, cfg):
        super().__init__()
        C = cfg.d_model
        self.ln1 = nn.LayerNorm(C)
        self.attn = GravityAttention(cfg)
        self.k = cfg.conv_kernel
        self.reflex = nn.Conv1d(C, C, cfg.conv_kernel, groups=C)          # padded on the left in forward
        self.ln2 = nn.LayerNorm(C)
        self.mlp = nn.Sequential(nn.Linear(C, cfg.mlp_ratio * C, bias=False), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * C, C, bias=False))

    def forward(self, h, cos, sin, state: DecodeState | None = None, layer: int = 0):
        x = h.transpose(1, 2)                                             # (B, C, T)
        if state is None or state.pos == 0:
            x = F.pad(x, (self.k - 1, 0))                                 # causal: zeros before the first token
        else:
            x = torch.cat([state.conv[layer], x], dim=2)                  # the previous k-1 inputs
        if state is not None:
            state.conv[layer] = x[:, :, x.size(2) - (self.k - 1):]
        r = F.silu(self.reflex(x).transpose(1, 2))                        # (B, T, C)
        h = h + self.attn(self.ln1(h), cos, sin, state, layer) + r
        return h + self.mlp(self.ln2(h))


class HamiltonianLM(nn.Module):
    """The full model. ``eot_token_id`` (attribute, settable) switches the momentum resets on."""

    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        m = cfg.pad_vocab_to_multiple
        self.vocab_size = vocab_size                                      # the tokenizer's
        self.padded_vocab_size = (vocab_size + m - 1) // m * m
        self.block_size = cfg.block_size
        self.eot_token_id = cfg.eot_token_id
        self.embed = MomentumEmbedding(cfg, self.padded_vocab_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, self.padded_vocab_size, bias=False)
        self.head.weight = self.embed.q_emb.weight                       # tied: the head rows are the q vectors
        cos, sin = rope_tables(cfg.d_model // cfg.n_head, cfg.block_size, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for blk in self.blocks:                                          # gravity net: W_g ~ N(0, 0.01), b_g = 0.5
            nn.init.normal_(blk.attn.gravity.weight, std=cfg.gravity_weight_std)
            nn.init.constant_(blk.attn.gravity.bias, cfg.gravity_bias_init)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def bind_tokenizer(self, tokenizer) -> None:
        """Called by the engine after build: take the end-of-text id from the tokenizer unless
        the config fixed one, so documents reset the momentum."""
        if self.eot_token_id is None:
            self.eot_token_id = tokenizer.eos_id

    def num_parameters(self) -> int:
        """Unique parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids, output_hidden_states: bool = False, steer=None,
                steer_target: str = "q") -> ModelOutput:
        """input_ids (B, T), T <= block_size -> ModelOutput(logits (B, T, V_padded), hidden_states).

        hidden_states (transformers' convention, n_layer + 1 entries): h_0 (block input, after
        dropout), the outputs of blocks 1..n_layer-1, and LN_f(output of the last block).
        steer: optional (C,) or (B, C) vector added at every position, to q (``steer_target="q"``)
        or to the velocity v_t that feeds the momentum EMA (``"momentum"``).
        """
        B, T = input_ids.shape
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        s_q, s_v = self._steer(steer, B, steer_target)
        h = self.drop(self.embed(input_ids, self.eot_token_id, s_q, s_v))  # (B, T, C)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        hidden = [h] if output_hidden_states else None
        for blk in self.blocks:
            h = blk(h, cos, sin)
            if hidden is not None:
                hidden.append(h)
        h = self.ln_f(h)
        if hidden is not None:
            hidden[-1] = h
        return ModelOutput(logits=self.head(h), hidden_states=tuple(hidden) if hidden is not None else None)

    def _steer(self, steer, B: int, steer_target: str):
        """(steer_q, steer_v): the steering vector (B, C) where it is added, None elsewhere."""
        if steer is None:
            return None, None
        steer = steer.to(self.head.weight.dtype).expand(B, -1)
        return (steer, None) if steer_target == "q" else (None, steer)

    def decode(self, input_ids, state: DecodeState | None = None, steer=None, steer_target: str = "q"):
        """The decoding protocol: ``state=None`` prefills input_ids (B, T); then new tokens (B, T')
        with the previous state -> (logits (B, T, V_padded), state). Same logits as ``forward`` on
        the whole sequence; positions never exceed block_size (the sampler restarts from the last
        block_size tokens). ``steer`` as in ``forward``."""
        B, T = input_ids.shape
        state = state if state is not None else DecodeState(len(self.blocks), self.block_size)
        pos = state.pos
        if pos + T > self.block_size:
            raise ValueError(f"decode: {pos} cached + {T} new positions exceed block_size {self.block_size}")
        s_q, s_v = self._steer(steer, B, steer_target)
        h = self.drop(self.embed(input_ids, self.eot_token_id, s_q, s_v, state))
        cos, sin = self.rope_cos[pos:pos + T], self.rope_sin[pos:pos + T]
        for i, blk in enumerate(self.blocks):
            h = blk(h, cos, sin, state, i)
        state.pos += T
        return self.head(self.ln_f(h)), state
