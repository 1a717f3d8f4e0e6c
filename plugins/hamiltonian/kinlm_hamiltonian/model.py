"""The "Hamiltonian" language model (sonnguyenasu/Hamiltonian-LLM, main.py), written from the method note.

Read top to bottom: momentum recurrence -> embeddings -> attention -> block -> model.
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
u = LN1(h), RoPE (kinlm_core.nn, rotate-half) on q and k, causal. Two exact paths compute it
(config ``attention``): "reference" builds the penalty as an additive float mask (B, H, T, T) for
``F.scaled_dot_product_attention``; "flex" gives the same penalty to FlexAttention as a ``score_mod``
with a causal ``block_mask``, so no (B, H, T, T) tensor exists (fused kernel, CUDA). Both take the
penalty from :func:`gravity_penalty`. "auto" (default) picks flex on CUDA and the reference elsewhere.

Initialisation (``init="source"``, the source's PyTorch defaults): E_q is the head's Linear weight,
U(+-1/sqrt(C)); E_p ~ N(0, 1) (nn.Embedding); every other Linear and the conv U(+-1/sqrt(fan_in))
(nn.Linear / nn.Conv1d), LayerNorms 1 and 0; then W_g ~ N(0, 0.01), b_g = 0.5. So at init the
momentum (std about 0.10 per channel once the EMA has filled, from N(0, 1) rows) outweighs q
(about 0.023 at C 640) about 4.5 times. ``init="gpt2"`` is kinlm's N(0, 0.02) option (see the config).

Despite the name there is NO Hamiltonian integrator, potential or energy term here or in the
source: the "physics" is the momentum input (an EMA high-pass of a second embedding) and the
distance-decayed attention (ALiBi with a learned, per-token, per-head slope).

Decoding (``decode``, the core's protocol): the state holds, per layer, a preallocated KV cache
(B, H, block_size, D) and the last conv_kernel - 1 block inputs of the causal conv, plus the
momentum m_{t-1} and the embedding p_{t-1}: each new token costs one :func:`momentum_step` and
one query against the cache, with the same logits as a full forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinlm_core import ModelOutput
from kinlm_core.nn import RotaryEmbedding

try:  # FlexAttention (torch >= 2.5); without it "auto" is the reference path and "flex" is refused
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - old torch
    create_block_mask = flex_attention = None


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


def momentum_step(m_prev: torch.Tensor, v_t: torch.Tensor, r_t: torch.Tensor, beta: float) -> torch.Tensor:
    """One step of the recurrence: m_t = (beta m_{t-1} + (1 - beta) v_t)(1 - r_t).
    m_prev, v_t: (B, C); r_t: (B,) -> m_t (B, C). The only place the recurrence is written."""
    return (beta * m_prev + (1.0 - beta) * v_t) * (1.0 - r_t[:, None])


def momentum_loop(v: torch.Tensor, beta: float, r: torch.Tensor, m0: torch.Tensor | None = None) -> torch.Tensor:
    """Reference recurrence, one :func:`momentum_step` per token (the source's loop).
    v: (B, T, C) velocities, r: (B, T) resets, m0: (B, C) m_{-1} (None: zeros) -> m (B, T, C)."""
    m = torch.zeros_like(v[:, 0]) if m0 is None else m0
    out = []
    for t in range(v.size(1)):
        m = momentum_step(m, v[:, t], r[:, t], beta)
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
        self.q_emb = nn.Embedding(vocab_size, cfg.d_model)                # its weight becomes the head's (tied)
        self.p_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.beta, self.reset_strength = cfg.beta, cfg.reset_strength
        self.scan, self.chunk = cfg.momentum_scan, cfg.scan_chunk

    def resets(self, idx, eot_token_id, dtype) -> torch.Tensor:
        """r (B, T): reset_strength where idx is the end-of-text id, else 0 (all 0 when the id is None)."""
        if eot_token_id is None:
            return torch.zeros(idx.shape, dtype=dtype, device=idx.device)
        return (idx == eot_token_id).to(dtype) * self.reset_strength

    def forward(self, idx, eot_token_id=None, steer_q=None, steer_v=None, state: DecodeState | None = None):
        """idx (B, T) -> h_0 (B, T, C). ``steer_q`` / ``steer_v`` (B, C) are added at every position to
        q / to the velocity. With a decoding ``state`` past its prompt the recurrence goes on from the
        state's m_{t-1}, p_{t-1}; the state keeps the last m and p."""
        p = self.p_emb(idx)                                               # (B, T, C)
        cont = state is not None and state.pos > 0
        p_prev = torch.cat([state.p[:, None] if cont else p[:, :1], p[:, :-1]], dim=1)
        v = p - p_prev                                                    # (B, T, C); v_0 = 0 at a text's start
        if steer_v is not None:
            v = v + steer_v[:, None, :]
        r = self.resets(idx, eot_token_id, v.dtype)                       # (B, T)
        if cont:
            m = momentum_loop(v, self.beta, r, state.m)                   # one step per new token
        elif self.scan == "loop":
            m = momentum_loop(v, self.beta, r)
        else:
            m = momentum_scan(v, self.beta, r, self.chunk)                # (B, T, C)
        if state is not None:
            state.m, state.p = m[:, -1], p[:, -1]
        h = self.q_emb(idx) + m
        return h if steer_q is None else h + steer_q[:, None, :]


# --- attention ---------------------------------------------------------------------------------


def gravity_penalty(strength: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """The gravity penalty subtracted from a score: strength * dist, with strength = distance_scale * g_h(u_i)
    and dist = min(|i - j|, cap). The one place both attention paths (and decoding) take it from."""
    return strength * dist


def flex_available() -> bool:
    """True when this torch has FlexAttention."""
    return flex_attention is not None


_compiled_flex = None


def _flex(q, k, v, score_mod, block_mask):
    """FlexAttention: compiled (its fused kernel) on CUDA, torch's eager dense reference elsewhere
    (CPU: forward only in torch 2.13, no backward)."""
    global _compiled_flex
    if q.device.type != "cuda":
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, score_mod=score_mod, block_mask=block_mask)


class GravityAttention(nn.Module):
    """Causal multi-head attention with RoPE and a learned, input-dependent distance penalty."""

    def __init__(self, cfg):
        super().__init__()
        C, self.n_head = cfg.d_model, cfg.n_head
        self.c_attn = nn.Linear(C, 3 * C, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.gravity = nn.Linear(C, cfg.n_head)                           # g = softplus(W_g u + b_g), per head
        self.scale, self.dropout = cfg.distance_scale, cfg.attn_dropout
        self.cap, self.attention = cfg.distance_cap, cfg.attention
        self._block_masks: dict = {}                                      # (T, S, offset, device) -> BlockMask
        T = cfg.block_size
        i = torch.arange(T)
        self.register_buffer("dist", (i[:, None] - i[None, :]).abs().clamp(max=cfg.distance_cap).float(),
                             persistent=False)                            # (T, T): min(|i-j|, cap)
        self.register_buffer("causal", torch.full((T, T), float("-inf")).triu(1), persistent=False)

    def strength(self, u):
        """u: (B, T, C) -> distance_scale * g_h(u_i): (B, H, T)."""
        return self.scale * F.softplus(self.gravity(u)).transpose(1, 2)

    def gravity_mask(self, u, offset: int = 0):
        """u: (B, T, C) at positions offset..offset+T -> additive mask (B, H, T, offset+T):
        -scale * g_h(u_i) * min(|i-j|, cap), -inf for j > i (the reference path)."""
        S = offset + u.size(1)
        return self.causal[offset:S, :S] - gravity_penalty(self.strength(u)[..., None], self.dist[offset:S, :S])

    def use_flex(self, q) -> bool:
        """Which path this call takes: ``attention`` "flex" / "reference", or "auto" = flex on CUDA
        when FlexAttention exists. Attention dropout (not in FlexAttention) always takes the reference."""
        if self.training and self.dropout > 0:
            return False
        if self.attention == "auto":
            return q.device.type == "cuda" and flex_available()
        return self.attention == "flex"

    def block_mask(self, T: int, S: int, offset: int, device):
        """Causal BlockMask for queries at offset..offset+T over keys 0..S, cached per shape."""
        key = (T, S, offset, str(device))
        if key not in self._block_masks:
            self._block_masks[key] = create_block_mask(
                lambda b, h, i, j: i + offset >= j, None, None, T, S, device=device)
        return self._block_masks[key]

    def flex_attend(self, q, k, v, u, offset: int = 0):
        """FlexAttention with score - strength_h(u_i) * min(|i + offset - j|, cap) and a causal block mask:
        the same scores as the reference mask, without materialising it."""
        if flex_attention is None:
            raise RuntimeError('model.attention "flex" needs torch >= 2.5 (FlexAttention); use "reference"')
        if q.device.type == "cpu" and q.requires_grad and not getattr(self, "_allow_cpu_flex_grad", False):
            raise RuntimeError('model.attention "flex" cannot train on CPU (FlexAttention has no CPU backward); '
                               'use "auto" or "reference"')
        strength = self.strength(u).to(q.dtype)                           # (B, H, T)
        cap = self.cap

        def score_mod(score, b, h, i, j):
            return score - gravity_penalty(strength[b, h, i], torch.clamp((i + offset - j).abs(), max=cap))

        return _flex(q, k, v, score_mod, self.block_mask(q.size(2), k.size(2), offset, q.device))

    def forward(self, u, rope: RotaryEmbedding, state: DecodeState | None = None, layer: int = 0):
        B, T, C = u.shape
        q, k, v = self.c_attn(u).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        offset = 0 if state is None else state.pos
        q, k = rope(q, k, offset)
        if state is not None:
            k, v = state.update(layer, k, v)                              # (B, H, offset+T, D)
        if state is None and self.use_flex(q):
            y = self.flex_attend(q, k, v, u)
        else:  # the reference; decoding too (its key length grows every token: no fixed shape to compile)
            mask = self.gravity_mask(u, offset).to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


# --- block and model ---------------------------------------------------------------------------


class Block(nn.Module):
    """h = h + Attn(LN1(h)) + Reflex(h);  h = h + MLP(LN2(h)).  Reflex: depthwise causal conv + SiLU.

    With ``reflex=false`` (the ablation) the block is h = h + Attn(LN1(h)); h = h + MLP(LN2(h)).
    """

    def __init__(self, cfg):
        super().__init__()
        C = cfg.d_model
        self.ln1 = nn.LayerNorm(C)
        self.attn = GravityAttention(cfg)
        self.k = cfg.conv_kernel
        self.reflex = nn.Conv1d(C, C, cfg.conv_kernel, groups=C) if cfg.reflex else None  # padded on the left in forward
        self.ln2 = nn.LayerNorm(C)
        self.mlp = nn.Sequential(nn.Linear(C, cfg.mlp_ratio * C, bias=False), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * C, C, bias=False))

    def forward(self, h, rope: RotaryEmbedding, state: DecodeState | None = None, layer: int = 0):
        if self.reflex is None:
            h = h + self.attn(self.ln1(h), rope, state, layer)
            return h + self.mlp(self.ln2(h))
        x = h.transpose(1, 2)                                             # (B, C, T)
        if state is None or state.pos == 0:
            x = F.pad(x, (self.k - 1, 0))                                 # causal: zeros before the first token
        else:
            x = torch.cat([state.conv[layer], x], dim=2)                  # the previous k-1 inputs
        if state is not None:
            state.conv[layer] = x[:, :, x.size(2) - (self.k - 1):]
        r = F.silu(self.reflex(x).transpose(1, 2))                        # (B, T, C)
        h = h + self.attn(self.ln1(h), rope, state, layer) + r
        return h + self.mlp(self.ln2(h))


class HamiltonianLM(nn.Module):
    """The full model. ``eot_token_id`` (attribute, settable) switches the momentum resets on."""

    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.cfg = cfg                                                    # read by hf_export
        m = cfg.pad_vocab_to_multiple
        self.vocab_size = vocab_size                                      # the tokenizer's
        self.padded_vocab_size = (vocab_size + m - 1) // m * m
        self.block_size = cfg.block_size
        self.eot_token_id = cfg.eot_token_id
        self.decay = cfg.decay
        self.embed = MomentumEmbedding(cfg, self.padded_vocab_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, self.padded_vocab_size, bias=False)
        self.embed.q_emb.weight = self.head.weight                       # tied as the source: E_q is the head's weight
        self.rope = RotaryEmbedding(cfg.d_model // cfg.n_head, cfg.block_size, cfg.rope_base)
        if cfg.init == "gpt2":
            self.apply(self._init_gpt2)
        for blk in self.blocks:                                          # gravity net: W_g ~ N(0, 0.01), b_g = 0.5
            nn.init.normal_(blk.attn.gravity.weight, std=cfg.gravity_weight_std)
            nn.init.constant_(blk.attn.gravity.bias, cfg.gravity_bias_init)

    @staticmethod
    def _init_gpt2(module):
        """``init="gpt2"``: Linear and Embedding weights N(0, 0.02), biases 0 (the conv keeps its default)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        """E_q, the token table that feeds the residual stream directly (h_0 = q + m) and is tied to the
        head: transformers' "input embedding" of this model. E_p is left out: it enters only through
        the momentum m, already a smoothed first difference of its rows (see plugins/vt_t5/README.md)."""
        return self.embed.q_emb

    def set_input_embeddings(self, module: nn.Module) -> None:
        """Replace E_q (the head stays tied to it when ``module`` has a weight of the head's shape)."""
        self.embed.q_emb = module
        if getattr(module, "weight", None) is not None and module.weight.shape == self.head.weight.shape:
            self.head.weight = module.weight

    def bind_tokenizer(self, tokenizer) -> None:
        """Called by the engine after build: take the end-of-text id from the tokenizer unless
        the config fixed one, so documents reset the momentum."""
        if self.eot_token_id is None:
            self.eot_token_id = tokenizer.eos_id

    def decay_param_names(self) -> list[str]:
        """Parameters AdamW decays beyond kinlm's matrices: with ``decay="all"`` (the source's
        AdamW(model.parameters()), default weight decay 0.01) every one, E_q, E_p, norms and biases included."""
        return [n for n, _ in self.named_parameters()] if self.decay == "all" else []

    def num_parameters(self) -> int:
        """Unique parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids, output_hidden_states: bool = False, steer=None,
                steer_target: str = "q", resets: bool = True) -> ModelOutput:
        """input_ids (B, T), T <= block_size -> ModelOutput(logits (B, T, V_padded), hidden_states).

        hidden_states (transformers' convention, n_layer + 1 entries): h_0 (block input, after
        dropout), the outputs of blocks 1..n_layer-1, and LN_f(output of the last block).
        steer: optional (C,) or (B, C) vector added at every position, to q (``steer_target="q"``)
        or to the velocity v_t that feeds the momentum EMA (``"momentum"``).
        resets: False runs without end-of-text resets (the source's look-ahead passes do).
        """
        B, T = input_ids.shape
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        s_q, s_v = self._steer(steer, B, steer_target)
        eot = self.eot_token_id if resets else None
        h = self.drop(self.embed(input_ids, eot, s_q, s_v))                # (B, T, C)
        hidden = [h] if output_hidden_states else None
        for blk in self.blocks:
            h = blk(h, self.rope)
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

    def decode(self, input_ids, state: DecodeState | None = None, steer=None, steer_target: str = "q",
               resets: bool = True):
        """The decoding protocol: ``state=None`` prefills input_ids (B, T); then new tokens (B, T')
        with the previous state -> (logits (B, T, V_padded), state). Same logits as ``forward`` on
        the whole sequence; positions never exceed block_size (the sampler restarts from the last
        block_size tokens). ``steer``, ``resets`` as in ``forward``."""
        B, T = input_ids.shape
        state = state if state is not None else DecodeState(len(self.blocks), self.block_size)
        pos = state.pos
        if pos + T > self.block_size:
            raise ValueError(f"decode: {pos} cached + {T} new positions exceed block_size {self.block_size}")
        s_q, s_v = self._steer(steer, B, steer_target)
        eot = self.eot_token_id if resets else None
        h = self.drop(self.embed(input_ids, eot, s_q, s_v, state))
        for i, blk in enumerate(self.blocks):
            h = blk(h, self.rope, state, i)
        state.pos += T
        return self.head(self.ln_f(h)), state

    def hf_export(self, tokenizer):
        """The transformers custom-code export (issue #33): see kinlm_hamiltonian/export.py."""
        from .export import hf_export

        return hf_export(self, tokenizer)
