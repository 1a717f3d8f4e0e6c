"""An exported kinlm "Hamiltonian" language model (sonnguyenasu/Hamiltonian-LLM), for transformers.

Self-contained: torch, transformers and the standard library only. It computes what kinlm's
``kinlm_hamiltonian.model.HamiltonianLM`` computes, with the same parameter names.
Shapes: B batch, T time, C = d_model, H heads, D = C / H, V vocabulary.

    q_t = E_q[x_t]                      (E_q is also the output head: logits = LN_f(h) E_q^T)
    p_t = E_p[x_t]
    v_t = p_t - p_{t-1},  v_0 = 0       (+ a steering vector, steer_target="momentum")
    m_t = (beta m_{t-1} + (1 - beta) v_t)(1 - r_t),  m_{-1} = 0,  r_t = reset_strength if x_t == eot else 0
    h_0 = dropout(q + m)                (+ a steering vector, steer_target="q")
    h   = h + Attn(LN1(h)) + SiLU(CausalDepthwiseConv(h))      (without the conv when reflex is false)
    h   = h + MLP(LN2(h))               MLP = Linear(C, r C) -> GELU -> Linear(r C, C)
    logits = LN_f(h) E_q^T

Attention: s_ij = q_i.k_j / sqrt(D) - distance_scale * softplus(W_g u_i + b_g)_h * min(|i - j|, cap),
u = LN1(h), RoPE (rotate-half layout) on q and k, causal.

Generation: the cache is a :class:`HamiltonianState` (per layer the keys and values, the last
conv_kernel - 1 conv inputs; the momentum m_{t-1} and p_{t-1}), returned as ``cache`` (and as
``past_key_values`` for transformers 4.x); each new token costs one momentum step and one query
against the cache. Past ``block_size`` tokens, ``generate`` starts again from the last
``block_size`` tokens (the positions never exceed the block), exactly as kinlm's sampler.

Steering (the method's concept vectors): ``model(ids, steer=vec)`` or
``model.generate(ids, steer=vec, steer_target="q" | "momentum")`` adds ``vec`` ((C,) or (B, C)) at
every position to q or to the velocity v; ``model.concept_vector(token_id)`` is the head row kinlm
uses (``strength * concept_vector(first token of the word)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_kinlm_hamiltonian import HamiltonianConfig


@dataclass
class HamiltonianOutput(ModelOutput):
    """loss (when labels are given), logits (B, T, V), the decoding state, hidden states (n_layer + 1)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object | None = None
    past_key_values: object | None = None
    hidden_states: tuple | None = None


class HamiltonianState:
    """Everything a new token needs from the tokens before it; ``pos`` tokens are held."""

    is_compileable = False

    def __init__(self, n_layer: int, size: int):
        self.k, self.v, self.conv = [None] * n_layer, [None] * n_layer, [None] * n_layer
        self.m = self.p = None                                            # (B, C): m_{t-1}, p_{t-1}
        self.size, self.pos = size, 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.pos

    def update(self, layer: int, k, v):
        """Write k, v (B, H, T, D) at positions pos..pos+T; return the filled prefix (B, H, pos+T, D)."""
        if self.k[layer] is None:
            B, H, _, D = k.shape
            self.k[layer], self.v[layer] = k.new_empty(B, H, self.size, D), v.new_empty(B, H, self.size, D)
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos:end], self.v[layer][:, :, self.pos:end] = k, v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def rope(x, offset: int, base: float):
    """Rotate pairs (x_i, x_{i+D/2}) of x (B, H, T, D) by angle t / base^(2i/D), t = offset..offset+T-1."""
    D, T = x.size(-1), x.size(-2)
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float32, device=x.device) / D))
    t = torch.arange(offset, offset + T, dtype=torch.float32, device=x.device)
    ang = torch.outer(t, inv_freq)
    ang = torch.cat([ang, ang], dim=-1)                                   # (T, D)
    x1, x2 = x.chunk(2, dim=-1)
    return x * ang.cos().to(x.dtype) + torch.cat([-x2, x1], dim=-1) * ang.sin().to(x.dtype)


