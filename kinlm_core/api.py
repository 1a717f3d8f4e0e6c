"""The public API plugins build on: config base classes per component kind and the small
value types passed between components and the engine.

Nothing here imports torch. A component's config class lives in a torch-free module; its
``build``/``generate``/``analyze`` methods import the torch code they need when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

from pydantic import BaseModel, ConfigDict, Field

SPLITS = ("train", "validation", "test")

FIGURE_DPI = 80
"""Resolution of the PNG figures that analyzers write (TensorBoard shows them as they are)."""

REPORT_DPI = 120
"""Resolution of report figures (``kinlm compare -o``, docs/results.md)."""

ANALYZER_TEXTS = 8
"""How many blocks of the eval split a run hands its analyzers (and ``kinlm analyze`` by default)."""

PPL_CAP_NATS = 50.0
"""Perplexity is exp(min(loss, this)): a diverged loss reads as a huge finite number, not inf."""


def perplexity(loss_nats: float) -> float:
    """exp(loss) of a mean loss in nats per token, capped at exp(PPL_CAP_NATS)."""
    import math

    return math.exp(min(loss_nats, PPL_CAP_NATS))


def bits_per_byte(nats: float, n_bytes: float) -> float:
    """A loss summed in nats over targets that cover ``n_bytes`` UTF-8 bytes of text, in bits per byte
    (tokenizer-independent)."""
    import math

    return nats / (math.log(2) * max(n_bytes, 1e-9))


class ComponentConfig(BaseModel):
    """Base of every component config: strict (unknown fields are errors), finite floats only (inf
    and nan are refused, from a spec or an ``--opt``), validated on assignment, and chosen in a spec
    by its ``type`` literal, e.g. ``type: Literal["gpt"] = "gpt"``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)
    kind: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    """Capabilities (``kinlm_core.composition.CAPABILITIES`` or a model's own) this component needs of
    the model it acts on: a wrapper's inner model, else the spec's model. ``kinlm validate`` refuses a
    spec whose model lacks one (kinlm_core/composition.py)."""

    @classmethod
    def component_name(cls) -> str:
        return cls.model_fields["type"].default

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


# --- value types -------------------------------------------------------------------------------


BATCH_KEYS = {
    "input_ids": "(B, T) long: the model's input tokens",
    "labels": "(B, T') long: the targets aligned with the logits' positions (already shifted for a causal LM); "
              "-100 marks a position that is never scored (padding, unmasked tokens)",
    "attention_mask": "(B, T) long, optional: 1 for real tokens, 0 for padding (absent: no padding)",
    "document_ids": "(B, T) long, optional: which document of the row each input token belongs to "
                    "(0, 1, ...; an end-of-text token belongs to the document it ends)",
    "decoder_input_ids": "(B, T') long, seq2seq only: the decoder's input (labels shifted right)",
    "decoder_attention_mask": "(B, T') long, seq2seq only: 1 for real decoder tokens",
    "target_bytes": "() float, optional: UTF-8 bytes of text the scored labels cover (for bits per byte)",
}
"""What a batch may hold. A batch is a plain ``dict[str, Tensor]`` made by an objective's
``collate``; models, regularizers and step functions read the keys they need. The engine passes to a
model's ``forward`` exactly the batch keys that its signature names (besides ``labels`` and
``target_bytes``), so a decoder-only model that names only ``input_ids`` never sees a mask."""

IGNORE_INDEX = -100
"""Label value that is never scored (padding and positions outside the target)."""


@dataclass
class ModelOutput:
    """What every model's ``forward`` returns.

    logits: (B, T, V) logits; for a causal LM position t predicts token t+1 (the objective shifts
        the labels, never the model). For a seq2seq model, the decoder's logits (B, T', V).
    hidden_states: tuple of (B, T, C) tensors, one per layer in transformers' convention
        (index 0 = the embedding output, the last = after the final norm), or None when not
        requested. For a seq2seq model: the decoder's.
    encoder_hidden_states: seq2seq only, the encoder's per-layer states, same convention.
    aux_losses: named scalar losses the model adds itself (already weighted), logged under
        ``aux/<name>`` and added to the loss.
    metrics: named scalars that are logged (``metrics/<name>``) but never added to the loss.
    loss: set only by models that compute their own objective; an objective then uses it as the
        mean loss over its targets.
    """

    logits: Any
    hidden_states: tuple | None = None
    aux_losses: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    encoder_hidden_states: tuple | None = None
    loss: Any = None


