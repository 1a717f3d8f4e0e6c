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

KINDS = ("model", "regularizer", "curriculum", "data_source", "tokenizer", "analyzer", "generator")
"""Component kinds, in the order hooks and listings use."""

SPLITS = ("train", "validation", "test")


class ComponentConfig(BaseModel):
    """Base of every component config: strict (unknown fields are errors), validated on
    assignment, and chosen in a spec by its ``type`` literal, e.g.
    ``type: Literal["gpt"] = "gpt"``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    kind: ClassVar[str] = ""

    @classmethod
    def component_name(cls) -> str:
        return cls.model_fields["type"].default

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


# --- value types -------------------------------------------------------------------------------


@dataclass
class ModelOutput:
    """What every model's ``forward`` returns.

    logits: (B, T, V) next-token logits.
    hidden_states: tuple of (B, T, C) tensors, one per layer in transformers' convention
        (index 0 = the embedding output, the last = after the final norm), or None when not
        requested.
    aux_losses: named scalar losses the model adds itself (already weighted), logged under
        ``aux/<name>``.
    loss: set only by models that compute their own objective (e.g. seq2seq); otherwise the
        engine takes cross-entropy of ``logits`` against the batch's labels.
    """

    logits: Any
    hidden_states: tuple | None = None
    aux_losses: dict = field(default_factory=dict)
    loss: Any = None


@dataclass
class Phase:
    """One curriculum phase. ``steps``: its length in optimizer steps (None = until the end).
    ``token_loss``: weight of the next-token loss (0 turns it off). ``trainable``: parameter-name
    prefixes that train in this phase (None = all). ``regularizers``: names of the spec's
    regularizers active in this phase (None = all)."""

    name: str
    steps: int | None = None
    token_loss: float = 1.0
    trainable: list[str] | None = None
    regularizers: list[str] | None = None


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
    ``encode``/``decode``. ``fingerprint`` identifies the trained vocabulary (used as a cache key)."""

    vocab_size: int
    eos_id: int | None = None
    fingerprint: str = ""

    def encode(self, text: str) -> list[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


# --- config bases per kind ---------------------------------------------------------------------


class ModelConfig(ComponentConfig):
    """Base for model configs. ``build(vocab_size)`` returns an ``nn.Module`` with

    - ``forward(input_ids, output_hidden_states=False) -> ModelOutput``; ``input_ids`` is a
      (B, T) long tensor with T <= ``block_size``;
    - an int attribute ``block_size`` (longest context it accepts; generators crop to it);
    - optionally ``no_decay_param_names() -> set[str]`` to extend the engine's default rule
      (no weight decay on parameters with fewer than 2 dims and on embeddings).
    """

    kind: ClassVar[str] = "model"

    def build(self, vocab_size: int):  # pragma: no cover - interface
        raise NotImplementedError


class RegularizerConfig(ComponentConfig):
    """Base for regularizer configs. ``build()`` returns ``fn(output, batch, step) -> {name: loss}``."""

    kind: ClassVar[str] = "regularizer"
    needs_hidden_states: ClassVar[bool] = True
    weight: float = Field(1.0, description="multiplier of every loss term this regularizer returns")

    def build(self):  # pragma: no cover - interface
        raise NotImplementedError


class CurriculumConfig(ComponentConfig):
    """Base for curriculum configs. ``schedule(max_steps)`` returns the ordered phases."""

    kind: ClassVar[str] = "curriculum"

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
    figures written as PNG into ``out_dir``."""

    kind: ClassVar[str] = "analyzer"
    at: list[str] = Field(default_factory=lambda: ["end"], description='when a run calls it: "start", "end", "eval"')

    def analyze(self, model, tokenizer, texts: list[str], out_dir: Path) -> dict:  # pragma: no cover
        raise NotImplementedError


class GeneratorConfig(ComponentConfig):
    """Base for generators. ``generate(model, tokenizer, prompt)`` -> continuation text.
    Fields shared by every generator are the sampling options below."""

    kind: ClassVar[str] = "generator"
    prompt: str = Field("", description="text to continue (a spec's generate entries set it)")
    max_new_tokens: int = Field(100, ge=1, description="number of tokens to generate")
    temperature: float = Field(1.0, ge=0.0, description="softmax temperature; 0 = greedy")
    top_k: int | None = Field(None, ge=1, description="keep only the k most likely tokens")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus sampling threshold")
    seed: int | None = Field(None, description="sampling seed (None: the run's seed)")

    def generate(self, model, tokenizer: Tokenizer, prompt: str | None = None) -> str:  # pragma: no cover
        raise NotImplementedError


BASES = {
    "model": ModelConfig,
    "regularizer": RegularizerConfig,
    "curriculum": CurriculumConfig,
    "data_source": DataSourceConfig,
    "tokenizer": TokenizerConfig,
    "analyzer": AnalyzerConfig,
    "generator": GeneratorConfig,
}
