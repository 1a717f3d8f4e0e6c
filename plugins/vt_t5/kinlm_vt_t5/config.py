"""Configs of the vt_t5 plugin (torch-free; torch code is imported inside build/analyze).

Source: "Investigation of Kinematic Representation in LLMs" (2025), code in
AbbasMaghsdi/LLM-Project-Investigation-of-Kinematic-Representation-in-LLMs (experiments/05_t5_curriculum,
Part6: the best model; 02_classification_probe). Where its code does not do what its README says, the
default is the described method and a switch reproduces the code; each field says which is which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from kinlm_core import (CAPABILITIES, AnalyzerConfig, CurriculumConfig, ModelConfig, NestedConfig, ObjectiveConfig, Phase,
                        RegularizerConfig, Tokenizer, component)

from .tasks import DEFAULT_LEVELS, DOMAINS

# --- models ----------------------------------------------------------------------------------------


InnerModel = NestedConfig("model")


class VTEmbeddingsConfig(ModelConfig):
    """VT embeddings around any model's input embedding: e'_t = e_t + w (e_t - e_{t-1}) (or concat+project, or differences only).

    The inner model is named inside this config (``"inner": {"type": "gpt", ...}``) and validated as
    that model's own config. Its input embedding is found through ``get_input_embeddings()`` (every
    transformers model; for T5 the shared table, so both the encoder's and the decoder's inputs get
    VT) or a ``wte`` attribute (gpt). Differences restart at every document start and after padding
    (e_{-1} = 0) where the batch has ``document_ids`` / masks. ``add`` and ``replace`` add no
    parameters (a learnable w adds one); ``concat_project`` adds a Linear (2C or 3C -> C).
    """

    type: Literal["vt_embeddings"] = "vt_embeddings"
    requires: ClassVar[tuple[str, ...]] = ("input_embeddings",)
    inner: InnerModel = Field(
        ..., description='the wrapped model\'s config, e.g. {"type": "gpt", "n_layer": 4} (validated as that '
        'model\'s config)')
    mode: Literal["add", "concat_project", "replace"] = Field(
        "add", description="add: e + w (e - e_prev) (the source's T5); concat_project: Linear([e; v] or [e; v; a]) "
                           "(the source's BERT probes; adds parameters); replace: v = e - e_prev only (ablation)")
    w: float = Field(0.2, description="the weight w of the difference in add mode (source: 0.02, 0.2, 0.4; 0.2 active)")
    learnable: bool = Field(False, description="add mode: w is a trained parameter initialised to w")
    w_range: tuple[float, float] | None = Field(
        None, description="add mode, learnable w: clamp w into [lo, hi] after every optimizer step "
                          "(the representation design: [0.01, 0.5] with w = 0.1, the source's alpha range)")
    acceleration: bool = Field(False, description="concat_project: also concatenate a_t = v_t - v_{t-1} (3C -> C)")
    proj_init: Literal["torch_default", "identity"] = Field(
        "torch_default", description="concat_project: the new Linear's init: torch's default (the source's probes) "
        "or [I 0 (0)] with zero bias, so the wrapped model starts as the inner model (kinlm's option)")
    reset_at_boundaries: bool = Field(
        True, description="differences restart (e_{-1} = 0) at document starts and after padding. The source's rows "
        "hold one right-padded text each, so none of its differences crosses a document; kinlm packs documents into "
        "rows, and this keeps that. false: the literal shift along the whole row")

    @model_validator(mode="after")
    def _check(self):
        if self.w_range is not None and not (self.w_range[0] <= self.w <= self.w_range[1]):
            raise ValueError(f"w ({self.w}) must lie inside w_range {list(self.w_range)}")
        if self.acceleration and self.mode != "concat_project":
            raise ValueError("acceleration applies to mode concat_project only")
        return self

    def capabilities(self) -> set[str]:
        """The inner model's contract capabilities (the wrapper passes them on)."""
        return self.inner.capabilities() & set(CAPABILITIES)

    def build(self, vocab_size: int):
        from .vt import wrap

        return wrap(self, self.inner.build(vocab_size))


