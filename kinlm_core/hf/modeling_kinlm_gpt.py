"""kinlm's `gpt` (kinlm_core/builtins/gpt.py) as a transformers model, self-contained (torch and
transformers only; exported by kinlm, which never imports this file).

    h_0 = wte[x] + wpe[0..T)                          (B, T, C)
    h = h + Attn(LN1(h)); h = h + MLP(LN2(h))          for each block
    logits = LN_f(h_L) @ wte^T                         (B, T, V)   (the head is the token table)

Hook points for wrappers (a subclass overrides them; the defaults change nothing):
``transform_embeddings(e, input_ids, attention_mask)`` on the token embeddings e (B, T, C) before
positions are added, and ``transform_block_output(i, h)`` on block i's output (B, T, C).

Generation re-runs the context (at most ``block_size`` tokens) for every new token: no KV cache, so a
wrapper whose equation reads earlier positions sees the whole context every step. Rows must not be
left-padded (padding is not masked; right padding does not reach the real positions).
"""

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

    def forward(self, x):  # x: (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


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

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class KinlmGPTPreTrainedModel(PreTrainedModel):
    config_class = KinlmGPTConfig
    base_model_prefix = "kinlm_gpt"
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class KinlmGPTForCausalLM(KinlmGPTPreTrainedModel, GenerationMixin):
    """Parameter names are kinlm's (``wte``, ``wpe``, ``blocks.i.*``, ``ln_f``); the head is ``wte``."""

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
    def transform_embeddings(self, e, input_ids, attention_mask=None):
        """The token embeddings e (B, T, C) before positions are added (a wrapper replaces them)."""
        return e

    def transform_block_output(self, i, h):
        """Block i's output h (B, T, C) (a wrapper replaces it)."""
        return h

    # --- the model ------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, labels=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        """input_ids (B, T), T <= block_size -> CausalLMOutput(logits (B, T, V), loss with labels)."""
        B, T = input_ids.shape
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds the model's block_size {self.block_size}")
        pos = torch.arange(T, device=input_ids.device)
        x = self.transform_embeddings(self.wte(input_ids), input_ids, attention_mask) + self.wpe(pos)
        hidden = [x] if output_hidden_states else None
        for i, block in enumerate(self.blocks):
            x = self.transform_block_output(i, block(x))
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
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=tuple(hidden) if hidden is not None else None)

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # generate must not build a cache: this model re-runs the context

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """The whole context, cropped to the last block_size tokens (kinlm's sampler does the same)."""
        return {"input_ids": input_ids[:, -self.block_size:]}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        return model_kwargs  # no cache to carry: every step re-runs the context