@dataclass
class LossResult:
    """What an objective's ``loss`` returns for one batch.

    loss: mean loss over the batch's targets (the tensor the engine backpropagates).
    nats: summed loss over the targets, in nats (a detached scalar tensor or float).
    targets: number of scored targets (labels != -100).
    bytes: UTF-8 bytes of text those targets cover, or None when bits per byte is taken from the
        split's average bytes per token (a causal LM over every token of the text).
    output: the model's :class:`ModelOutput` (regularizers read its hidden states).
    metrics: the objective's own named scalars for this batch (e.g. a task mix), logged as
        ``metrics/<name>`` beside the model's ``output.metrics`` and never added to the loss.
    """

    loss: Any
    nats: Any
    targets: int
    bytes: float | None = None
    output: Any = None
    metrics: dict = field(default_factory=dict)


@dataclass
class Phase:
    """One curriculum phase: what trains, on which data, with which objective and optimizer, and
    when it ends. Every field has a default that means "as the spec's train/objective says".

    name: shown in logs (``train/phase``) and used as the prefix of a step function's scalars.
    steps: its length in optimizer steps (None: until ``until`` fires or training ends).
    epochs: its length in passes over the phase's training examples (an alternative to steps).
    until: ``until(state, metrics) -> bool`` ends the phase early after a step; it gets the phase's
        state dict and that step's scalars (e.g. a convergence rate).
    token_loss: weight of the objective's loss in the standard step (0 turns it off).
    trainable: parameter-name prefixes that train in this phase (None: all). Frozen parameters
        are left out of the phase's optimizer and of DDP's gradient reduction.
    regularizers: types of the spec's regularizers active in this phase (None: all).
    objective: an objective config for this phase (None: the spec's).
    order: "shuffle" (seeded permutation per epoch) or "sequential" (examples in data order).
    optim: optimizer overrides for this phase: any of lr, schedule, warmup_steps, min_lr_ratio,
        weight_decay, decay, betas. A phase that sets lr, schedule or warmup_steps runs its own schedule
        over its own steps; otherwise the run's schedule goes on. A phase that trains the same
        parameters with the same settings as the phase before keeps its optimizer (Adam's moments);
        any other phase starts a fresh AdamW.
    step: a step function ``step(ctx: StepContext) -> dict[str, float]`` that replaces the
        engine's standard step (forward, loss, backward, optimizer step) for this phase. Its
        scalars are logged under ``<name>/<key>`` at every step (whatever train.log_every says);
        ``loss`` is also logged as ``train/loss``.
    """

    name: str
    steps: int | None = None
    epochs: float | None = None
    until: Callable[[dict, dict], bool] | None = None
    token_loss: float = 1.0
    trainable: list[str] | None = None
    regularizers: list[str] | None = None
    objective: Any = None
    order: str = "shuffle"
    optim: dict | None = None
    step: Callable[["StepContext"], dict] | None = None