T5_PRESETS: dict[str, dict] = {
    # the t5-small configuration (Raffel et al. 2020): ~60M parameters with its 32k vocabulary
    "t5-small": {"d_model": 512, "d_ff": 2048, "d_kv": 64, "num_layers": 6, "num_decoder_layers": 6,
                 "num_heads": 8, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                 "dropout_rate": 0.1, "feed_forward_proj": "relu", "tie_word_embeddings": True},
    # CPU presets (same architecture, smaller)
    "t5-mini": {"d_model": 256, "d_ff": 1024, "d_kv": 32, "num_layers": 4, "num_decoder_layers": 4,
                "num_heads": 8, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                "dropout_rate": 0.1, "feed_forward_proj": "relu", "tie_word_embeddings": True},
    "t5-tiny": {"d_model": 128, "d_ff": 512, "d_kv": 32, "num_layers": 2, "num_decoder_layers": 2,
                "num_heads": 4, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                "dropout_rate": 0.0, "feed_forward_proj": "relu", "tie_word_embeddings": True},
}


class T5Config(ModelConfig):
    """T5ForConditionalGeneration from a named configuration (t5-small, or a CPU preset), random init, through the core's transformers model.

    ``overrides`` changes any transformers T5Config field of the preset. The vocabulary is the run's
    tokenizer's (sentinels included: use the span_corruption or hybrid_tasks objective).
    """

    type: Literal["t5"] = "t5"
    provides: ClassVar[dict[str, str]] = {
        "hidden_states": "the encoder's and the decoder's per-layer states (both stacks penalised, totals added)",
        "input_embeddings": "`shared`, the table of both the encoder's and the decoder's inputs (both get VT)",
        "blocks": "the encoder's and the decoder's T5 blocks (`encoder.block`, `decoder.block`)"}
    preset: Literal["t5-small", "t5-mini", "t5-tiny"] = Field("t5-small", description="named T5 configuration; "
                                                              "t5-small ~60M parameters with a 32k vocabulary")
    overrides: dict[str, Any] = Field(default_factory=dict, description="transformers T5Config fields to change")

    def transformers_config(self) -> ModelConfig:
        """The core ``transformers`` model config this preset stands for."""
        cfg = {"model_type": "t5", **T5_PRESETS[self.preset], **self.overrides}
        return component("model", "transformers").model_validate(
            {"type": "transformers", "config": cfg})

    def build(self, vocab_size: int):
        return self.transformers_config().build(vocab_size)


# --- objective -------------------------------------------------------------------------------------


class HybridTasksConfig(ObjectiveConfig):
    """Per-document seq2seq tasks (general span corruption, morphological, syntactic, semantic) with complexity levels.

    Each example is one document (or a block-size chunk of a longer one); a document yields up to
    four tasks (see kinlm_vt_t5/tasks.py) and each eligible task becomes a row of the batch
    (``per_document="all"``: an epoch covers the whole task set, as the source's) or one of them is
    drawn (``"one"``). Levels: ``bind_data`` scores every training document and cuts each domain
    into equal-count levels; with ``progress`` set only levels <= min(int(p * n), n - 1) are kept.
    Documents with no kept task give no row. Eval: mean cross-entropy over the target tokens and bits
    per byte of the target text.
    """

    type: Literal["hybrid_tasks"] = "hybrid_tasks"
    tasks: list[Literal["general", "morphological", "syntactic", "semantic"]] = Field(
        list(DOMAINS), min_length=1, description="task domains made from each document")
    progress: float | None = Field(None, ge=0, le=1, description="curriculum progress p: levels <= min(int(p n), n-1) "
                                                                "of each domain are kept (None: every level)")
    general_share: float | Literal["dataset_quarter"] = Field(
        1.0, description="probability that a document's general task is kept; 'dataset_quarter': as many general "
                         "tasks as a quarter of the whole task set (the source's code)")
    levels: dict[str, int] = Field(dict(DEFAULT_LEVELS), description="levels per domain (source: morphology 3, "
                                                                    "syntax 4, semantics 5)")
    general: Literal["words_uniform", "t5_tokens"] = Field(
        "words_uniform", description="general task: span lengths uniform in span_lengths over words (the source's "
                                     "best model) or the core span_corruption over tokens (T5's noise)")
    noise_density: float = Field(0.15, gt=0, lt=0.5, description="share of words (or tokens) masked")
    span_lengths: list[int] = Field([1, 2, 3], min_length=1, description="words_uniform: span lengths drawn uniformly")
    span_count: Literal["words", "spans"] = Field(
        "words", description="words_uniform: ~noise_density of the words masked; 'spans': int(noise_density * words) "
                             "spans, the source's count (~30% of the words)")
    mean_span_length: float = Field(3.0, ge=1, description="t5_tokens: mean span length in tokens")
    n_sentinels: int = Field(100, ge=1, description="sentinel ids appended to the vocabulary")
    min_chars: int = Field(150, ge=0, description="documents of at most this many characters yield no task")
    max_source_tokens: int = Field(512, ge=8, description="input length cap (EOS included)")
    max_target_tokens: int = Field(256, ge=4, description="target length cap (EOS included)")
    per_document: Literal["all", "one"] = Field("all", description="rows per document: every kept task, or one drawn")

    @model_validator(mode="after")
    def _check(self):
        bad = set(self.levels) ^ {"morphological", "syntactic", "semantic"}
        if bad or any(v < 1 for v in self.levels.values()):
            raise ValueError("levels must give morphological, syntactic and semantic a level count >= 1")
        if any(x < 1 for x in self.span_lengths):
            raise ValueError("span_lengths must be >= 1")
        if isinstance(self.general_share, float) and not 0 <= self.general_share <= 1:
            raise ValueError("general_share must be in [0, 1] or 'dataset_quarter'")
        return self

    def unit(self) -> str:
        return "documents"

    def extend_tokenizer(self, tokenizer: Tokenizer) -> Tokenizer:
        return component("objective", "span_corruption")(n_sentinels=self.n_sentinels).extend_tokenizer(tokenizer)

    def build(self, tokenizer: Tokenizer):
        from .objective import HybridTasks

        return HybridTasks(self, tokenizer)


