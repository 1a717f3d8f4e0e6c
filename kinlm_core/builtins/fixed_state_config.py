"""Configs of the fixed-state baselines (torch-free; ``build`` imports kinlm_core/builtins/fixed_state.py,
whose docstring holds the equations)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from kinlm_core.api import ModelConfig

_PROVIDES = {"hidden_states": "E[x], the block outputs and LN_f of the last",
             "input_embeddings": "E, the token table (no positions)",
             "blocks": "the mixer + MLP blocks (`blocks`)"}


class LinearAttentionConfig(ModelConfig):
    """Zoology's linear-attention baseline with Based's Taylor feature map: a fixed state of
    n_layer (H (1 + f + f^2)(C/H + 1) + (conv_kernel - 1) C) numbers per sequence."""

    type: Literal["linear_attention"] = "linear_attention"
    provides: ClassVar[dict[str, str]] = _PROVIDES
    d_model: int = Field(64, ge=2, description="width C")
    n_layer: int = Field(2, ge=1, description="blocks")
    n_head: int = Field(2, ge=1, description="heads H (C divisible by H)")
    feature_dim: int = Field(8, ge=1, description="f: query/key width per head before the Taylor map (state grows "
                                                  "as f^2)")
    conv_kernel: int = Field(3, ge=1, description="taps of the gated short convolution before the mixer")

    @model_validator(mode="after")
    def _heads(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        return self

    def state_numbers(self) -> int:
        """Numbers carried from token to token per sequence (the recurrent form's S, z and conv buffer)."""
        D = 1 + self.feature_dim + self.feature_dim ** 2
        d = self.d_model // self.n_head
        return self.n_layer * (self.n_head * D * (d + 1) + (self.conv_kernel - 1) * self.d_model)

    def build(self, vocab_size: int):
        from .fixed_state import linear_attention_lm

        return linear_attention_lm(vocab_size, self.d_model, self.n_layer, self.n_head, self.feature_dim,
                                   self.conv_kernel)


class BaseConvConfig(ModelConfig):
    """Zoology's BaseConv (gated depthwise causal convolution of ``conv_kernel`` taps): a fixed state of
    n_layer (conv_kernel - 1) C numbers per sequence."""

    type: Literal["base_conv"] = "base_conv"
    provides: ClassVar[dict[str, str]] = _PROVIDES
    d_model: int = Field(64, ge=2, description="width C")
    n_layer: int = Field(2, ge=1, description="blocks")
    conv_kernel: int = Field(4, ge=2, description="k: convolution taps (the state is the last k - 1 inputs)")

    def state_numbers(self) -> int:
        return self.n_layer * (self.conv_kernel - 1) * self.d_model

    def build(self, vocab_size: int):
        from .fixed_state import base_conv_lm

        return base_conv_lm(vocab_size, self.d_model, self.n_layer, self.conv_kernel)
