"""An exported kinlm CVFP language model (Context Vector Fixed-Point, rato-tokyo/new-llm "E" layout),
for transformers.

Self-contained: torch, transformers and the standard library only. It computes what kinlm's
``kinlm_cvfp.model.CVFP`` computes (the inference network after two-phase training), with the same
parameter names except the token table: kinlm's ``embedding`` is ``embed_tokens.weight`` here.
Shapes: B batch, T time, d width, K layers, V vocabulary.

    e_t   = LN_embed(E[x_t])                                            (d,)
    ContextBlock, c^0 = the context carried from token t-1 (zeros before the first token):
    c^k   = LN_k(c^{k-1} + ReLU(A_k [c^{k-1}; e_t]))            k = 1..K;   c^K is carried on
    TokenBlock:
    z^1   = LN(e_t + ReLU(B_1 [c^1; e_t]))
    z^k   = LN(z^{k-1} + ReLU(B_k [c^k; z^{k-1}]))              k = 2..K
    logits_t = z^K E^T (tie_head) or W z^K + b                              (V,)

Generation carries only (c^K, number of tokens seen) as the cache (:class:`CvfpState`, returned as
``cache`` and, for transformers 4.x, ``past_key_values``): each new token costs one step of the
ContextBlock whatever the length before it. There is no context limit here; kinlm's own sampler
restarts from the last ``block_size`` tokens (from a zero context) once a text is longer, so the two
agree while prompt plus continuation fit in ``block_size``. Batches must not be left-padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_kinlm_cvfp import CvfpConfig


@dataclass
class CvfpOutput(ModelOutput):
    """loss (when labels are given), logits (B, T, V), the recurrent state, hidden states (e, z^1..z^K)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object | None = None
    past_key_values: object | None = None
    hidden_states: tuple | None = None


class CvfpState:
    """The recurrent state after ``pos`` tokens: the carried context c^K (B, d). Its size never grows."""

    is_compileable = False

    def __init__(self, c: torch.Tensor, pos: int):
        self.c, self.pos = c, pos

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.pos


class ContextLayer(nn.Module):
    """c' = LN(c + ReLU(A [c; e]))"""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.A = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d, eps=eps)

    def forward(self, c, e):
        return self.norm(c + F.relu(self.A(torch.cat([c, e], dim=-1))))


class ContextBlock(nn.Module):
    """K context layers, run token by token: e (B, T, d), c (B, d) -> K tensors (B, T, d) (c^1..c^K)."""

    def __init__(self, d: int, n_layer: int, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(ContextLayer(d, eps) for _ in range(n_layer))

    def forward(self, e, c):
        per_t = []
        for t in range(e.size(1)):
            cs = []
            for layer in self.layers:
                c = layer(c, e[:, t])
                cs.append(c)
            per_t.append(torch.stack(cs))                                 # (K, B, d)
        return list(torch.stack(per_t, dim=2).unbind(0))                  # K x (B, T, d)


class TokenBlock(nn.Module):
    """z^1 = LN(e + ReLU(B_1 [c^1; e])), z^k = LN(z^{k-1} + ReLU(B_k [c^k; z^{k-1}])); all positions at once."""

    def __init__(self, d: int, n_layer: int, eps: float):
        super().__init__()
        self.mix = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(n_layer))
        self.norms = nn.ModuleList(nn.LayerNorm(d, eps=eps) for _ in range(n_layer))

    def forward(self, contexts, e):
        z, out = e, []
        for c, mix, norm in zip(contexts, self.mix, self.norms):
            z = norm(z + F.relu(mix(torch.cat([c, z], dim=-1))))
            out.append(z)
        return out


class CvfpForCausalLM(PreTrainedModel, GenerationMixin):
    """The whole network; see the module docstring."""

    config_class = CvfpConfig
    base_model_prefix = "cvfp"
    main_input_name = "input_ids"
    _is_stateful = True  # transformers 4.x: no assisted decoding (the state cannot be cropped)
    _supports_cache_class = False  # transformers 4.x: the state is no Cache class

    def __init__(self, config: CvfpConfig):
        super().__init__(config)
        d, K, eps = config.d_model, config.n_layer, config.layer_norm_eps
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.embed_norm = nn.LayerNorm(d, eps=eps)
        self.context_block = ContextBlock(d, K, eps)
        self.token_block = TokenBlock(d, K, eps)
        self.head = None if config.tie_head else nn.Linear(d, config.vocab_size)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """generate must not build a DynamicCache: the state is this model's own."""
        return False

    def _init_weights(self, module):
        """Only for a model built from a config (from_pretrained loads every weight): kinlm's init."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.1)
            nn.init.normal_(module.bias, std=0.01)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.weight.size(1) ** -0.5)

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, cache=None, past_key_values=None, use_cache=None,
                labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        """input_ids (B, T) -> logits (B, T, V). ``cache``: the state after the tokens before (None: a
        zero context); the returned ``cache`` holds these tokens too."""
        _check_mask(attention_mask)
        state = cache if cache is not None else past_key_values
        B, T = input_ids.shape
        e = self.embed_norm(self.embed_tokens(input_ids))                 # (B, T, d)
        c0 = state.c if state is not None else e.new_zeros(B, self.config.d_model)
        contexts = self.context_block(e, c0)                              # K x (B, T, d)
        zs = self.token_block(contexts, e)
        z = zs[-1]
        logits = self.head(z) if self.head is not None else z @ self.embed_tokens.weight.t()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1))
        new_state = None
        if use_cache or state is not None:
            new_state = CvfpState(contexts[-1][:, -1], (state.pos if state is not None else 0) + T)
        return CvfpOutput(loss=loss, logits=logits, cache=new_state, past_key_values=new_state,
                          hidden_states=(e, *zs) if output_hidden_states else None)

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