# --- curriculum ------------------------------------------------------------------------------------


class HybridConfig(CurriculumConfig):
    """The hybrid curriculum: foundation (all tasks), curriculum (levels unlocked epoch by epoch + general tasks), integration (all, shuffled).

    Phases: ``foundation`` (``epochs[0]`` epochs), then ``curriculum-1`` ... ``curriculum-k`` (one
    epoch each, k = ``epochs[1]``, progress p = i / (k - 1) for i = 0..k-1, as the source's
    (epoch - 3) / 3), then ``integration`` (``epochs[2]`` epochs). The curriculum phase is split
    per epoch because its task set changes every epoch. Orders: the described method reads the
    foundation in natural order and shuffles the curriculum; ``faithful_to_code`` reproduces the
    source's code (foundation shuffled, curriculum in document order because its de-duplication
    through a set loses the shuffle, general tasks = a quarter of the whole set). The learning-rate
    schedule is the run's (train.lr, train.schedule: one linear schedule with warmup over the run, as
    the source); set train.max_steps to the curriculum's length.
    """

    type: Literal["hybrid"] = "hybrid"
    epochs: tuple[int, int, int] = Field((3, 4, 3), description="epochs of foundation, curriculum, integration")
    faithful_to_code: bool = Field(False, description="orders and general share of the source's code instead of "
                                                      "its README (see the summary)")
    general_share: float = Field(0.25, ge=0, le=1, description="curriculum phase: share of the general tasks kept "
                                                               "(described method; the code: see faithful_to_code)")
    objective: HybridTasksConfig = Field(default_factory=HybridTasksConfig,
                                         description="the task set every phase draws from (phases set progress "
                                                     "and general_share)")
    regularizers: dict[str, list[str] | None] = Field(
        default_factory=dict, description="phase (foundation, curriculum, integration) -> regularizer types active "
                                          "in it (absent: all)")
    foundation_order: Literal["sequential", "shuffle"] | None = Field(
        None, description="override the foundation's order (None: sequential, or shuffle when faithful_to_code)")

    @field_validator("regularizers")
    @classmethod
    def _phase_names(cls, v):
        bad = set(v) - {"foundation", "curriculum", "integration"}
        if bad:
            raise ValueError(f"unknown phase(s) {sorted(bad)}; the phases are foundation, curriculum, integration")
        return v

    def schedule(self, max_steps: int) -> list[Phase]:
        f, c, i = self.epochs
        faithful = self.faithful_to_code
        base = self.objective
        phases = []
        if f:
            order = self.foundation_order or ("shuffle" if faithful else "sequential")
            phases.append(Phase("foundation", epochs=f, order=order, objective=base.model_copy(update={"progress": None}),
                                regularizers=self.regularizers.get("foundation")))
        share = "dataset_quarter" if faithful else self.general_share
        for k in range(c):
            p = k / max(c - 1, 1)
            obj = base.model_copy(update={"progress": p, "general_share": share})
            phases.append(Phase(f"curriculum-{k + 1}", epochs=1, order="sequential" if faithful else "shuffle",
                                objective=obj, regularizers=self.regularizers.get("curriculum")))
        if i:
            phases.append(Phase("integration", epochs=i, order="shuffle",
                                objective=base.model_copy(update={"progress": None}),
                                regularizers=self.regularizers.get("integration")))
        return phases


