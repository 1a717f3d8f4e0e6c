"""kinlm's `llama_like` (kinlm_token_geometry/model.py) as a transformers model, self-contained
(torch and transformers only; exported by the kinlm-token-geometry plugin, which never imports it).

    h_0 = N_emb(E[x] + P[pos])                      (P: learned positions, absent with RoPE; N_emb optional)
    preln:  h = h + Attn(N1(h));      h = h + MLP(N2(h))
    postln: h = N1(h + Attn(h));      h = N2(h + MLP(h))
    periln: h = P1(h + Attn(N1(h)));  h = P2(h + MLP(N2(h)))
    logits = N_f(h_L) E^T

Generation carries a KV cache (``kv_state``: {"kv": per block (k, v) each (B, H, S, D), "seen":
tokens of the context consumed}), so each step runs only the new token; when the context would exceed
block_size the last block_size tokens are run again (kinlm's sampler does the same). Rows must not be
left-padded (padding is not masked).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutput

from .configuration_kinlm_llama_like import LlamaLikeConfig


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def make_norm(cfg):
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)


def rope(x, offset, base):
    """Rotate pairs (x_i, x_{i+D/2}) of x (B, H, T, D) by t / base^(2i/D) for t = offset..offset+T-1."""
    T, D = x.size(-2), x.size(-1)
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float32, device=x.device) / D))
    freqs = torch.outer(torch.arange(offset + T, dtype=torch.float32, device=x.device), inv_freq)[offset:]
    emb = torch.cat([freqs, freqs], dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * emb.cos().to(x.dtype) + torch.cat([-x2, x1], dim=-1) * emb.sin().to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rope_base = cfg.rope_base if cfg.positions == "rope" else None

    def forward(self, x, cache=None, offset=0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if self.rope_base is not None:
            q, k = rope(q, offset, self.rope_base), rope(k, offset, self.rope_base)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            S = k.size(2) - T
            mask = torch.ones(T, S + T, dtype=torch.bool, device=x.device).tril(S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C)), (k, v)


class GeluMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.fc(x)))


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg, placement):
        super().__init__()
        self.placement = placement
        self.n1, self.n2 = make_norm(cfg), make_norm(cfg)
        if placement == "periln":
            self.p1, self.p2 = make_norm(cfg), make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden) if cfg.mlp == "swiglu" else GeluMLP(cfg.d_model, cfg.mlp_hidden)

    def forward(self, h, cache=None, offset=0):
        if self.placement == "preln":
            a, kv = self.attn(self.n1(h), cache, offset)
            h = h + a
            return h + self.mlp(self.n2(h)), kv
        if self.placement == "postln":
            a, kv = self.attn(h, cache, offset)
            h = self.n1(h + a)
            return self.n2(h + self.mlp(h)), kv
        a, kv = self.attn(self.n1(h), cache, offset)  # periln
        h = self.p1(h + a)
        return self.p2(h + self.mlp(self.n2(h))), kv


@dataclass
class LlamaLikeOutput(CausalLMOutput):
    """CausalLMOutput plus ``kv_state`` (with use_cache): what the next generation step continues from."""

    kv_state: dict | None = None


class LlamaLikePreTrainedModel(PreTrainedModel):
    config_class = LlamaLikeConfig
    base_model_prefix = "kinlm_llama_like"

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)


class LlamaLikeForCausalLM(LlamaLikePreTrainedModel, GenerationMixin):
    """Parameter names are kinlm's (``tok_emb``, ``pos_emb``, ``emb_norm``, ``blocks.i.*``, ``norm_f``)."""

    def __init__(self, config):
        super().__init__(config)
        self.block_size = config.block_size
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.block_size, config.d_model) if config.positions == "learned" else None
        self.emb_norm = make_norm(config) if config.embed_norm else None
        self.blocks = nn.ModuleList(Block(config, p) for p in config.placements)
        self.norm_f = make_norm(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_emb

    def set_input_embeddings(self, module):
        self.tok_emb = module

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_hidden_states=None, kv_state=None,
                use_cache=None, return_dict=None, **kwargs):
        """input_ids (B, T) -> logits (B, T, V). With ``kv_state`` the ids continue the cached context;
        with ``use_cache`` the output carries the new ``kv_state``."""
        B, T = input_ids.shape
        caches = None if kv_state is None else kv_state["kv"]  # (kv None: nothing cached yet)
        offset = 0 if caches is None else caches[0][0].size(2)
        if offset + T > self.block_size:
            raise ValueError(f"sequence length {offset + T} exceeds block_size {self.block_size}")
        h = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            h = h + self.pos_emb(torch.arange(offset, offset + T, device=input_ids.device))
        if self.emb_norm is not None:
            h = self.emb_norm(h)
        hidden = [h] if output_hidden_states else None
        new = []
        for i, blk in enumerate(self.blocks):
            h, kv = blk(h, None if caches is None else caches[i], offset)
            new.append(kv)
            if hidden is not None:
                hidden.append(h)
        h = self.norm_f(h)
        if hidden is not None:
            hidden[-1] = h
        logits = F.linear(h, self.tok_emb.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        seen = T + (0 if kv_state is None else kv_state["seen"])  # tokens of the whole context consumed
        return LlamaLikeOutput(loss=loss, logits=logits, hidden_states=tuple(hidden) if hidden is not None else None,
                               kv_state={"kv": new, "seen": seen} if use_cache else None)

    # --- generation with the KV cache ---------------------------------------------------------
    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # the cache is ours (kv_state), not a transformers Cache

    def prepare_inputs_for_generation(self, input_ids, kv_state=None, **kwargs):
        """The tokens not yet in the cache; first, or when the cache would outgrow block_size, the last
        block_size tokens afresh (``kv`` None: an empty cache; ``seen`` counts the tokens left out)."""
        if kv_state is not None and kv_state["kv"] is not None:
            fresh = input_ids[:, kv_state["seen"]:]
            if kv_state["kv"][0][0].size(2) + fresh.size(1) <= self.block_size:
                return {"input_ids": fresh, "kv_state": kv_state, "use_cache": True}
        ctx = input_ids[:, -self.block_size:]
        return {"input_ids": ctx, "kv_state": {"kv": None, "seen": input_ids.size(1) - ctx.size(1)},
                "use_cache": True}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs["kv_state"] = outputs.kv_state
        return model_kwargs
