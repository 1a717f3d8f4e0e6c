"""Config of the built-in `gpt` baseline (torch-free; the module is built on demand)."""

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from kinlm_core.api import ModelConfig


class GPTConfig(ModelConfig):
    """GPT-2-style decoder baseline (pre-LN, learned positions, tied head, SDPA attention)."""

    type: Literal["gpt"] = "gpt"
    provides: ClassVar[dict[str, str]] = {
        "hidden_states": "wte[x] + wpe, the block outputs and LN_f of the last",
        "input_embeddings": "wte, the token table (tied to the head), before the positions are added",
        "blocks": "the n_layer pre-LN transformer blocks (`blocks`)"}
    n_layer: int = Field(12, ge=1, description="transformer blocks")
    n_head: int = Field(12, ge=1, description="attention heads")
    d_model: int = Field(768, ge=8, description="residual width")
    block_size: int = Field(1024, ge=2, description="longest context (learned position table size)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on embeddings, attention and residuals")
    bias: bool = Field(True, description="biases in linears and LayerNorms (GPT-2: true)")
    pad_vocab_to_multiple: int = Field(64, ge=1, description="round the vocabulary up (50257 -> 50304)")

    @model_validator(mode="after")
    def _heads_divide_width(self):
        # checked by `kinlm validate`, before any data is prepared
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head} "
                             f"(each head gets d_model / n_head channels)")
        return self

    def build(self, vocab_size: int):
        from .gpt import GPT

        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})")
        return GPT(self, vocab_size)