# --- regularizer -----------------------------------------------------------------------------------


class RepresentationConfig(RegularizerConfig):
    """Representational regularization (kinlm's design): with a VT input in the model, penalise collapse of encoder states.

    What the name promises, declared as kinlm's own design (the source's version has no effect): the
    VT input with a learnable w (init 0.1, clamped to [0.01, 0.5]) is the ``vt_embeddings`` wrapper
    (mode add, learnable, w_range) and this term adds anti-collapse = mean off-diagonal cosine of the
    encoder's final states (the model's last hidden states for a decoder-only model) over the real
    tokens of the batch (at most ``max_tokens``, evenly strided). ``source_noop``: the source's
    ablation, where only 0.01 alpha^2 (alpha = 0.1, a parameter nothing else reads) reaches the
    loss: a constant that changes no weight of the model (the term is alpha^2; set weight 0.01).
    """

    type: Literal["representation"] = "representation"
    weight: float = Field(0.1, description="multiplier of the anti-collapse term (kinlm's choice; the source has none)")
    anti_collapse: bool = Field(True, description="add the mean off-diagonal cosine of the final states")
    states: Literal["encoder", "decoder"] = Field("encoder", description="which final states: the encoder's "
                                                                           "(seq2seq) or the (decoder's) last hidden states")
    max_tokens: int = Field(512, ge=2, description="at most this many real tokens enter the cosine matrix")
    require_vt_input: bool = Field(True, description="fail unless the model is a vt_embeddings wrapper with a "
                                                     "learnable w (the design's VT input)")
    source_noop: bool = Field(False, description="the source's no-op instead: the term is alpha_init^2 (constant; "
                                                 "the source's weight is 0.01)")
    alpha_init: float = Field(0.1, description="source_noop: the alpha of the 0.01 alpha^2 term")

    def build(self):
        from .regularizer import representation_fn

        return representation_fn(self)


# --- analyzer --------------------------------------------------------------------------------------


class ProbeConfig(AnalyzerConfig):
    """Linear probe on frozen representations of a labelled jsonl file, without and with VT features at matched sizes.

    Features per text, from hidden layer ``layer`` (B, T, C) over real tokens: base = [mean_t h_t;
    std_t h_t] and VT = [mean_t h_t; rms_t (h_t - h_{t-1})] (both 2C: the same size, the same
    probe). A logistic regression is fitted on the first 1 - test_fraction of the rows (shuffled
    with ``seed``) and scored on the rest: accuracy and weighted F1 for each feature set.
    """

    type: Literal["probe"] = "probe"
    path: str = Field(..., description="jsonl file with one {text, label} object a line")
    text_field: str = Field("text", description="key of the text")
    label_field: str = Field("label", description="key of the label")
    layer: int = Field(-1, description="hidden-state index (transformers' convention; -1: the last)")
    max_tokens: int = Field(128, ge=2, description="texts are cut to this many tokens")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="share of the rows held out for scoring")
    max_rows: int | None = Field(2000, ge=2, description="use at most this many rows (None: all)")
    seed: int = Field(0, description="row shuffle seed")
    at: list[str] = Field(default_factory=lambda: ["end"], description='when a run calls it: "start", "end", "eval"')

    @field_validator("path")
    @classmethod
    def _jsonl(cls, v):
        if not v.endswith((".jsonl", ".jsonl.gz")):
            raise ValueError(f"expected a .jsonl file, got {v!r}")
        return v

    def analyze(self, model, tokenizer: Tokenizer, texts: list[str], out_dir: Path) -> dict:
        from .probe import run_probe

        return run_probe(self, model, tokenizer, out_dir)


__all__ = ["VTEmbeddingsConfig", "T5Config", "T5_PRESETS", "HybridTasksConfig", "HybridConfig",
           "RepresentationConfig", "ProbeConfig"]
