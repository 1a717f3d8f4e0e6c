"""Configs of the plugin's three components (torch-free; torch code is imported inside
``build``/``analyze``).

- ``accel_penalty`` (regularizer): lambda * mean ||h_t - 2 h_{t-1} + h_{t-2}||^2 over chosen layers.
- ``diff_wrapper`` (model): every block output h -> alpha h + beta dh + gamma d2h around any kinlm model.
- ``trajectory`` (analyzer): per-layer speed, acceleration and curvature of the hidden-state path.

Defaults reproduce the source (AbbasMaghsdi/LLM-Project-Investigation-of-Kinematic-Representation-in-LLMs,
experiments/04_acceleration_penalty, 03_diffwrapper, 01_geometric_analysis).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Union

from pydantic import Field, field_validator

from kinlm_core import CAPABILITIES, AnalyzerConfig, ModelConfig, NestedConfig, RegularizerConfig, Tokenizer

LAYER_MODES = ("first_middle_last", "all", "weighted", "last")
SOURCE_WEIGHTS = [1.5, 1.3, 1.1, 1.0, 0.8, 0.6]


class AccelPenaltyConfig(RegularizerConfig):
    """Acceleration penalty: lambda * mean ||h_t - 2 h_{t-1} + h_{t-2}||^2 of chosen layers' hidden states.

    ``weight`` is lambda (the engine multiplies the returned term by it and logs the term,
    unweighted, as ``reg/<name>``). Layers are indexed as transformers' ``output_hidden_states``
    (0 = embeddings, L = the last, after the final norm). For each selected layer l,
    P_l = sum_{b,t valid} ||a_{b,t}||^2 / #valid with a_t = h_t - 2 h_{t-1} + h_{t-2}; a t is valid
    when t, t-1 and t-2 are real tokens (attention_mask) of one document (document_ids). A model
    with encoder states (T5) is penalised on both stacks: per stack the layers are combined, and
    the stack totals are added (the source's T5 use).
    """

    type: Literal["accel_penalty"] = "accel_penalty"
    requires: ClassVar[tuple[str, ...]] = ("hidden_states",)
    weight: float = Field(1e-4, ge=0, description="lambda: multiplier of the penalty in the loss (source: 1e-4 "
                          "for DistilGPT-2, 0.1 for DiffWrapper + weighted, 5.0 for Mamba's last layer)")
    name: str = Field("accel_penalty", min_length=1, description="scalar name: logged as reg/<name>")
    layers: Union[Literal["first_middle_last", "all", "weighted", "last"], list[int]] = Field(
        "first_middle_last", description='"first_middle_last": {1, L//2+1, L} (DistilGPT-2: {1, 4, 6}); "all": 1..L; '
        '"weighted": 1..L weighted by layer_weights; "last": L; or explicit hidden-state indices (negative '
        'counts from the end); repeated indices count once')
    reduce: Literal["auto", "sum", "mean"] = Field(
        "auto", description='combining the selected layers of one stack: "sum" (sum w_l P_l), "mean" '
        '(sum w_l P_l / sum w_l; w_l = 1 except for "weighted"), or "auto" = the source: first_middle_last, last '
        'and explicit lists add up (averaged per stack for seq2seq models), all and weighted average')
    layer_weights: list[float] = Field(
        SOURCE_WEIGHTS, min_length=1, description='weights of layers 1..L for "weighted" (source: 1.5, 1.3, 1.1, '
        '1.0, 0.8, 0.6, "early layers matter more"); for a model with a different number of layers the '
        'source falls back to equal weights, and so does this')
    norm: Literal["squared", "l2"] = Field("squared", description='per-position size of a_t: "squared" ||a_t||^2 '
                                           '(source) or "l2" ||a_t||')
    normalize: Literal["none", "dim", "scale"] = Field(
        "none", description='"none" (source); "dim": divide by the width d (mean instead of sum over features); '
        '"scale": divide by the layer\'s mean ||h_t||^2 (||h_t|| for l2) over valid positions, detached, so the '
        'penalty is a relative acceleration that does not depend on the states\' scale')
    mask: Literal["padding_and_documents", "padding", "none"] = Field(
        "padding_and_documents", description='which second differences count: "padding_and_documents" (no padding, '
        'never across a document boundary), "padding" (no padding only), "none" (every position, the source)')

    @field_validator("layers")
    @classmethod
    def _nonempty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("give at least one layer index, or one of " + ", ".join(LAYER_MODES))
        return v

    def build(self):
        from .penalty import AccelPenalty

        return AccelPenalty(self)


InnerModel = NestedConfig("model", exclude=("diff_wrapper",), owner="a diff_wrapper")


class DiffWrapperConfig(ModelConfig):
    """DiffWrapper: every block's output h_t becomes alpha h_t + beta (h_t - h_{t-1}) + gamma (h_t - 2 h_{t-1} + h_{t-2}) around any kinlm model.

    Learnable scalars per block. Causal: zeros before the first position. The defaults are the
    source's CustomGPT (the "all 3 modes" notebook): alpha = 1 + N(0, 0.02^2), beta, gamma ~ N(0, 0.02^2),
    and weight decay on every parameter (its ``AdamW(model.parameters())``). ``init_std: 0`` is its
    SmolLM notebook (exactly the identity: the wrapper computes the inner model at start). The
    inner model is given in full, e.g.
    ``{"type": "diff_wrapper", "inner": {"type": "gpt", "n_layer": 6, "d_model": 192}}``.
    """

    type: Literal["diff_wrapper"] = "diff_wrapper"
    requires: ClassVar[tuple[str, ...]] = ("blocks",)
    inner: InnerModel = Field(
        ..., description='the wrapped model, e.g. {"type": "gpt", "n_layer": 6, "d_model": 192}')
    blocks: list[str] | None = Field(
        None, description="attribute paths of the inner model's block lists (e.g. [\"blocks\"], "
        "[\"hf.transformer.h\"]); None: every ModuleList named blocks, layers, layer, block or h")
    init: tuple[float, float, float] = Field((1.0, 0.0, 0.0), description="mean of the initial (alpha, beta, gamma) "
                                             "of every block (source: 1, 0, 0)")
    init_std: float = Field(0.02, ge=0, description="each scalar starts at its init plus N(0, init_std^2) noise "
                            "(source's CustomGPT: 0.02; its SmolLM notebook: 0, the exact identity)")
    learnable: bool = Field(True, description="alpha, beta, gamma are trained (false: fixed at init)")
    decay: Literal["all", "mix", "none"] = Field(
        "all", description='weight decay (train.weight_decay): "all" every parameter, the inner model\'s norms, '
        'biases and embeddings included (the source\'s AdamW(model.parameters())); "mix": alpha, beta, gamma '
        'decayed, the inner model under the engine\'s rule (matrices only), so it trains as the same model '
        'unwrapped; "none": alpha, beta, gamma not decayed (kinlm before issue 19)')

    def capabilities(self) -> set[str]:
        """The inner model's contract capabilities (the wrapper passes them on)."""
        return self.inner.capabilities() & set(CAPABILITIES)

    def build(self, vocab_size: int):
        from .diff_wrapper import build

        return build(self, vocab_size)


class TrajectoryConfig(AnalyzerConfig):
    """Kinematics of hidden-state trajectories per layer: mean speed, acceleration norm and curvature, with and without velocity concatenation.

    For one text and one layer, h_1..h_T (T x d): v_t = h_t - h_{t-1}, a_t = v_t - v_{t-1};
    speed = mean |v_t|, accel = mean |a_t|, curvature = mean (1 - cos(v_t, v_{t-1})). "concat" repeats
    them on the state s_t = [h_t, v_t] (the source's kinematic concatenation). Writes
    ``trajectory.png`` and ``metrics.json``; works on any model returning hidden states, including a
    pretrained transformers folder (``kinlm analyze --hf-model FOLDER --analyzer trajectory``).
    """

    type: Literal["trajectory"] = "trajectory"
    max_tokens: int = Field(128, ge=3, description="tokens of each text analyzed (also capped by the model's block_size)")
    concat_velocity: bool = Field(True, description="also report the kinematics of [h_t, v_t] (keys concat/...)")

    def analyze(self, model, tokenizer: Tokenizer, texts: list[str], out_dir: Path) -> dict:
        from .trajectory import analyze

        return analyze(self, model, tokenizer, texts, Path(out_dir))
