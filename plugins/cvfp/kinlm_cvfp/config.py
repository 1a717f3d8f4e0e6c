"""Configs of the cvfp plugin (torch-free; torch code is imported inside build/schedule/analyze).

Defaults are the source's code at its last November snapshot (rato-tokyo/new-llm a36b9ef, 2025-11-29,
the separated "E" layout): d 768, K = 6 context and token layers, every Linear W ~ N(0, 0.1) and
b ~ N(0, 0.01), a trainable embedding LayerNorm, untied head (zero-initialised) and a trainable
embedding table; phase 1 Adam lr 2e-3, w = 0.8 (the config; its 11-29 runs used 0.6), noise 0.1 on
the incoming contexts, 8,000-token gradient chunks, at most 40 iterations (iteration 0 included), early
stop at 95% of tokens converged (tau 0.03) from iteration 5 on; validation = the last 10% of the
stream; phase 2 Adam lr 1e-3 on contiguous minibatches in stream order, at most 10 epochs, patience 1;
both phases' Adam with torch's default betas (0.9, 0.999), not the core's train.betas.
Each field's description names the source's value where it moved over time.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, model_validator

from kinlm_core import AnalyzerConfig, CurriculumConfig, ModelConfig, Phase, RegularizerConfig


class CvfpConfig(ModelConfig):
    """Context Vector Fixed-Point LM: a recurrent ContextBlock carries one context vector, a TokenBlock predicts.

    Train it with the ``cvfp_two_phase`` curriculum (fixed-point learning of the ContextBlock, then
    token prediction with the ContextBlock frozen); without a curriculum the engine trains every
    parameter end to end with the token loss (a baseline of the same network).
    """

    type: Literal["cvfp"] = "cvfp"
    provides: ClassVar[dict[str, str]] = {
        "hidden_states": "e_t = LN_embed(E[x_t]) and the TokenBlock's z^1..z^K over time t (end-to-end training "
                         "only: under cvfp_two_phase no regularizer applies)",
        "input_embeddings": "E[x_t], the raw token table's rows before LN_embed (feeding both blocks)",
        "blocks": "the TokenBlock's K layers, their outputs z^k (`block_lists()`: its LayerNorms); the "
                  "ContextBlock runs token by token and is left alone",
        "cvfp_parts": "the network itself (embed, context_block, token_block, logits), unwrapped"}
    d_model: int = Field(768, ge=4, description="width d of the embeddings and the context vector (source: 768, GPT-2's)")
    n_layer: int = Field(6, ge=1, description="K: layers of the ContextBlock and of the TokenBlock (the same K; "
                         "source: 6 in every run of the E layout)")
    block_size: int = Field(128, ge=2, description="context generators crop prompts to (the recurrence itself has no limit)")
    tie_head: bool = Field(False, description="output head tied to the raw embedding table (logits = z^K E^T, no bias); "
                           "false: a Linear d -> V with bias, zero-initialised (source config at 11-29: untied; its "
                           "README recommends tied)")
    freeze_embedding: bool = Field(False, description="keep the embedding table fixed (stored as a buffer, never trained; "
                                   "source config at 11-29: trainable; the 11-27/28 runs froze GPT-2's)")
    embedding_path: str | None = Field(None, description="load the (vocab, d_model) embedding table from this file "
                                       "(.npy, .pt or .safetensors; the source used GPT-2's wte); None: random normal init")
    init_std: float = Field(0.1, gt=0, description="std of the normal init of every Linear weight in the two blocks (source: 0.1)")
    bias_init_std: float = Field(0.01, ge=0, description="std of the normal init of those Linears' biases (source: 0.01)")
    embedding_std: float | None = Field(None, gt=0, description="std of the random embedding table; None: 1/sqrt(d_model), "
                                        "so tied logits z^K E^T start at unit scale (a frozen table fixes their scale)")

    loop: Literal["auto", "compiled"] = Field(
        "auto", description='how the ContextBlock\'s loop over tokens runs: "auto" (eager, the token halves hoisted '
                            'out of the loop; the readable per-token loop when a layer is replaced or hooked), '
                            '"compiled" (each token\'s step compiled by torch.compile; on CUDA as CUDA graphs, so '
                            'the GPU does not wait on Python; compiles on first use and for each new batch size)')

    def build(self, vocab_size: int):
        from .model import CVFP

        return CVFP(self, vocab_size)


class TwoPhaseConfig(CurriculumConfig):
    """The cvfp method: phase 1 fixed-point learning of the ContextBlock, then phase 2 token prediction with it frozen.

    Phase 1 ("fixed_point"): iteration 0 runs the ContextBlock sequentially over the training stream
    from c = 0 (targets C_0, no gradient); each later iteration n is ONE optimizer step: every token i
    gets the previous iteration's context of token i-1 as incoming context, token 0 the previous
    iteration's last one (``mode="parallel"``; ``"sequential"`` uses this iteration's own context of
    token i-1 instead, detached between tokens, or with ``through_time`` backpropagated through the
    recurrence as the source's sequential baseline), plus noise; per ``chunk_tokens`` chunk b the loss is
    ((1 - w) MSE(C_b, target_b) + w diversity(C_b)) / n_chunks, gradients accumulated. It ends when
    iteration n + 1 >= ``min_iterations`` and the convergence rate reaches ``convergence_rate``, or
    after ``max_iterations`` iterations (iteration 0 counted, as in the source). Phase 2
    ("token_prediction"): the ContextBlock is frozen, its per-layer contexts over the stream are
    computed once (sequentially from zero) and cached, and the TokenBlock (and an untied head) train
    with cross-entropy on contiguous minibatches; it ends after ``max_epochs`` epochs or when the
    validation loss has not improved for ``patience`` epochs (the best epoch's weights are restored).
    """

    type: Literal["cvfp_two_phase"] = "cvfp_two_phase"
    requires: ClassVar[tuple[str, ...]] = ("cvfp_parts",)
    ignores_regularizers: ClassVar[str] = (
        "its phases train with their own losses: phase 1 fixed-point MSE + diversity on the ContextBlock's "
        "contexts, phase 2 cross-entropy of the TokenBlock on cached contexts; train cvfp without a "
        "curriculum (end to end) to add a regularizer")
    train_tokens: int | None = Field(None, ge=2, description="use the first this many tokens of the training stream "
                                     "(None: all of it, as the source's 11-29 runs: every token of its samples)")
    validation: Literal["train_tail", "split"] = Field(
        "train_tail", description='phase 2\'s validation stream: "train_tail" the last validation_fraction of the '
        "training stream, which neither phase trains on (source 11-29); \"split\": the data's validation split "
        "(kinlm's option: a split held out by the dataset)")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description='share of the stream held out by "train_tail" '
                                       "(source: 0.1)")
    validation_tokens: int | None = Field(None, ge=2, description='"split" only: the first this many tokens of the '
                                          "validation split (None: all)")
    mode: Literal["parallel", "sequential"] = Field(
        "parallel", description="phase 1 incoming contexts: the previous iteration's (parallel, one shifted batch; the "
        "source's method) or this iteration's, token by token (the source's sequential baseline; see through_time)")
    through_time: bool = Field(
        False, description='mode "sequential" only: backpropagate through the recurrence, each token\'s incoming '
        "context keeping its graph back to the chunk's first token (the source's sequential baseline at 9ee3281 ran "
        "the real recurrence with gradient through each token step); false detaches between tokens. The context "
        "carried from one chunk to the next is detached (the graph ends at a chunk, as the gradient is accumulated "
        "chunk by chunk)")
    max_iterations: int = Field(40, ge=2, description="phase 1 iterations at most, counted as the source counts them: "
                                "iteration 0 (sequential, no step) included, so max_iterations - 1 optimizer steps "
                                "(source: 10 on 11-25, 40 on 11-29)")
    min_iterations: int = Field(5, ge=1, description="phase 1 may stop early only once iteration 0 and the steps "
                                "taken make this many iterations (source: 5)")
    convergence_threshold: float = Field(0.03, gt=0, description="a token has converged when the mean over d of its "
                                         "squared context change from the previous iteration is below this (source: 0.1 "
                                         "on 11-25, 0.03 from 11-26)")
    convergence_rate: float = Field(0.95, gt=0, le=1, description="phase 1 stops early when this share of tokens has "
                                    "converged (source: 0.95)")
    dist_reg_weight: float = Field(0.8, ge=0, le=1, description="w in (1 - w) MSE + w diversity (source config at 11-29: "
                                   "0.8; its 11-29 runs: 0.6; 0.5 on 11-26..28; 0.9 on 11-25)")
    target: Literal["previous", "initial"] = Field(
        "previous", description="MSE target: the previous iteration's contexts (source from 11-26) or C_0 of "
        "iteration 0 (source on 11-25)")
    noise_std: float = Field(0.1, ge=0, description="std of Gaussian noise added to the incoming contexts in phase 1 "
                             "(source: 0.1 from 11-26; 0 on 11-25)")
    noise_seed: int = Field(0, description="seed of that noise (drawn per iteration, so a resumed run draws the same)")
    chunk_tokens: int = Field(8000, ge=1, description="phase 1 gradients are accumulated over chunks of this many tokens, "
                              "each chunk's loss divided by the number of chunks (source: 8,000 from 11-26; 11-25: "
                              "the whole stream)")
    phase1_lr: float = Field(2e-3, gt=0, description="phase 1 Adam learning rate (constant, no weight decay; source: 2e-3)")
    phase2_lr: float = Field(1e-3, gt=0, description="phase 2 Adam learning rate (constant, no weight decay; source: 1e-3)")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="Adam betas of both phases (source: torch's defaults (0.9, 0.999) in both; under this "
        "curriculum they replace train.betas, whose default is the core's (0.9, 0.95))")
    batch_tokens: Union[Annotated[int, Field(ge=2)], Literal["free_memory"]] = Field(
        512, description="phase 2 minibatch (one optimizer step): this many contiguous positions of the cached "
        'stream. "free_memory": the source\'s rule, sized from the memory free once the cache is built (see '
        "the README); the results then depend on the device's memory")
    micro_tokens: Union[Annotated[int, Field(ge=1)], Literal["auto"], None] = Field(
        None, description="phase 2 positions per forward/backward pass, accumulated to batch_tokens per step "
        '(None: the whole minibatch at once). "auto": the largest that fits (tried on a GPU, backing off on '
        "out-of-memory; on CPU estimated), with one more back-off if a step runs out of memory; the results do "
        "not depend on it (up to float rounding)")
    phase2_order: Literal["stream", "shuffled"] = Field(
        "stream", description='phase 2 minibatch order in an epoch: "stream" in stream order (source), "shuffled" a '
        "seeded permutation per epoch (kinlm's option)")
    max_epochs: int = Field(10, ge=1, description="phase 2 passes over the training stream at most (source: 10)")
    patience: int = Field(1, ge=1, description="phase 2 stops after this many epochs without a better validation loss "
                          "(source: 1)")
    phase2_seed: int = Field(0, description='seed of phase 2\'s per-epoch permutation (phase2_order "shuffled")')

    @model_validator(mode="after")
    def _check(self):
        if self.validation == "train_tail" and self.validation_tokens is not None:
            raise ValueError('curriculum.validation_tokens applies to validation "split" only; with "train_tail" '
                             "the validation stream is the last validation_fraction of the training stream")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"curriculum.betas {list(self.betas)}: each must be in [0, 1)")
        if self.through_time and self.mode != "sequential":
            raise ValueError('curriculum.through_time backpropagates through the sequential recurrence: it needs '
                             'curriculum.mode "sequential" (the parallel iterations have no recurrence within an '
                             "iteration)")
        if self.min_iterations > self.max_iterations:
            raise ValueError(f"curriculum.min_iterations ({self.min_iterations}) must be <= "
                             f"curriculum.max_iterations ({self.max_iterations})")
        return self

    def schedule(self, max_steps: int) -> list[Phase]:
        from .training import PHASE1, PHASE2, phase1_until, phase2_until, phase1_step, phase2_step

        adam = {"weight_decay": 0.0, "schedule": "constant", "warmup_steps": 0, "betas": tuple(self.betas)}
        return [
            Phase(PHASE1, steps=self.max_iterations - 1, trainable=["context_block"], token_loss=0.0, regularizers=[],
                  optim={"lr": self.phase1_lr, **adam}, order="sequential",
                  step=lambda ctx: phase1_step(self, ctx), until=lambda state, m: phase1_until(self, state, m)),
            Phase(PHASE2, steps=None, trainable=["token_block", "head"], regularizers=[],
                  optim={"lr": self.phase2_lr, **adam}, order="sequential",
                  step=lambda ctx: phase2_step(self, ctx), until=lambda state, m: phase2_until(self, state, m)),
        ]


class DiversityConfig(RegularizerConfig):
    """Diversity of a hidden layer: -||H - mean_rows(H)||_F / N over the batch's N real tokens (cvfp's spread term).

    Works with any model that returns hidden states. Lower is more spread out; the engine multiplies it
    by ``weight`` and adds it to the loss. Being a Frobenius norm over N, its size falls as 1/sqrt(N):
    a weight tuned at one batch size is weaker at a larger one (as in the source, whose N was a chunk).
    """

    type: Literal["diversity"] = "diversity"
    requires: ClassVar[tuple[str, ...]] = ("hidden_states",)
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
    cosine_above: float = Field(0.95, ge=-1, le=1, description="identity_like needs a mean in/out cosine above this "
                                "(the source flags identity above 0.95, on 100 random (c, e) pairs)")
    sensitivity_below: float = Field(0.05, ge=0, description="identity_like needs a token sensitivity below this")
    seed: int = Field(0, description="seed of the replacement tokens")

    def analyze(self, model, tokenizer, texts, out_dir):
        from .analyze import identity_check_analysis

        return identity_check_analysis(self, model, tokenizer, texts, out_dir)


class GlobalAttractorConfig(_ContextAnalyzer):
    """The source's global-attractor check: do the contexts collapse onto one vector whatever the text?

    Over the stream's contexts (for a cvfp model the ContextBlock's outputs per layer, run
    sequentially from zero; for any other model the last hidden state of each text): the mean L2
    distance and the mean cosine over all pairs of tokens. ``global_attractor`` is 1 when the last
    layer's mean distance is below ``l2_below`` and its mean cosine above ``cosine_above`` (the
    source's thresholds). A zero vector has cosine 0 with every vector, so all-zero contexts are
    flagged by ``zero_solution``, not here.
    """

    type: Literal["global_attractor"] = "global_attractor"
    l2_below: float = Field(0.1, ge=0, description="global_attractor needs a mean pairwise L2 distance below this "
                            "(the source: 0.1)")
    cosine_above: float = Field(0.99, ge=-1, le=1, description="global_attractor needs a mean pairwise cosine above "
                                "this (the source: 0.99)")

    def analyze(self, model, tokenizer, texts, out_dir):
        from .analyze import global_attractor_analysis

        return global_attractor_analysis(self, model, tokenizer, texts, out_dir)


class ZeroSolutionConfig(_ContextAnalyzer):
    """The source's zero-solution check: have the contexts collapsed to zero (a trivial fixed point)?

    Over the same contexts as ``global_attractor``: the mean L2 norm per layer; ``zero_solution`` is 1
    when the last layer's is below ``norm_below`` (the source's 0.1).
    """

    type: Literal["zero_solution"] = "zero_solution"
    norm_below: float = Field(0.1, ge=0, description="zero_solution needs a mean context norm below this (the source: 0.1)")

    def analyze(self, model, tokenizer, texts, out_dir):
        from .analyze import zero_solution_analysis

        return zero_solution_analysis(self, model, tokenizer, texts, out_dir)
