"""Configs of the cvfp plugin (torch-free; torch code is imported inside build/schedule/analyze).

Defaults are the setting of rato-tokyo/new-llm's final "E" layout (late November 2025): d 768,
K = 3 context and token layers, tied head, frozen embeddings; phase 1 Adam lr 2e-3, w = 0.9, up to
10 parallel iterations over 6,400 tokens in 8,000-token gradient chunks, early stop at 95% of tokens
converged after 5 iterations; phase 2 Adam lr 1e-3, at most 10 epochs, patience 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kinlm_core import AnalyzerConfig, CurriculumConfig, ModelConfig, Phase, RegularizerConfig


class CvfpConfig(ModelConfig):
    """Context Vector Fixed-Point LM: a recurrent ContextBlock carries one context vector, a TokenBlock predicts.

    Train it with the ``cvfp_two_phase`` curriculum (fixed-point learning of the ContextBlock, then
    token prediction with the ContextBlock frozen); without a curriculum the engine trains every
    parameter end to end with the token loss (a baseline of the same network).
    """

    type: Literal["cvfp"] = "cvfp"
    d_model: int = Field(768, ge=4, description="width d of the embeddings and the context vector (source: 768, GPT-2's)")
    n_layer: int = Field(3, ge=1, description="K: layers of the ContextBlock and of the TokenBlock (the same K)")
    block_size: int = Field(128, ge=2, description="context generators crop prompts to (the recurrence itself has no limit; "
                            "source: samples of 128 tokens)")
    tie_head: bool = Field(True, description="output head tied to the embedding table (logits = z^K E^T)")
    freeze_embedding: bool = Field(True, description="keep the embedding table fixed (stored as a buffer, never trained); "
                                   "the source froze GPT-2's pretrained embeddings")
    embedding_path: str | None = Field(None, description="load the (vocab, d_model) embedding table from this file "
                                       "(.npy, .pt or .safetensors); None: random normal init")
    init_std: float = Field(0.02, gt=0, description="std of the normal init of the linear weights")
    embedding_std: float | None = Field(None, gt=0, description="std of the random embedding table; None: 1/sqrt(d_model), "
                                        "so tied logits z^K E^T start at unit scale (a frozen table fixes their scale)")

    def build(self, vocab_size: int):
        from .model import CVFP

        return CVFP(self, vocab_size)


class TwoPhaseConfig(CurriculumConfig):
    """The cvfp method: phase 1 fixed-point learning of the ContextBlock, then phase 2 token prediction with it frozen.

    Phase 1 ("fixed_point"): iteration 0 runs the ContextBlock sequentially over the first
    ``train_tokens`` tokens of the training stream from c = 0 (targets C_0, no gradient); each later
    iteration n is ONE optimizer step: every token i gets the previous iteration's context of token
    i-1 as incoming context (``mode="parallel"``; ``"sequential"`` uses this iteration's own context of
    token i-1 instead), loss = (1 - w) MSE(C_n, target) + w diversity(C_n), gradients accumulated over
    ``chunk_tokens``-token chunks. It ends when the convergence rate reaches ``convergence_rate`` after
    ``min_iterations`` iterations, or after ``max_iterations``. Phase 2 ("token_prediction"): the
    ContextBlock is frozen, its per-layer contexts over the stream are computed once (sequentially from
    zero) and cached, and the TokenBlock (and an untied head) train with cross-entropy on contiguous
    minibatches; it ends after ``max_epochs`` epochs or when the held-out validation loss has not
    improved for ``patience`` epochs (the best epoch's weights are restored).
    """

    type: Literal["cvfp_two_phase"] = "cvfp_two_phase"
    train_tokens: int | None = Field(6400, ge=2, description="tokens of the training stream both phases use "
                                     "(source: 50 samples x 128 = 6,400); None: the whole stream")
    validation_tokens: int | None = Field(1280, ge=2, description="tokens of the held-out validation stream phase 2's "
                                          "early stop reads (source: 1,280); None: the whole split")
    mode: Literal["parallel", "sequential"] = Field(
        "parallel", description="phase 1 incoming contexts: the previous iteration's (parallel, one shifted batch) "
        "or this iteration's (sequential, token by token)")
    max_iterations: int = Field(10, ge=1, description="phase 1 optimizer steps at most (iterations 1..N)")
    min_iterations: int = Field(5, ge=1, description="phase 1 never stops early before this many iterations")
    convergence_threshold: float = Field(0.03, gt=0, description="a token has converged when the mean over d of its "
                                         "squared context change from the previous iteration is below this (source: 0.1, later 0.03)")
    convergence_rate: float = Field(0.95, gt=0, le=1, description="phase 1 stops early when this share of tokens has converged")
    dist_reg_weight: float = Field(0.9, ge=0, le=1, description="w in (1 - w) MSE + w diversity (source: 0.9, later 0.5/0.6/0.8)")
    target: Literal["previous", "initial"] = Field(
        "previous", description="MSE target: the previous iteration's contexts (final source code) or C_0 of iteration 0")
    noise_std: float = Field(0.0, ge=0, description="std of Gaussian noise added to the incoming contexts in phase 1 "
                             "(later source versions: 0.1)")
    noise_seed: int = Field(0, description="seed of that noise (drawn per iteration, so a resumed run draws the same)")
    chunk_tokens: int = Field(8000, ge=1, description="phase 1 gradients are accumulated over chunks of this many tokens")
    phase1_lr: float = Field(2e-3, gt=0, description="phase 1 Adam learning rate (constant, no weight decay)")
    phase2_lr: float = Field(1e-3, gt=0, description="phase 2 Adam learning rate (constant, no weight decay)")
    batch_tokens: int = Field(512, ge=2, description="phase 2 minibatch: this many contiguous positions of the cached stream")
    max_epochs: int = Field(10, ge=1, description="phase 2 passes over the training stream at most")
    patience: int = Field(1, ge=1, description="phase 2 stops after this many epochs without a better validation loss")
    phase2_seed: int = Field(0, description="seed of phase 2's per-epoch minibatch order")

    @model_validator(mode="after")
    def _check(self):
        if self.min_iterations > self.max_iterations:
            raise ValueError(f"curriculum.min_iterations ({self.min_iterations}) must be <= "
                             f"curriculum.max_iterations ({self.max_iterations})")
        return self

    def schedule(self, max_steps: int) -> list[Phase]:
        from .training import PHASE1, PHASE2, phase1_until, phase2_until, phase1_step, phase2_step

        adam = {"weight_decay": 0.0, "schedule": "constant", "warmup_steps": 0}
        return [
            Phase(PHASE1, steps=self.max_iterations, trainable=["context_block"], token_loss=0.0, regularizers=[],
                  optim={"lr": self.phase1_lr, **adam}, order="sequential",
                  step=lambda ctx: phase1_step(self, ctx), until=lambda state, m: phase1_until(self, state, m)),
            Phase(PHASE2, steps=None, trainable=["token_block", "head"], regularizers=[],
                  optim={"lr": self.phase2_lr, **adam}, order="sequential",
                  step=lambda ctx: phase2_step(self, ctx), until=lambda state, m: phase2_until(self, state, m)),
        ]


class DiversityConfig(RegularizerConfig):
    """Diversity of a hidden layer: -mean_i || h_i - mean_j h_j ||_2 over the batch's real tokens (cvfp's spread term).

    Works with any model that returns hidden states. Lower is more spread out; the engine multiplies it
    by ``weight`` and adds it to the loss.
    """

    type: Literal["diversity"] = "diversity"
    layer: int = Field(-1, description="index into output.hidden_states (-1: the last, after the final norm)")

    def build(self):
        from .losses import diversity_regularizer

        return diversity_regularizer(self.layer)


class _ContextAnalyzer(AnalyzerConfig):
    max_tokens: int = Field(2048, ge=2, description="tokens analyzed: the texts are joined into one stream and cut here")


class EffectiveRankConfig(_ContextAnalyzer):
    """Effective rank (Roy and Vetterli 2007) of the (tokens x d) context matrix: ER and ER / d in percent, with the spectrum.

    For a cvfp model the matrix holds the ContextBlock's output contexts over the texts (sequentially
    from zero); for any other model the last hidden state of each text.
    """

    type: Literal["effective_rank"] = "effective_rank"

    def analyze(self, model, tokenizer, texts, out_dir):
        from .analyze import effective_rank_analysis

        return effective_rank_analysis(self, model, tokenizer, texts, out_dir)


class ConvergenceConfig(_ContextAnalyzer):
    """Fixed-point convergence of a cvfp ContextBlock at fixed weights: parallel iterations from zero contexts.

    Reports the share of tokens whose per-token mean squared change in the last iteration is below
    ``threshold``, the distance to the sequential contexts per iteration (plot), and the error of one
    parallel pass started from the sequential contexts (zero up to rounding: they are its fixed point).
    """

    type: Literal["convergence"] = "convergence"
    iterations: int = Field(10, ge=1, description="parallel iterations run from zero contexts")
    threshold: float = Field(0.03, gt=0, description="per-token mean squared change under which a token counts as converged")

    def analyze(self, model, tokenizer, texts, out_dir):
        from .analyze import convergence_analysis

        return convergence_analysis(self, model, tokenizer, texts, out_dir)


class IdentityCheckConfig(_ContextAnalyzer):
    """How close a cvfp ContextBlock's update c -> f(c, e) is to the identity (contexts that barely change, whatever the token).

    Reports the mean cosine between incoming and outgoing contexts, their relative change, and the
    token sensitivity: the relative change of f(c, e) when the token is replaced by another token of
    the stream. ``identity_like`` is 1 when cosine > ``cosine_above`` and sensitivity < ``sensitivity_below``.
    """

    type: Literal["identity_check"] = "identity_check"
    cosine_above: float = Field(0.99, ge=-1, le=1, description="identity_like needs a mean in/out cosine above this")
    sensitivity_below: float = Field(0.05, ge=0, description="identity_like needs a token sensitivity below this")
    seed: int = Field(0, description="seed of the replacement tokens")

    def analyze(self, model, tokenizer, texts, out_dir):
        from .analyze import identity_check_analysis

        return identity_check_analysis(self, model, tokenizer, texts, out_dir)
