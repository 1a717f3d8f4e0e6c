"""Configs of the built-in objectives (torch-free; the runtime is in kinlm_core/objectives.py)."""

from typing import Literal

from pydantic import Field, model_validator

from kinlm_core.api import ObjectiveConfig, Tokenizer


class CausalLMConfig(ObjectiveConfig):
    """Next-token prediction: labels are the inputs shifted by one; every real token is scored."""

    type: Literal["causal_lm"] = "causal_lm"
    examples: Literal["blocks", "documents"] = Field(
        "blocks", description="blocks: packed rows across documents (fastest); documents: one document "
                              "(or block-size chunk) per example, padded, boundaries kept")

    def unit(self) -> str:
        return self.examples

    def build(self, tokenizer: Tokenizer):
        from kinlm_core.objectives import CausalLM

        return CausalLM(tokenizer)


class SpanCorruptionConfig(ObjectiveConfig):
    """T5 span corruption: noise spans replaced by sentinels in the input; the target lists them."""

    type: Literal["span_corruption"] = "span_corruption"
    noise_density: float = Field(0.15, gt=0, lt=1, description="share of tokens masked (T5: 0.15)")
    mean_span_length: float = Field(3.0, ge=1, description="mean noise span length in tokens (T5: 3)")
    n_sentinels: int = Field(100, ge=1, description="sentinel ids appended to the vocabulary (T5: 100)")
    examples: Literal["blocks", "documents"] = Field("blocks", description="as in causal_lm")

    @model_validator(mode="after")
    def _enough_noise(self):
        if self.noise_density * 2 >= 1:
            raise ValueError("noise_density must be below 0.5 (spans alternate with kept text)")
        return self

    def unit(self) -> str:
        return self.examples

    def extend_tokenizer(self, tokenizer: Tokenizer) -> Tokenizer:
        from kinlm_core.objectives import with_sentinels

        return with_sentinels(tokenizer, self.n_sentinels)

    def build(self, tokenizer: Tokenizer):
        from kinlm_core.objectives import SpanCorruption

        return SpanCorruption(tokenizer, self.noise_density, self.mean_span_length)
