"""The built-in `sample` generator (config here; torch code in kinlm_core.sampling)."""

from typing import Literal

from pydantic import Field

from kinlm_core.api import GeneratorConfig


class SampleConfig(GeneratorConfig):
    """Plain autoregressive sampling: temperature, top-k, top-p, repetition penalty."""

    type: Literal["sample"] = "sample"
    temperature: float = Field(0.8, ge=0.0, description="softmax temperature; 0 = greedy")
    top_k: int | None = Field(200, ge=1, description="keep only the k most likely tokens")
    repetition_penalty: float = Field(1.0, gt=0, description="divide logits of already generated tokens (>1 discourages)")

    def generate(self, model, tokenizer, prompt=None) -> str:
        from kinlm_core.sampling import generate_text

        return generate_text(model, tokenizer, self.prompt if prompt is None else prompt, self)