@dataclass
class StepContext:
    """What a phase's step function gets (one call = one optimizer step).

    model: call this for forward/backward (compiled when train.compile is set); raw_model: the
    module itself (parameters, submodules). A phase with its own step is never wrapped in DDP: under
    torchrun each rank computes its own gradients and ``optimizer_step()`` averages them over ranks,
    so a step function may call any submodule. optimizer: the phase's optimizer, its lr already set
    for this step. data: the prepared data (``tokens(split)``: the whole token stream; ``blocks(split)``:
    packed rows; ``documents(split)``: one token array per document; ``tokenizer``). objective:
    the phase's objective (``collate``, ``loss``). state: the phase's own dict, saved in every
    checkpoint and restored on resume (tensors, numbers, strings, lists, dicts). step: 0-based
    optimizer step about to be taken; phase_step: steps this phase has taken. rank, world: the
    process's rank and the number of ranks. next_batch(): the phase's next micro-batch on the
    device. backward(loss, sync=True): backward, skipping DDP's gradient sync when sync is False
    (gradient accumulation); under train.precision "fp16" it scales the loss by the GradScaler, so
    call it rather than loss.backward(). optimizer_step(): unscale, clip to train.grad_clip, step
    (under fp16 a step with inf/NaN gradients is skipped and the scale halved), zero the gradients;
    returns the gradient norm. all_reduce_mean(tensor): the mean over ranks.
    count_tokens(n): add n to the run's tokens seen, for a step that reads ``data`` itself (batches
    from next_batch() are counted already); n is this step's tokens over all ranks, the same on every
    rank.
    """

    model: Any
    raw_model: Any
    optimizer: Any
    data: Any
    objective: Any
    state: dict
    step: int
    phase_step: int
    device: Any
    autocast: Callable
    rank: int
    world: int
    grad_accum: int
    next_batch: Callable[[], dict]
    backward: Callable[..., None]
    optimizer_step: Callable[[], float]
    all_reduce_mean: Callable[[Any], Any]
    count_tokens: Callable[[int], None] = lambda n: None


class Stateful:
    """State that survives checkpoint and resume. Any objective, regularizer function, curriculum
    or model may define these two methods; the engine saves what ``train_state()`` returns in
    every checkpoint (tensors, numbers, strings, lists, dicts; no fixed shapes) and hands it to
    ``load_train_state`` on resume, on every rank. A model's parameters and buffers are saved
    anyway: this is for anything else."""

    def train_state(self) -> dict:  # pragma: no cover - protocol
        return {}

    def load_train_state(self, state: dict) -> None:  # pragma: no cover - protocol
        pass


@dataclass
class RunContext:
    """Handed to lifecycle hooks: the resolved spec, the run directory, and (after start) the
    live model, tokenizer and a ``log(dict, step)`` function that writes scalars to
    metrics.jsonl and TensorBoard."""

    spec: Any
    run_dir: Path
    model: Any = None
    tokenizer: Any = None
    log: Callable[[dict, int], None] | None = None
    is_main: bool = True


