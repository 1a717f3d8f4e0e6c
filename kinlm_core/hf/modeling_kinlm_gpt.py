"""kinlm's `gpt` (kinlm_core/builtins/gpt.py) as a transformers model, self-contained (torch and
transformers only; exported by kinlm, which never imports this file).

    h_0 = wte[x] + wpe[0..T)                          (B, T, C)
    h = h + Attn(LN1(h)); h = h + MLP(LN2(h))          for each block
    logits = LN_f(h_L) @ wte^T                         (B, T, V)   (the head is the token table)

Hook points for wrappers (a subclass overrides them; the defaults change nothing):
``transform_embeddings(e, attention_mask)`` on the token embeddings e (B, T, C) before positions are
added, and ``transform_block_output(i, h)`` on block i's output (B, T, C); a wrapper whose equation
reads earlier positions sets ``memory`` (how many).

Generation carries a KV cache (``kv_state``: {"kv": per block (k, v) each (B, H, S, hd), "mem": each
hook point's last ``memory`` raw outputs, "seen": tokens of the context consumed}), so each step runs
only the new token; when the context would exceed block_size the last block_size tokens run again
(kinlm's sampler does the same). Rows must not be left-padded (padding is not masked; right padding
does not reach the real positions).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutput

from .configuration_kinlm_gpt import KinlmGPTConfig


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x, cache=None):  # x: (B, T, C); cache: (k, v) each (B, H, S, hd) or None
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # query t (position S + t) sees keys 0..S + t
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            S = k.size(2) - T
            mask = None if T == 1 else torch.ones(T, S + T, dtype=torch.bool, device=x.device).tril(S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None):
        a, kv = self.attn(self.ln1(x), cache)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


class KinlmGPTPreTrainedModel(PreTrainedModel):
    config_class = KinlmGPTConfig
    base_model_prefix = "kinlm_gpt"
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


@dataclass
class KinlmGPTOutput(CausalLMOutput):
    """CausalLMOutput plus ``kv_state`` (with use_cache): what the next generation step continues from."""

    kv_state: dict | None = None


class KinlmGPTForCausalLM(KinlmGPTPreTrainedModel, GenerationMixin):
    """Parameter names are kinlm's (``wte``, ``wpe``, ``blocks.i.*``, ``ln_f``); the head is ``wte``."""

    memory = 0
    """How many earlier raw outputs a hook point's replacement reads (a wrapper whose equation reads
    h_{t-1}, h_{t-2} sets 2): decoding with the cache keeps them and prepends them."""

    def __init__(self, config):
        super().__init__(config)
        self.block_size = config.block_size
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.block_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, module):
        self.wte = module

    # --- hook points for wrappers -----------------------------------------------------------------
    def transform_embeddings(self, e, attention_mask=None):
        """The token embeddings e (B, T, C) before positions are added (a wrapper replaces them)."""
        return e

    def transform_block_output(self, i, h):
        """Block i's output h (B, T, C) (a wrapper replaces it)."""
        return h

    def _replaced(self, key, h, fn, memory):
        """fn(h) -> (B, T, C); while decoding (``memory``: a dict) with the last ``self.memory`` raw
        values of this hook point prepended, and those updated."""
        if memory is None or self.memory == 0:
            return fn(h)
        past = memory.get(key)
        full = h if past is None else torch.cat([past, h], dim=1)
        memory[key] = full[:, -self.memory:]
        return fn(full)[:, full.size(1) - h.size(1):]

    # --- the model ------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, labels=None, output_hidden_states=None, kv_state=None,
                use_cache=None, return_dict=None, **kwargs):
        """input_ids (B, T) -> logits (B, T, V) (loss with labels). With ``kv_state`` the ids continue the
        cached context; with ``use_cache`` the output carries the new ``kv_state``."""
        B, T = input_ids.shape
        caches = None if kv_state is None else kv_state["kv"]  # (kv None: nothing cached yet)
        offset = 0 if caches is None else caches[0][0].size(2)
        if offset + T > self.block_size:
            raise ValueError(f"sequence length {offset + T} exceeds the model's block_size {self.block_size}")
        memory = None if not use_cache else dict(kv_state["mem"]) if kv_state and caches is not None else {}
        mask = attention_mask if memory is None else None  # decoding: the rows start at position 0
        pos = torch.arange(offset, offset + T, device=input_ids.device)
        x = self._replaced("emb", self.wte(input_ids), lambda e: self.transform_embeddings(e, mask), memory)
        x = x + self.wpe(pos)
        hidden = [x] if output_hidden_states else None
        new = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if caches is None else caches[i])
            new.append(kv)
            x = self._replaced(i, x, lambda h, i=i: self.transform_block_output(i, h), memory)
            if hidden is not None:
                hidden.append(x)
        x = self.ln_f(x)
        if hidden is not None:
            hidden[-1] = x
        logits = F.linear(x, self.wte.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        state = None
        if use_cache:
            state = {"kv": new, "mem": memory, "seen": T + (0 if kv_state is None else kv_state["seen"])}
        return KinlmGPTOutput(loss=loss, logits=logits, hidden_states=tuple(hidden) if hidden is not None else None,
                              kv_state=state)

    # --- generation with the KV cache ---------------------------------------------------------
    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # the cache is ours (kv_state), not a transformers Cache

    def prepare_inputs_for_generation(self, input_ids, kv_state=None, **kwargs):
        """The tokens not yet in the cache; first, or when the cache would outgrow block_size, the last
        block_size tokens afresh (``kv`` None: an empty cache; ``seen`` counts the tokens left out), as
        kinlm's sampler does."""
        if kv_state is not None and kv_state["kv"] is not None:
            fresh = input_ids[:, kv_state["seen"]:]
            if kv_state["kv"][0][0].size(2) + fresh.size(1) <= self.block_size:
                return {"input_ids": fresh, "kv_state": kv_state, "use_cache": True}
        ctx = input_ids[:, -self.block_size:]
        return {"input_ids": ctx, "kv_state": {"kv": None, "mem": {}, "seen": input_ids.size(1) - ctx.size(1)},
                "use_cache": True}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs["kv_state"] = outputs.kv_state
        return model_kwargs
