"""Configs of the hamiltonian model and its three generators (torch-free; torch code is
imported inside ``build``/``generate``).

Defaults are the paper setting of sonnguyenasu/Hamiltonian-LLM (124M: d_model 640, 12 layers,
10 heads of 64, context 1024, GPT-2 vocabulary padded to 50,304).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from kinlm_core import GeneratorConfig, ModelConfig, Tokenizer


class HamiltonianConfig(ModelConfig):
    """Momentum-embedding decoder with adaptive-gravity (learned ALiBi-like) attention and a causal conv "reflex".

    Resets at document boundaries need the end-of-text id. The engine calls ``build(vocab_size)``
    only, so either set ``eot_token_id`` in the spec (GPT-2: 50256) or set the attribute on the
    built module (``model.eot_token_id = tokenizer.eos_id``). While it is None the model has no
    resets (r_t = 0 everywhere).
    """

    type: Literal["hamiltonian"] = "hamiltonian"
    provides: ClassVar[dict[str, str]] = {
        "hidden_states": "h_0 = q + m, the block outputs and LN_f of the last",
        "input_embeddings": "E_q, the token table of q_t that feeds the residual stream (tied to the head); "
                            "not E_p, whose rows enter only through the momentum m",
        "blocks": "the n_layer gravity-attention + reflex blocks (`blocks`)"}
    d_model: int = Field(640, ge=8, description="residual width C")
    n_layer: int = Field(12, ge=1, description="number of blocks")
    n_head: int = Field(10, ge=1, description="attention heads (head dim = d_model / n_head; paper: 64)")
    block_size: int = Field(1024, ge=2, description="longest context; RoPE tables are built for it")
    pad_vocab_to_multiple: int = Field(64, ge=1, description="round the tokenizer's vocabulary up (50257 -> 50304)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the block input h_0 = q + m")
    attn_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention weights (the source has none)")
    beta: float = Field(0.9, ge=0, lt=1, description="EMA decay of the momentum m_t")
    reset_strength: float = Field(0.5, ge=0, le=1, description="r_t at end-of-text tokens: m_t is multiplied by 1 - r_t")
    eot_token_id: int | None = Field(None, description="end-of-text id that triggers a reset; None: no resets "
                                     "unless set later on the module (model.eot_token_id = tokenizer.eos_id)")
    momentum_scan: Literal["parallel", "loop"] = Field(
        "parallel", description="momentum recurrence: chunked parallel scan, or the per-token reference loop")
    scan_chunk: int = Field(64, ge=1, description="chunk length of the parallel scan")
    conv_kernel: int = Field(3, ge=1, description="kernel of the depthwise causal Conv1d (reflex)")
    reflex: bool = Field(True, description="the reflex branch (depthwise causal conv + SiLU, added beside "
                         "attention in every block), as the source; false removes it, the ablation of the "
                         "source's claim that the split into a local convolution and a transformer speeds up training")
    distance_cap: int = Field(64, ge=1, description="distances |i - j| are clamped to this in the gravity penalty")
    distance_scale: float = Field(0.1, ge=0, description="gravity penalty = distance_scale * g * min(|i-j|, cap)")
    gravity_bias_init: float = Field(0.5, description="initial bias b_g of the gravity net g = softplus(W_g u + b_g)")
    gravity_weight_std: float = Field(0.01, gt=0, description="std of the normal init of W_g")
    attention: Literal["auto", "flex", "reference"] = Field(
        "auto", description='how the gravity-biased attention is computed (same scores, exact either way): '
        '"flex": FlexAttention with the penalty as a score_mod and a causal block mask (fused, no (B, H, T, T) '
        'tensor; CUDA; on CPU torch 2.13 has no FlexAttention backward, so inference only); "reference": the '
        'penalty as an additive float mask to scaled_dot_product_attention (the original path); "auto": flex on '
        'CUDA, reference elsewhere. Decoding with a KV cache and attention dropout always use the reference')
    mlp_ratio: int = Field(4, ge=1, description="MLP hidden width = mlp_ratio * d_model")
    rope_base: float = Field(10000.0, gt=0, description="RoPE frequency base")
    init: Literal["source", "gpt2"] = Field(
        "source", description='"source": the source\'s PyTorch defaults (E_q = the head\'s Linear init '
        'U(+-1/sqrt(d)), E_p ~ N(0, 1), other Linears U(+-1/sqrt(fan_in))), so the momentum outweighs q about '
        '4.5x at init; "gpt2": kinlm\'s earlier N(0, 0.02) for every Linear and Embedding (momentum about 0.1x '
        'q), not the source. The gravity init (W_g, b_g below) applies to both')
    decay: Literal["all", "matrices"] = Field(
        "all", description="which parameters AdamW's weight decay reaches: all (the source: AdamW(model.parameters()), "
        "both embedding tables, norms and biases included) or matrices (kinlm's rule for other models; the "
        "benchmark spec uses it so that every method trains with one recipe)")

    @model_validator(mode="after")
    def _check_heads(self):
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"model.d_model ({self.d_model}) / model.n_head ({self.n_head}) must be an even integer")
        return self

    def build(self, vocab_size: int):
        from .model import HamiltonianLM

        return HamiltonianLM(self, vocab_size)


class SteerConfig(GeneratorConfig):
    """Sampling (temperature, top-k/top-p, repetition penalty) with a concept vector added at every position.

    The vector is ``strength`` x the tied output-head row of the target word's first token.
    With strength 0 the text equals plain sampling with the same seed.
    """

    type: Literal["steer"] = "steer"
    temperature: float = Field(0.7, ge=0.0, description="softmax temperature; 0 = greedy")
    top_k: int | None = Field(50, ge=1, description="keep only the k most likely tokens")
    repetition_penalty: float = Field(1.2, gt=0, description="divide positive / multiply negative logits of every "
                                      "token generated so far by this (1 = off)")
    target: str = Field("", description="word to steer toward (strength > 0) or away from (strength < 0)")
    strength: float = Field(0.5, description="multiplier of the concept vector; negative pushes away, 0 = plain sampling")
    steer_target: Literal["q", "momentum"] = Field(
        "q", description='"q": added to the block input (the source code); "momentum": added to the velocity, '
        'so the momentum EMA carries it (the source README)')
    leading_space: bool = Field(False, description="encode ' ' + target instead of target (the source: no space)")
    stop_at_eos: bool = Field(False, description="end at the end-of-text token (transformers' generate does); "
                              "false, the source's: go on past it, showing each boundary as <|endoftext|>")

    def generate(self, model, tokenizer: Tokenizer, prompt: str | None = None) -> str:
        from .generate import steer

        return steer(model, tokenizer, self, self.prompt if prompt is None else prompt)


class LeastActionConfig(GeneratorConfig):
    """Deterministic planning: pick the top candidate whose greedy look-ahead has the least mean -log p plus repeat penalties.

    Ignores temperature, top_k, top_p and seed (no sampling).
    """

    ignored_options: ClassVar[tuple[str, ...]] = ("temperature", "top_k", "top_p", "seed")
    type: Literal["least_action"] = "least_action"
    max_new_tokens: int = Field(50, ge=1, description="number of tokens to generate (the source's mode 3: 50)")
    stop_at_eos: bool = Field(False, description="end at the end-of-text token (transformers' generate does); "
                              "false, the source's: go on past it, showing each boundary as <|endoftext|>")
    candidates: int = Field(5, ge=1, description="top-c next tokens considered at every step")
    lookahead: int = Field(3, ge=0, description="greedy roll-out steps after each candidate")
    repeat_window: int = Field(15, ge=0, description="a token repeating one of the last n tokens is penalised")
    repeat_penalty: float = Field(10.0, description="action added for each repeating token")
    lookahead_resets: bool = Field(False, description="apply the end-of-text momentum resets in the look-ahead "
                                   "passes too; false, the source's: its roll-outs call the model without them")

    def generate(self, model, tokenizer: Tokenizer, prompt: str | None = None) -> str:
        from .generate import least_action

        return least_action(model, tokenizer, self, self.prompt if prompt is None else prompt)


class FlowConfig(GeneratorConfig):
    """Deterministic "Hamiltonian flow": pick the top candidate minimising -log p + repeat penalty + w (1 - cos(h_before, h_after)).

    h is the final-norm hidden state at the last position. Ignores temperature, top_k, top_p and seed.
    """

    ignored_options: ClassVar[tuple[str, ...]] = ("temperature", "top_k", "top_p", "seed")
    type: Literal["flow"] = "flow"
    max_new_tokens: int = Field(50, ge=1, description="number of tokens to generate (the source's mode 4: 50)")
    stop_at_eos: bool = Field(False, description="end at the end-of-text token (transformers' generate does); "
                              "false, the source's: go on past it, showing each boundary as <|endoftext|>")
    candidates: int = Field(5, ge=1, description="top-c next tokens considered at every step")
    momentum_weight: float = Field(2.0, description="w: weight of the hidden-state turning cost 1 - cos")
    repeat_window: int = Field(32, ge=0, description="a candidate repeating one of the last n tokens is penalised")
    repeat_penalty: float = Field(5.0, description="energy added to a repeating candidate")
    lookahead_resets: bool = Field(False, description="apply the end-of-text momentum resets in the candidates' "
                                   "passes too; false, the source's: it runs them without (the pass before has them)")

    def generate(self, model, tokenizer: Tokenizer, prompt: str | None = None) -> str:
        from .generate import flow

        return flow(model, tokenizer, self, self.prompt if prompt is None else prompt)
