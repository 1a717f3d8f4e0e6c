"""An exported kinlm context-vector language model (rato-tokyo/new-llm), for transformers.

Self-contained: torch, transformers and the standard library only. It computes what kinlm's
``kinlm_context_vector.model.ContextVectorLM`` computes, with the same parameter names.
Shapes: B batch, T time, V vocabulary, d_e embedding, d_h FNN width, d_c context, L FNN layers.

    c_0 = 0                                                        (B, d_c)
    for t = 1..T:
        e_t = E[x_t] (+ P[(t - 1) mod max_positions])              (B, d_e)  P only when config.positions
        u_t = FNN([e_t; c_{t-1}])                                  (B, d_h)
              FNN = L x (Linear -> ReLU -> Dropout); layer 1 = in_embed(e_t) + in_context(c_{t-1})
        logits_t = head(u_t)                                       (B, V)
        gated:    c_t = sigmoid(W_f u_t) * c_{t-1} + sigmoid(W_i u_t) * W_c u_t   ([W_c; W_f; W_i] = gates)
        additive: c_t = c_{t-1} + W_c u_t                                           (W_c = gates)
        c_t = clamp(LayerNorm(c_t), -clamp, clamp)                 (each when configured)

Generation carries only (c, number of tokens seen) as the cache (:class:`ContextState`, returned as
``cache`` and, for transformers 4.x, ``past_key_values``): each new token costs one step of the
recurrence whatever the length before it. There is no context limit. Batches must not be left-padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_kinlm_context_vector import ContextVectorConfig


@dataclass
class ContextVectorOutput(ModelOutput):
    """loss (when labels are given), logits (B, T, V), the recurrent state, hidden states."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object | None = None
    past_key_values: object | None = None
    hidden_states: tuple | None = None


class ContextState:
    """The recurrent state after ``pos`` tokens: the context c (B, d_c). Its size never grows."""

    is_compileable = False

    def __init__(self, c: torch.Tensor, pos: int):
        self.c, self.pos = c, pos

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.pos


class ContextVectorForCausalLM(PreTrainedModel, GenerationMixin):
    """The whole model; see the module docstring."""

    config_class = ContextVectorConfig
    base_model_prefix = "context_vector"
    main_input_name = "input_ids"
    _is_stateful = True  # transformers 4.x: no assisted decoding (the state cannot be cropped)
    _supports_cache_class = False  # transformers 4.x: the state is no Cache class

    def __init__(self, config: ContextVectorConfig):
        super().__init__(config)
        self.gated = config.update == "gated"
        self.embed = nn.Embedding(config.vocab_size, config.d_embed)
        self.position_embedding = nn.Embedding(config.max_positions, config.d_embed) if config.positions else None
        self.in_embed = nn.Linear(config.d_embed, config.d_hidden)
        self.in_context = nn.Linear(config.d_context, config.d_hidden, bias=False)
        self.layers = nn.ModuleList(nn.Linear(config.d_hidden, config.d_hidden) for _ in range(config.n_layer - 1))
        self.gates = nn.Linear(config.d_hidden, (3 if self.gated else 1) * config.d_context)
        self.norm = nn.LayerNorm(config.d_context, eps=config.layer_norm_eps) if config.layernorm else None
        self.head = nn.Linear(config.d_hidden, config.vocab_size)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """generate must not build a DynamicCache: the state is this model's own."""
        return False

    def _init_weights(self, module):
        """Only for a model built from a config (from_pretrained loads every weight): kinlm's N(0, 0.02)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def update_context(self, c, g):
        """c_{t-1} (B, d_c), gate pre-activations g (B, k d_c) -> c_t (B, d_c)."""
        if self.gated:
            delta, f, i = g.split(self.config.d_context, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * delta
        else:
            c = c + g
        if self.norm is not None:
            c = self.norm(c)
        return c if self.config.clamp is None else c.clamp(-self.config.clamp, self.config.clamp)

    def forward(self, input_ids=None, attention_mask=None, cache=None, past_key_values=None, use_cache=None,
                labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        """input_ids (B, T) -> logits (B, T, V). ``cache``: the state after the tokens before (None:
        start a text from c_0 = 0); the returned ``cache`` holds these tokens too. hidden_states (when
        asked): E[x] (+ P), the L FNN layer outputs, the contexts c_1..c_T, all over time."""
        _check_mask(attention_mask)
        state = cache if cache is not None else past_key_values
        B, T = input_ids.shape
        c = state.c if state is not None else self.embed.weight.new_zeros(B, self.config.d_context)
        start = state.pos if state is not None else 0
        e = self.embed(input_ids)                                         # (B, T, d_e)
        if self.position_embedding is not None:
            pos = torch.arange(start, start + T, device=input_ids.device) % self.config.max_positions
            e = e + self.position_embedding(pos)
        pre = self.in_embed(e)                                            # (B, T, d_h): layer 1, embedding half
        p = self.config.dropout
        us, cs, layers = [], [], [[] for _ in range(len(self.layers) + 1)]
        for t in range(T):
            h = F.dropout(F.relu(pre[:, t] + self.in_context(c)), p, self.training)
            layers[0].append(h)
            for l, layer in enumerate(self.layers):
                h = F.dropout(F.relu(layer(h)), p, self.training)
                layers[l + 1].append(h)
            c = self.update_context(c, self.gates(h))
            us.append(h)
            cs.append(c)
        logits = self.head(torch.stack(us, dim=1))                         # (B, T, V)
        hidden = None
        if output_hidden_states:
            hidden = (e, *(torch.stack(x, dim=1) for x in layers), torch.stack(cs, dim=1))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1))
        new_state = ContextState(c, start + T) if (use_cache or state is not None) else None
        return ContextVectorOutput(loss=loss, logits=logits, cache=new_state, past_key_values=new_state,
                                   hidden_states=hidden)

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, attention_mask=None,
                                      use_cache=None, **kwargs):
        """Feed only the tokens the state does not hold yet (one per step after the prompt)."""
        _check_mask(attention_mask)
        state = cache if cache is not None else past_key_values
        if state is not None:
            input_ids = input_ids[:, state.pos:]
        extra = {k: v for k, v in kwargs.items() if k in ("output_hidden_states", "return_dict")}
        return {"input_ids": input_ids, "cache": state, "use_cache": True if use_cache is None else use_cache,
                **extra}


def _check_mask(attention_mask) -> None:
    """Refuse left padding (a 0 before a 1 in a row): the recurrence has no way to skip those positions."""
    if attention_mask is None:
        return
    m = attention_mask.long()
    if bool((m[:, 1:] > m[:, :-1]).any()):
        raise ValueError("this model does not support left padding (an attention_mask 0 before a 1); "
                         "pad on the right or generate each prompt on its own")
