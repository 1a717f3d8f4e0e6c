"""The `gpt` baseline: a GPT-2-style decoder, one file, top to bottom.

Shapes: B batch, T time, C = d_model, H heads, V vocabulary.
    h_0 = wte[x] + wpe[0..T)                       (B, T, C)
    h_l = h + Attn(LN(h)); h_l = h_l + MLP(LN(h_l))  for each of n_layer blocks
    logits = LN_f(h_L) @ wte^T                      (B, T, V)   (tied head)

Decoding (``decode``): a preallocated KV cache per layer, k and v of shape (B, H, block_size, hd),
filled in place at positions pos..pos+T; a new query attends to the cached keys 0..pos+T. No
tensor grows by concatenation, so every generated token costs the same work at any length.

Static decoding (``decode_step``): one token per row at a position held in a device tensor, attending
over the whole preallocated cache with the positions past it masked: every call has the same shapes
and reads no value on the host, so it can be compiled (and captured as a CUDA graph) once and replayed
for every token.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinlm_core.api import ModelOutput


class KVCache:
    """The decoding state: per layer k, v (B, H, block_size, hd) allocated (zeroed) on first use (in
    the dtype attention computes in), and ``pos``, the number of positions filled."""

    def __init__(self, n_layer: int, size: int):
        self.k: list = [None] * n_layer
        self.v: list = [None] * n_layer
        self.size, self.pos = size, 0

    def update(self, layer: int, k, v):
        """Write k, v (B, H, T, hd) at positions pos..pos+T; return the filled prefix (B, H, pos+T, hd)."""
        if self.k[layer] is None:
            B, H, _, D = k.shape
            self.k[layer] = k.new_zeros(B, H, self.size, D)  # zeros: a masked position's value is 0 x 0,
            self.v[layer] = v.new_zeros(B, H, self.size, D)  # never 0 x NaN from uninitialised memory
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):  # x: (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if cache is None or cache.pos == 0:  # training, or a prefill: plain causal attention
            if cache is not None:
                cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:  # T new queries at positions pos..pos+T-1 see the keys 0..pos+t
            k, v = cache.update(layer, k, v)
            mask = None if T == 1 else torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(cache.pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))

    def step(self, x, k_cache, v_cache, pos):
        """One token per row, x (B, 1, C), written at ``pos`` (a 0-dim long tensor) into the caches
        (B, H, S, hd); attends to the cached positions 0..pos. Fixed shapes, no host read."""
        B, _, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, 1, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, 1, hd)
        at = pos.view(1)
        k_cache.index_copy_(2, at, k)
        v_cache.index_copy_(2, at, v)
        seen = torch.arange(k_cache.size(2), device=x.device) <= pos  # (S,)
        y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=seen.view(1, 1, 1, -1))
        return self.proj(y.transpose(1, 2).reshape(B, 1, C))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))

    def step(self, x, k_cache, v_cache, pos):
        x = x + self.attn.step(self.ln1(x), k_cache, v_cache, pos)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        m = cfg.pad_vocab_to_multiple
        self.vocab_size = (vocab_size + m - 1) // m * m
        self.block_size = cfg.block_size
        self.wte = nn.Embedding(self.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.head = nn.Linear(cfg.d_model, self.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(mod):
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, 0.0, 0.02)
        if isinstance(mod, nn.Linear) and mod.bias is not None:
            nn.init.zeros_(mod.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def get_input_embeddings(self) -> nn.Module:
        """The token table wte (tied to the head): what vt_embeddings acts on (positions are added after)."""
        return self.wte

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.wte = module

    def forward(self, input_ids, output_hidden_states: bool = False) -> ModelOutput:
        B, T = input_ids.shape
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds the model's block_size {self.block_size}")
        pos = torch.arange(T, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)
        hidden = [x] if output_hidden_states else None
        for block in self.blocks:
            x = block(x)
            if hidden is not None:
                hidden.append(x)
        x = self.ln_f(x)
        if hidden is not None:
            hidden[-1] = x  # transformers' convention: the last entry is after the final norm
        return ModelOutput(logits=self.head(x), hidden_states=tuple(hidden) if hidden is not None else None)

    def decode(self, input_ids, state: KVCache | None = None):
        """Prefill (``state=None``: input_ids (B, T) is the prompt) or continue (input_ids (B, T_new)
        with the previous state) -> (logits (B, T, V), state). Positions never exceed block_size
        (the sampler restarts from the last block_size tokens when the cache is full)."""
        B, T = input_ids.shape
        state = state if state is not None else KVCache(len(self.blocks), self.block_size)
        if state.pos + T > self.block_size:
            raise ValueError(f"decode: {state.pos} cached + {T} new positions exceed block_size {self.block_size}")
        pos = torch.arange(state.pos, state.pos + T, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, state, i)
        state.pos += T
        return self.head(self.ln_f(x)), state

    def decode_step(self, input_ids, pos, state: KVCache):
        """Static decoding: input_ids (B, 1) at position ``pos`` (a 0-dim long tensor on the model's
        device, below block_size) into a state filled by :meth:`decode` up to ``pos`` -> logits (B, V).
        The cache is written in place at ``pos``; ``state.pos`` is left to the caller (the sampler
        counts positions on the host). Same shapes at every call: compile it once."""
        x = self.wte(input_ids) + self.wpe(pos).view(1, 1, -1)
        for i, block in enumerate(self.blocks):
            x = block.step(x, state.k[i], state.v[i], pos)
        return self.head(self.ln_f(x))[:, -1]


def hf_files(*names: str) -> dict[str, str]:
    """The source text of custom-code templates shipped in kinlm_core/hf (e.g. ``modeling_kinlm_gpt.py``)."""
    from importlib.resources import files

    root = files("kinlm_core") / "hf"
    return {n: (root / n).read_text(encoding="utf-8") for n in names}


def gpt_hf_export(model: GPT, tokenizer):
    """The `gpt` model as transformers custom code (``kinlm_gpt``: KinlmGPTForCausalLM), for wrappers
    whose export is this one plus their equation (vt_embeddings, diff_wrapper): their modeling files
    subclass KinlmGPTForCausalLM and override its hook points. A plain gpt keeps the core's native
    GPT2LMHeadModel export. The padded vocabulary is cut back to the tokenizer's."""
    from kinlm_core.hfexport import HFExport

    if not isinstance(model, GPT):
        raise TypeError(f"gpt_hf_export: expected the gpt model, got {type(model).__name__}")
    V = tokenizer.vocab_size
    attn0 = model.blocks[0].attn
    config = {"vocab_size": V, "block_size": model.block_size, "n_layer": len(model.blocks), "n_head": attn0.n_head,
              "d_model": model.wte.weight.size(1), "bias": attn0.qkv.bias is not None,
              "layer_norm_eps": model.ln_f.eps}
    sd = {k: v.detach() for k, v in model.state_dict().items() if k != "head.weight"}
    sd["wte.weight"] = sd["wte.weight"][:V]
    return HFExport(name="kinlm_gpt", config=config, config_class="KinlmGPTConfig", model_class="KinlmGPTForCausalLM",
                    files=hf_files("configuration_kinlm_gpt.py", "modeling_kinlm_gpt.py"),
                    state_dict={k: v.to("cpu", torch.float32).contiguous() for k, v in sd.items()})