class Tokenizer:
    """Text <-> token ids. Subclasses set ``vocab_size`` and ``eos_id`` and implement
    ``encode``/``decode``. ``fingerprint`` identifies the trained vocabulary (used as a cache key).

    Special ids (None where the tokenizer has none): ``eos_id`` (end of text, appended after every
    document), ``pad_id`` (padding; objectives fall back to ``eos_id`` when None), ``bos_id``,
    ``sentinel_ids`` (T5-style ``<extra_id_i>``, added by objectives that need them).
    """

    vocab_size: int
    eos_id: int | None = None
    pad_id: int | None = None
    bos_id: int | None = None
    sentinel_ids: tuple = ()
    fingerprint: str = ""

    def encode(self, text: str) -> list[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def special_ids(self) -> dict:
        """{"eos": id, "pad": id, "bos": id, "sentinels": [...]} (None where absent)."""
        return {"eos": self.eos_id, "pad": self.pad_id, "bos": self.bos_id, "sentinels": list(self.sentinel_ids)}

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes each id decodes to (special ids: 0); used for bits per byte of target spans."""
        special = {i for i in (self.eos_id, self.pad_id, self.bos_id) if i is not None} | set(self.sentinel_ids)
        return [0 if i in special else len(self.decode([i]).encode("utf-8")) for i in range(self.vocab_size)]


# --- config bases per kind ---------------------------------------------------------------------


class ModelConfig(ComponentConfig):
    """Base for model configs. ``build(vocab_size)`` returns an ``nn.Module`` with

    - ``forward(input_ids, output_hidden_states=False, **keys) -> ModelOutput``: the engine passes
      every batch key (see ``BATCH_KEYS``) that the signature names, e.g. ``attention_mask``,
      ``document_ids`` or, for seq2seq, ``decoder_input_ids``;
    - an attribute ``block_size``: the longest context it accepts (generators crop to it), or
      None for a model with no context limit (a recurrent model: never cropped);
    - optionally ``bind_tokenizer(tokenizer)``: called after build on every rank with the run's
      tokenizer (special ids: ``eos_id``, ``pad_id``, ``sentinel_ids``);
    - optionally the decoding protocol ``decode(input_ids, state=None) -> (logits, state)``:
      with ``state=None`` it prefills the prompt (B, T) and returns its logits (B, T, V) and a state;
      then each call feeds the new tokens (B, 1) with the previous state. The sampler uses it when
      present (a KV cache, a recurrent state) and re-runs the cropped context otherwise;
    - optionally ``no_decay_param_names() -> set[str]`` to extend the engine's default rule
      (no weight decay on parameters with fewer than 2 dims and on embeddings);
    - optionally ``train_state()`` / ``load_train_state(state)`` (see :class:`Stateful`).
    """

    kind: ClassVar[str] = "model"
    provides: ClassVar[dict[str, str]] = {"hidden_states": "the per-layer hidden states of its forward"}
    """Capability -> what it is in this model (the docs' composition table says it). Every model returns
    hidden states; ``input_embeddings`` (``get_input_embeddings()``) and ``blocks`` (block lists) are
    declared by the models that have them (see ``kinlm_core.composition.CAPABILITIES``)."""
    lacks: ClassVar[dict[str, str]] = {}
    """Capability -> why this model cannot have it (added to the refusal and the docs table)."""

    def capabilities(self) -> set[str]:
        """The capabilities this configured model offers (default: the keys of ``provides``)."""
        return set(self.provides)

    def build(self, vocab_size: int):  # pragma: no cover - interface
        raise NotImplementedError


class ObjectiveConfig(ComponentConfig):
    """Base for objectives: what a training example is, how examples become batches, and the loss.

    ``unit()``: "blocks" (packed rows of block_size+1 tokens crossing document boundaries, the
    default) or "documents" (each example is one document, or a block_size+1 chunk of a longer one;
    boundaries kept, batches padded). ``extend_tokenizer(tokenizer)`` may return a tokenizer with
    added special tokens (e.g. sentinels); the model is built with its vocabulary. ``build(tokenizer)``
    returns an :class:`Objective`. ``bpb``: whether bits per byte of this objective's loss means
    something (``eval/bpb`` is omitted otherwise).
    """

    kind: ClassVar[str] = "objective"
    bpb: ClassVar[bool] = True

    def unit(self) -> str:
        return "blocks"

    def extend_tokenizer(self, tokenizer: Tokenizer) -> Tokenizer:
        return tokenizer

    def build(self, tokenizer: Tokenizer) -> "Objective":  # pragma: no cover - interface
        raise NotImplementedError


class Objective:
    """The runtime side of an objective (imports torch in its module).

    ``collate(examples, rng) -> batch``: a list of 1-D integer numpy arrays (rows or documents) and
    a seeded ``numpy.random.Generator`` (derived from the run's seed, the step and the rank, so a
    resumed run draws the same) -> a batch dict on the CPU (see ``BATCH_KEYS``).
    ``loss(model, batch, output_hidden_states=False) -> LossResult``.
    """

    def collate(self, examples: list, rng) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def loss(self, model, batch: dict, output_hidden_states: bool = False) -> LossResult:  # pragma: no cover
        raise NotImplementedError


class RegularizerConfig(ComponentConfig):
    """Base for regularizer configs. ``build()`` returns ``fn(output, batch, step) -> {name: loss}``:
    ``output`` is the :class:`ModelOutput` (hidden states included when ``needs_hidden_states``),
    ``batch`` the batch dict (``input_ids``, ``labels``, and ``attention_mask`` /
    ``document_ids`` where the objective provides them), ``step`` the 0-based optimizer step. The
    engine multiplies every returned term by ``weight``, adds it to the loss and logs it unweighted
    under ``reg/<name>``; a key that starts with ``metrics/`` (e.g. ``metrics/accel/layer_3``) is
    logged as it is and never added to the loss. The fn may define ``bind_tokenizer(tokenizer)`` and the
    :class:`Stateful` methods."""

    kind: ClassVar[str] = "regularizer"
    needs_hidden_states: ClassVar[bool] = True
    weight: float = Field(1.0, description="multiplier of every loss term this regularizer returns")

    def build(self):  # pragma: no cover - interface
        raise NotImplementedError


class CurriculumConfig(ComponentConfig):
    """Base for curriculum configs. ``schedule(max_steps)`` returns the ordered :class:`Phase` list.
    The engine walks it: a phase ends after its ``steps`` or ``epochs``, or when its ``until`` fires;
    the run ends at ``train.max_steps`` or when the last phase ends. A phase may bring its own
    objective, data order, optimizer settings, trainable parameters and step function."""

    kind: ClassVar[str] = "curriculum"
    ignores_regularizers: ClassVar[str] = ""
    """Non-empty when no phase applies the spec's regularizers: the reason, and ``kinlm validate``
    refuses a spec that names regularizers with this curriculum (they would never act)."""

    def schedule(self, max_steps: int) -> list[Phase]:  # pragma: no cover - interface
        raise NotImplementedError


class DataSourceConfig(ComponentConfig):
    """Base for data sources. ``documents(split)`` yields text documents of a split."""

    kind: ClassVar[str] = "data_source"

    def documents(self, split: str) -> Iterator[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Cache key of the data (default: the config itself). Override when files change."""
        return self.model_dump_json()

    def check_available(self) -> None:
        """Raise :class:`SpecError`-style ``ValueError`` early (before any model is built) when the
        data cannot be reached. Default: nothing to check."""


class TokenizerConfig(ComponentConfig):
    """Base for tokenizers. ``build(train_texts, cache_dir)`` returns a :class:`Tokenizer`;
    ``train_texts`` is a zero-argument callable yielding training documents (only tokenizers
    that learn a vocabulary call it)."""

    kind: ClassVar[str] = "tokenizer"

    def build(self, train_texts: Callable[[], Iterator[str]], cache_dir: Path) -> Tokenizer:  # pragma: no cover
        raise NotImplementedError


class AnalyzerConfig(ComponentConfig):
    """Base for analyzers. ``analyze(model, tokenizer, texts, out_dir)`` -> scalar metrics dict,
    figures written as PNG into ``out_dir``.

    Inside a run, ``out_dir`` is ``RUN/analysis/<type>/step_NNNNNNN/`` (a stable layout: an analyzer
    may read its own earlier folders, e.g. for before/after figures); the engine writes the returned
    dict to ``metrics.json`` there and logs its scalars and PNGs. ``kinlm analyze`` on several models
    calls ``analyze_many`` and writes what it returns to ``OUT/metrics.json``."""

    kind: ClassVar[str] = "analyzer"
    at: list[str] = Field(default_factory=lambda: ["end"], description='when a run calls it: "start", "end", "eval"')

    def analyze(self, model, tokenizer, texts: list[str], out_dir: Path) -> dict:  # pragma: no cover
        raise NotImplementedError

    def analyze_many(self, models: dict, texts: list[str], out_dir: Path) -> dict:
        """Several models at once: ``models`` maps a name to ``(model, tokenizer)``. The default runs
        ``analyze`` on each into ``out_dir/<name>/`` and returns ``{"<name>/<metric>": value}``;
        analyzers that compare models (difference plots) override it."""
        out = {}
        for name, (model, tokenizer) in models.items():
            sub = Path(out_dir) / name
            sub.mkdir(parents=True, exist_ok=True)
            out.update({f"{name}/{k}": v for k, v in self.analyze(model, tokenizer, texts, sub).items()})
        return out


class GeneratorConfig(ComponentConfig):
    """Base for generators. ``generate(model, tokenizer, prompt)`` -> continuation text.
    Fields shared by every generator are the sampling options below; ``ignored_options`` names
    those a generator does not use (a deterministic planner ignores the sampling ones), so that
    sample headers list only the options that shaped the text."""

    kind: ClassVar[str] = "generator"
    ignored_options: ClassVar[tuple[str, ...]] = ()
    prompt: str = Field("", description="text to continue (a spec's generate entries set it)")
    max_new_tokens: int = Field(100, ge=1, description="number of tokens to generate")
    temperature: float = Field(1.0, ge=0.0, description="softmax temperature; 0 = greedy")
    top_k: int | None = Field(None, ge=1, description="keep only the k most likely tokens")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus sampling threshold")
    seed: int | None = Field(None, description="sampling seed (None: the run's seed)")
    stop_at_eos: bool = Field(True, description="end a continuation at the end-of-text token, as transformers' "
                              "generate does; false: go on past it, showing each boundary as <|endoftext|>")

    def generate(self, model, tokenizer: Tokenizer, prompt: str | None = None) -> str:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Kind:
    """One component kind: its config base, its registration hook and its place in a spec.
    ``spec``: "one" (required field), "optional", "list" or "default:<name>" (one, defaulting to
    that component); ``field``: the spec key ("" for kinds a spec does not name directly)."""

    name: str
    base: type
    hook: str
    field: str
    spec: str
    help: str


COMPONENT_KINDS = (
    Kind("model", ModelConfig, "kinlm_register_models", "model", "one", "the network"),
    Kind("objective", ObjectiveConfig, "kinlm_register_objectives", "objective", "default:causal_lm",
         "what an example is, how batches are made, the loss"),
    Kind("regularizer", RegularizerConfig, "kinlm_register_regularizers", "regularizers", "list",
         "extra loss terms"),
    Kind("curriculum", CurriculumConfig, "kinlm_register_curricula", "curriculum", "optional",
         "training phases (None: one phase)"),
    Kind("data_source", DataSourceConfig, "kinlm_register_data_sources", "data", "one",
         "where the documents come from"),
    Kind("tokenizer", TokenizerConfig, "kinlm_register_tokenizers", "tokenizer", "default:byte", "text <-> ids"),
    Kind("analyzer", AnalyzerConfig, "kinlm_register_analyzers", "analyzers", "list",
         "analyses run during or after training"),
    Kind("generator", GeneratorConfig, "kinlm_register_generators", "generate", "list",
         "samples written at each eval"),
)
"""Every component kind, described once: plugins.py, spec.py, the CLI and the docs test read it."""



@dataclass(frozen=True)
class OptionalMethod:
    """A method (or attribute) the engine or the CLI uses when a component defines it.

    ``on``: what defines it ("model": the built ``nn.Module``; "objective": the runtime
    :class:`Objective`; "regularizer fn": what ``RegularizerConfig.build()`` returns; "generator" and
    "analyzer": the config); ``signature``; ``used_by``: who calls it and when; ``default``: what
    happens when it is absent."""

    on: str
    name: str
    signature: str
    used_by: str
    default: str


OPTIONAL_METHODS = (
    OptionalMethod("model", "bind_tokenizer", "bind_tokenizer(tokenizer) -> None",
                   "the engine, after build, on every rank; load_run too", "the model never sees special ids"),
    OptionalMethod("model", "decode", "decode(input_ids, state=None) -> (logits, state)",
                   "the sampler (kinlm_core.sampling): prefill with state=None, then one call per new token",
                   "the sampler re-runs the cropped context each token"),
    OptionalMethod("model", "decode_step",
                   "decode_step(input_ids (B, 1), pos (0-dim long tensor), state) -> logits (B, V)",
                   "the sampler: static decoding after decode's prefill, writing the state in place at pos (fixed "
                   "shapes, no host read: compilable); needs decode and an int block_size",
                   "one decode call per new token"),
    OptionalMethod("model", "no_decay_param_names", "no_decay_param_names() -> set[str]",
                   "the optimizer: parameter names exempt from weight decay under train.decay \"matrices\", "
                   "besides its rule", "decay on matrices only, never on norms, biases or embeddings"),
    OptionalMethod("model", "decay_param_names", "decay_param_names() -> set[str]",
                   "the optimizer: parameter names decayed although train.decay's rule exempts them (a model "
                   "whose source decays every parameter)", "train.decay's rule"),
    OptionalMethod("model", "train_state", "train_state() -> dict; load_train_state(state) -> None",
                   "checkpoints (saved with every checkpoint, restored on resume, on every rank)",
                   "only parameters and buffers are saved"),
    OptionalMethod("model", "forward_keys", "forward_keys: frozenset[str] (an attribute)",
                   "the engine (objectives.model_inputs): the batch keys a forward(**batch) takes (a "
                   "kinlm_core.ModelWrapper declares its inner model's)", "the names in forward's signature"),
    OptionalMethod("model", "embedding_param_names", "embedding_param_names() -> set[str]",
                   "parameter counts (`kinlm params`, non-embedding counts for matching): embeddings kept as a "
                   "bare nn.Parameter", "the weights of nn.Embedding modules"),
    OptionalMethod("model", "get_input_embeddings", "get_input_embeddings() -> nn.Module",
                   "wrappers that act on the input embedding (vt_embeddings; transformers' convention): the module "
                   "that maps token ids (B, T) to the input vectors (B, T, C), called in forward; with a `weight` "
                   "(V, C) or an `embedding_dim`. Declared by the config's `provides[\"input_embeddings\"]`",
                   "`kinlm validate` refuses a component that requires input_embeddings"),
    OptionalMethod("model", "set_input_embeddings", "set_input_embeddings(module) -> None",
                   "code that swaps the token table (transformers' convention; the pair of get_input_embeddings)",
                   "the table cannot be swapped"),
    OptionalMethod("model", "block_lists", "block_lists() -> dict[str, nn.ModuleList]",
                   "diff_wrapper: the module lists whose outputs are the per-layer states (B, T, C) over the whole "
                   "sequence (path -> list), where a block list named blocks/layers/h is not the right one",
                   "diff_wrapper looks for ModuleLists named blocks, layers, layer, block or h"),
    OptionalMethod("model", "hf_export", "hf_export(tokenizer) -> kinlm_core.HFExport",
                   "the run's final/ and `kinlm export` (kinlm_core/engine/export.py): a transformers custom-code "
                   "folder (config.json with auto_map, the export's configuration/modeling files, model.safetensors) "
                   "that transformers loads with trust_remote_code=True, without kinlm",
                   "gpt and the transformers model map onto transformers classes; any other model is saved as "
                   "safetensors + spec.json, which only kinlm loads"),
    OptionalMethod("objective", "bind_data", "bind_data(data) -> None",
                   "the engine, once after build, with the prepared data (documents(split), tokens(split), tokenizer)",
                   "the objective sees only the examples collate gets"),
    OptionalMethod("objective", "train_state", "train_state() -> dict; load_train_state(state) -> None",
                   "checkpoints, as for a model", "no state saved"),
    OptionalMethod("regularizer fn", "bind_tokenizer", "bind_tokenizer(tokenizer) -> None",
                   "the engine, after build, on every rank", "no special ids"),
    OptionalMethod("regularizer fn", "train_state", "train_state() -> dict; load_train_state(state) -> None",
                   "checkpoints, as for a model", "no state saved"),
    OptionalMethod("generator", "generate_many", "generate_many(model, tokenizer, prompt=None) -> list[str]",
                   "`kinlm generate` (--opt num_samples=N: N samples in one batch)", "one generate() call"),
    OptionalMethod("analyzer", "analyze_many", "analyze_many(models, texts, out_dir) -> dict",
                   "`kinlm analyze` with several runs or models", "analyze() on each model into out_dir/<name>/"),
)
"""Every optional method the engine and the CLI look for, declared once (docs/hooks.md lists them;
tests/test_hooks.py checks that the core looks for no other)."""

KINDS = tuple(k.name for k in COMPONENT_KINDS)
BASES = {k.name: k.base for k in COMPONENT_KINDS}
