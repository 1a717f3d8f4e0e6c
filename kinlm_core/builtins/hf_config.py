"""Config of the built-in `transformers` model (torch-free; the module is built on demand)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from kinlm_core.api import ModelConfig


class TransformersConfig(ModelConfig):
    """Any architecture transformers knows, built from a config dict (or a local pretrained folder).

    ``config`` holds the transformers config's fields with its ``model_type`` (e.g.
    ``{"model_type": "mamba", "hidden_size": 256, "num_hidden_layers": 4}``); the vocabulary size
    comes from the run's tokenizer and its special ids from ``bind_tokenizer``. Decoder-only
    architectures load through ``AutoModelForCausalLM``, encoder-decoders (T5, BART) through
    ``AutoModelForSeq2SeqLM``. ``block_size`` is the config's ``n_positions`` /
    ``max_position_embeddings`` where it has one, else None (Mamba, T5: no context limit).
    """

    type: Literal["transformers"] = "transformers"
    provides: ClassVar[dict[str, str]] = {
        "hidden_states": "transformers' own hidden states (seq2seq: the decoder's, and the encoder's)",
        "input_embeddings": "the model's `get_input_embeddings()` (T5: the table shared by encoder and decoder)",
        "blocks": "its layer lists (GPT-2 `transformer.h`, Llama `model.layers`, Mamba `backbone.layers`, "
                  "T5 `encoder.block` and `decoder.block`)"}
    config: dict[str, Any] = Field(default_factory=dict, description='transformers config fields including "model_type", '
                                   'e.g. {"model_type": "gpt2", "n_layer": 4}; with "pretrained": fields that override '
                                   "the folder's config")
    pretrained: str | None = Field(None, description="a local transformers model folder (config.json + weights) to "
                                   "start from instead of random weights (fine-tuning); never downloaded")

    @model_validator(mode="after")
    def _check(self):
        if self.pretrained is None and not isinstance(self.config.get("model_type"), str):
            raise ValueError('model.config needs a "model_type" (e.g. "gpt2", "mamba", "t5"), or give model.pretrained')
        return self

    def build(self, vocab_size: int):
        from .transformers_model import build_transformers

        return build_transformers(self, vocab_size)
