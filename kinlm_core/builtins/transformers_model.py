"""The `transformers` model: any transformers architecture behind kinlm's model contract.

    forward(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, output_hidden_states)
        -> ModelOutput(logits (B, T, V), hidden_states, encoder_hidden_states)

Decoder-only models return their logits and per-layer hidden states (transformers' convention is
kinlm's: index 0 the embeddings, the last after the final norm). Encoder-decoders return the
decoder's logits (B, T', V) and hidden states, and the encoder's as ``encoder_hidden_states``;
without ``decoder_input_ids`` the decoder reads ``input_ids`` shifted right (the model
reconstructs its input), so a plain ``model(ids)`` still has one logit row per input token.

Decoding (decoder-only): ``decode(input_ids, state)`` runs transformers' own cache (a KV cache,
Mamba's ``cache_params``); the state is that cache object.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch.nn as nn

from kinlm_core.api import ModelOutput


def _block_size(hf_config) -> int | None:
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(hf_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def build_transformers(cfg, vocab_size: int) -> nn.Module:
    """The transformers model of a `transformers` config: :class:`TransformersLM` for decoder-only
    architectures, :class:`TransformersSeq2SeqLM` for encoder-decoders."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    overrides = dict(cfg.config)
    try:
        if cfg.pretrained:
            folder = Path(cfg.pretrained).expanduser()
            if not (folder / "config.json").exists():
                raise ValueError(f"model.pretrained: {folder} is not a transformers model folder (no config.json)")
            overrides.pop("model_type", None)
            hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True, **overrides)
            auto = AutoModelForSeq2SeqLM if hf_config.is_encoder_decoder else AutoModelForCausalLM
            hf = auto.from_pretrained(str(folder), config=hf_config, local_files_only=True)
            if hf.get_input_embeddings().num_embeddings < vocab_size:
                hf.resize_token_embeddings(vocab_size)
        else:
            model_type = overrides.pop("model_type")
            overrides.setdefault("vocab_size", vocab_size)
            hf_config = AutoConfig.for_model(model_type, **overrides)
            auto = AutoModelForSeq2SeqLM if hf_config.is_encoder_decoder else AutoModelForCausalLM
            hf = auto.from_config(hf_config)
    except ValueError as e:  # unknown model_type, a field the architecture rejects, no auto class
        raise ValueError(f"model (transformers): {(str(e).strip().splitlines() or [''])[0][:300]}") from None
    if hf.get_input_embeddings().num_embeddings < vocab_size:
        raise ValueError(f"model.config.vocab_size ({hf.get_input_embeddings().num_embeddings}) is smaller "
                         f"than the tokenizer's vocabulary ({vocab_size}); leave it out to take the tokenizer's")
    return TransformersSeq2SeqLM(hf) if hf.config.is_encoder_decoder else TransformersLM(hf)


class _Wrapped(nn.Module):
    """What both kinds share: the inner model ``hf``, ``block_size``, special ids from the tokenizer."""

    is_seq2seq = False

    def __init__(self, hf):
        super().__init__()
        self.hf = hf
        self.block_size = _block_size(hf.config)

    def get_input_embeddings(self) -> nn.Module:
        """The transformers model's own input embedding (T5: the shared table of encoder and decoder)."""
        return self.hf.get_input_embeddings()

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.hf.set_input_embeddings(module)

    def bind_tokenizer(self, tokenizer) -> None:
        """Special ids from the run's tokenizer: eos, pad (eos when it has none), bos; T5-style
        decoders start from pad unless the config names a start id."""
        cfg = self.hf.config
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        ids = {"eos_token_id": tokenizer.eos_id, "pad_token_id": pad, "bos_token_id": tokenizer.bos_id}
        if self.is_seq2seq and pad is not None:
            ids["decoder_start_token_id"] = pad  # T5-style: the decoder starts from pad
        for name, value in ids.items():
            if value is not None:
                setattr(cfg, name, value)
                if getattr(self.hf, "generation_config", None) is not None:
                    setattr(self.hf.generation_config, name, value)


class TransformersLM(_Wrapped):
    """A decoder-only transformers model (GPT-2, Llama, Mamba, ...) with the decoding protocol."""

    def __init__(self, hf):
        super().__init__(hf)
        params = inspect.signature(hf.forward).parameters
        # the recurrent cache's name: Mamba's "cache_params" (transformers 4.x) or "cache" (5.x), else the KV cache
        self._cache_arg = next((n for n in ("cache_params", "cache") if n in params), "past_key_values")

    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False) -> ModelOutput:
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states,
                      use_cache=False)
        return ModelOutput(logits=out.logits, hidden_states=out.hidden_states if output_hidden_states else None)

    def decode(self, input_ids, state=None):
        """Prefill (``state=None``) or continue with transformers' cache -> (logits (B, T, V), cache)."""
        kw = {} if state is None else {self._cache_arg: state}
        out = self.hf(input_ids=input_ids, use_cache=True, **kw)
        return out.logits, getattr(out, self._cache_arg)


class TransformersSeq2SeqLM(_Wrapped):
    """An encoder-decoder (T5, BART): the decoder's logits and hidden states, the encoder's states.
    No decoding protocol (the sampler re-runs the context)."""

    is_seq2seq = True

    def __init__(self, hf):
        super().__init__(hf)
        cfg = hf.config
        if getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = 0
        if getattr(cfg, "decoder_start_token_id", None) is None:  # until bind_tokenizer names one
            cfg.decoder_start_token_id = cfg.pad_token_id

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                output_hidden_states: bool = False) -> ModelOutput:
        if decoder_input_ids is None:
            decoder_input_ids = self.hf._shift_right(input_ids) if hasattr(self.hf, "_shift_right") else input_ids
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                      decoder_attention_mask=decoder_attention_mask, output_hidden_states=output_hidden_states,
                      use_cache=False)
        return ModelOutput(logits=out.logits,
                           hidden_states=out.decoder_hidden_states if output_hidden_states else None,
                           encoder_hidden_states=out.encoder_hidden_states if output_hidden_states else None)