class MomentumEmbedding(nn.Module):
    """h_0 = q + m: q = E_q[x], m the reset-damped EMA of the velocity of p = E_p[x]."""

    def __init__(self, config):
        super().__init__()
        self.q_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.p_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.beta, self.reset_strength = config.beta, config.reset_strength

    def forward(self, idx, eot, steer_q=None, steer_v=None, state: HamiltonianState | None = None):
        p = self.p_emb(idx)                                               # (B, T, C)
        cont = state is not None and state.pos > 0
        p_prev = torch.cat([state.p[:, None] if cont else p[:, :1], p[:, :-1]], dim=1)
        v = p - p_prev                                                    # v_0 = 0 at a text's start
        if steer_v is not None:
            v = v + steer_v[:, None, :]
        r = torch.zeros(idx.shape, dtype=v.dtype, device=idx.device)
        if eot is not None:
            r = (idx == eot).to(v.dtype) * self.reset_strength            # (B, T)
        m = state.m if cont else torch.zeros_like(v[:, 0])
        ms = []
        for t in range(idx.size(1)):                                      # m_t = (beta m + (1 - beta) v_t)(1 - r_t)
            m = (self.beta * m + (1.0 - self.beta) * v[:, t]) * (1.0 - r[:, t, None])
            ms.append(m)
        m = torch.stack(ms, dim=1)
        if state is not None:
            state.m, state.p = m[:, -1], p[:, -1]
        h = self.q_emb(idx) + m
        return h if steer_q is None else h + steer_q[:, None, :]


class GravityAttention(nn.Module):
    """Causal multi-head attention, RoPE, and the learned per-token, per-head distance penalty."""

    def __init__(self, config):
        super().__init__()
        C, self.n_head = config.d_model, config.n_head
        self.c_attn = nn.Linear(C, 3 * C, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.gravity = nn.Linear(C, config.n_head)                        # g = softplus(W_g u + b_g)
        self.scale, self.cap, self.base = config.distance_scale, config.distance_cap, config.rope_base
        self.dropout = config.attn_dropout

    def gravity_mask(self, u, offset: int):
        """(B, H, T, offset+T): -scale * g_h(u_i) * min(|i - j|, cap), -inf for j > i."""
        T = u.size(1)
        i = torch.arange(offset, offset + T, device=u.device)[:, None]
        j = torch.arange(offset + T, device=u.device)[None, :]
        dist = (i - j).abs().clamp(max=self.cap).float()                  # (T, S)
        causal = torch.zeros(dist.shape, device=u.device).masked_fill(j > i, float("-inf"))
        g = F.softplus(self.gravity(u)).transpose(1, 2)                   # (B, H, T)
        return causal - self.scale * g[..., None] * dist

    def forward(self, u, state: HamiltonianState | None, layer: int):
        B, T, C = u.shape
        q, k, v = self.c_attn(u).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        offset = 0 if state is None else state.pos
        q, k = rope(q, offset, self.base), rope(k, offset, self.base)
        if state is not None:
            k, v = state.update(layer, k, v)
        mask = self.gravity_mask(u, offset).to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """h = h + Attn(LN1(h)) + SiLU(Conv(h));  h = h + MLP(LN2(h))."""

    def __init__(self, config):
        super().__init__()
        C, eps = config.d_model, config.layer_norm_eps
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.attn = GravityAttention(config)
        self.k = config.conv_kernel
        self.reflex = nn.Conv1d(C, C, config.conv_kernel, groups=C) if config.reflex else None
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(C, config.mlp_ratio * C, bias=False), nn.GELU(),
                                 nn.Linear(config.mlp_ratio * C, C, bias=False))

    def forward(self, h, state: HamiltonianState | None, layer: int):
        if self.reflex is None:
            h = h + self.attn(self.ln1(h), state, layer)
            return h + self.mlp(self.ln2(h))
        x = h.transpose(1, 2)                                             # (B, C, T)
        if state is None or state.pos == 0:
            x = F.pad(x, (self.k - 1, 0))                                 # zeros before the first token
        else:
            x = torch.cat([state.conv[layer], x], dim=2)                  # the previous k - 1 inputs
        if state is not None:
            state.conv[layer] = x[:, :, x.size(2) - (self.k - 1):]
        r = F.silu(self.reflex(x).transpose(1, 2))
        h = h + self.attn(self.ln1(h), state, layer) + r
        return h + self.mlp(self.ln2(h))


