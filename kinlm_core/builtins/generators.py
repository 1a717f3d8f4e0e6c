"""The built-in `sample` generator (config here; torch code in kinlm_core.sampling)."""

from typing import Literal

from pydantic import Field

from kinlm_core.api import GeneratorConfig

SAMPLE_SEPARATOR = "\n\n-----\n\n"
"""Between the samples of one prompt when ``num_samples`` > 1 (``generate`` returns one string)."""


class SampleConfig(GeneratorConfig):
    """Plain autoregressive sampling: temperature, top-k, top-p, repetition penalty; several samples in one batch.

    Uses the model's decoding protocol (KV cache, recurrent state) when it has one. Each sample ends
    at the end-of-text token, as transformers' generate does (``stop_at_eos``)."""

    type: Literal["sample"] = "sample"
    temperature: float = Field(0.8, ge=0.0, description="softmax temperature; 0 = greedy")
    top_k: int | None = Field(200, ge=1, description="keep only the k most likely tokens")
    repetition_penalty: float = Field(1.0, gt=0, description="divide logits of already generated tokens (>1 discourages)")
    num_samples: int = Field(1, ge=1, description="continuations of the prompt, generated together as one batch")

    def generate_many(self, model, tokenizer, prompt=None) -> list[str]:
        """The ``num_samples`` continuations, one string each."""
        from kinlm_core.sampling import generate_texts

        return generate_texts(model, tokenizer, self.prompt if prompt is None else prompt, self)

    def generate(self, model, tokenizer, prompt=None) -> str:
        """The continuation; with ``num_samples`` > 1 the continuations joined by a ``-----`` line."""
        return SAMPLE_SEPARATOR.join(self.generate_many(model, tokenizer, prompt))