class HamiltonianForCausalLM(PreTrainedModel, GenerationMixin):
    """The whole model; see the module docstring for the equations, decoding and steering."""

    config_class = HamiltonianConfig
    base_model_prefix = "hamiltonian"
    main_input_name = "input_ids"
    _is_stateful = True  # transformers 4.x: no assisted decoding (the state cannot be cropped)
    _supports_cache_class = False  # transformers 4.x: the state is no Cache class

    def __init__(self, config: HamiltonianConfig):
        super().__init__(config)
        self.embed = MomentumEmbedding(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """generate must not build a DynamicCache: the state is this model's own."""
        return False

    def _init_weights(self, module):
        """Only for a model built from a config (from_pretrained loads every weight): kinlm's gpt2 init."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.embed.q_emb

    def set_input_embeddings(self, value):
        self.embed.q_emb = value

    def concept_vector(self, token_id: int) -> torch.Tensor:
        """(C,): the head row of ``token_id`` (= its E_q row), kinlm's steering direction for a word."""
        return self.embed.q_emb.weight[token_id].detach()

    def forward(self, input_ids=None, attention_mask=None, cache=None, past_key_values=None, use_cache=None,
                labels=None, output_hidden_states=None, return_dict=None, steer=None, steer_target: str = "q",
                resets: bool = True, **kwargs):
        """input_ids (B, T) -> logits (B, T, V). ``cache``: the state of the tokens before (None:
        start a text); with ``use_cache`` the returned ``cache`` holds these tokens too. ``steer``
        (C,) or (B, C) and ``steer_target`` as in kinlm; ``resets=False`` runs without the
        end-of-text momentum resets. The attention mask may only mark padding at the end of rows
        (right padding): a causal model's real positions never see it."""
        _check_mask(attention_mask)
        state = cache if cache is not None else past_key_values
        B, T = input_ids.shape
        if state is None and use_cache:
            state = HamiltonianState(self.config.n_layer, self.config.block_size)
        pos = state.pos if state is not None else 0
        if pos + T > self.config.block_size:
            raise ValueError(f"{pos} cached + {T} new positions exceed block_size {self.config.block_size}")
        s_q = s_v = None
        if steer is not None:
            s = steer.to(self.embed.q_emb.weight.dtype).expand(B, -1)
            s_q, s_v = (s, None) if steer_target == "q" else (None, s)
        eot = self.config.eot_token_id if resets else None
        h = self.drop(self.embed(input_ids, eot, s_q, s_v, state))
        hidden = [h] if output_hidden_states else None
        for i, blk in enumerate(self.blocks):
            h = blk(h, state, i)
            if hidden is not None:
                hidden.append(h)
        h = self.ln_f(h)
        if hidden is not None:
            hidden[-1] = h
        if state is not None:
            state.pos += T
        logits = F.linear(h, self.embed.q_emb.weight)                     # the head is E_q
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1))
        return HamiltonianOutput(loss=loss, logits=logits, cache=state, past_key_values=state,
                                 hidden_states=tuple(hidden) if hidden is not None else None)

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, attention_mask=None,
                                      use_cache=None, **kwargs):
        """Feed only the tokens the state does not hold; past block_size, start again from the last
        block_size tokens (kinlm's sampler does the same)."""
        _check_mask(attention_mask)
        state = cache if cache is not None else past_key_values
        if state is not None and input_ids.size(1) > self.config.block_size:
            state = None
        if state is None:
            input_ids = input_ids[:, -self.config.block_size:]
        else:
            input_ids = input_ids[:, state.pos:]
        model_kwargs = {k: v for k, v in kwargs.items() if k in _FORWARDED}
        return {"input_ids": input_ids, "cache": state, "use_cache": True if use_cache is None else use_cache,
                **model_kwargs}


_FORWARDED = ("steer", "steer_target", "resets", "output_hidden_states", "return_dict")
"""generate's model keyword arguments this model reads (everything else it makes is ignored)."""


def _check_mask(attention_mask) -> None:
    """Refuse left padding (a 0 before a 1 in a row): the model has no way to skip those positions."""
    if attention_mask is None:
        return
    m = attention_mask.long()
    if bool((m[:, 1:] > m[:, :-1]).any()):
        raise ValueError("this model does not support left padding (an attention_mask 0 before a 1); "
                         "pad on the right or generate each prompt on its own")
