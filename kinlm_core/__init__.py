"""kinlm: a lab for physics-inspired small language models.

The public API for plugins (importing it never imports torch):

    from kinlm_core import hookimpl, ModelConfig, ModelOutput, ...

Names are resolved on first use (PEP 562 module ``__getattr__``), so ``import kinlm_core`` and
``kinlm --help`` do not pay for pydantic or pluggy; ``from kinlm_core import X`` works as usual.
"""

__version__ = "0.1.0"

# name -> submodule that defines it (imported on first access)
_LAZY = {
    **{name: ".api" for name in (
        "BASES", "BATCH_KEYS", "COMPONENT_KINDS", "IGNORE_INDEX", "KINDS", "LossResult", "Objective",
        "ObjectiveConfig", "Stateful", "StepContext", "AnalyzerConfig", "ComponentConfig", "CurriculumConfig",
        "DataSourceConfig", "GeneratorConfig", "ModelConfig", "ModelOutput", "Phase", "RegularizerConfig",
        "RunContext", "Tokenizer", "TokenizerConfig", "OPTIONAL_METHODS", "FIGURE_DPI", "REPORT_DPI",
        "ANALYZER_TEXTS", "PPL_CAP_NATS", "perplexity", "bits_per_byte")},
    "hookimpl": ".plugins",
    **{name: ".errors" for name in ("SpecError", "RunError", "CheckpointError", "RegistryError", "DataError")},
    "NestedConfig": ".nested", "validate_nested": ".nested",  # torch-free
    "CAPABILITIES": ".composition", "BLOCK_LIST_NAMES": ".composition",  # torch-free
    "ModelWrapper": ".wrapper",  # imports torch
    "HFExport": ".hfexport",  # torch-free
    "GPT": ".builtins.gpt", "gpt_hf_export": ".builtins.gpt",  # import torch
    "available_memory": ".engine.batchsize",  # imports torch
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def load_spec(path, overrides=(), check_requires: bool = True):
    """Read, override (``["train.max_steps=10", ...]``) and validate a spec file; raises
    ``kinlm_core.spec.SpecError`` listing every problem."""
    from .spec import load_spec as _load

    return _load(path, overrides, check_requires=check_requires)


def train(spec, run_dir, resume: bool = False, progress=None, log=None) -> dict:
    """Run a validated spec into ``run_dir`` (what `kinlm run` does); returns the final metrics. Progress
    lines go to ``log(str)``, by default the ``kinlm.run`` logger (INFO)."""
    from .engine.train import run as _run

    return _run(spec, run_dir, resume=resume, progress=progress, log=log)


def component(kind: str, name: str):
    """The config class registered for a component, e.g. ``component("model", "gpt")``."""
    from .plugins import get_manager

    return get_manager().get(kind, name)


def load_run(run_dir, device: str = "auto"):
    """Load a run directory's spec, model (last checkpoint) and tokenizer: ``.model``,
    ``.tokenizer``, ``.spec``, ``.data``, ``.step``. Imports torch."""
    from .engine.load import load_run as _load

    return _load(run_dir, device)


def load_pretrained(folder, device: str = "auto", special_tokens: bool = True):
    """``(model, tokenizer)`` from a transformers model folder on disk (no network): a causal LM or an
    encoder (AutoModel); the model returns :class:`ModelOutput` with hidden states in kinlm's
    convention. ``special_tokens``: feed the tokenizer's special tokens (e.g. [CLS] ... [SEP]) the way
    the model expects. Imports torch."""
    from .engine.load import load_hf_model

    return load_hf_model(folder, device, special_tokens=special_tokens)


__all__ = [
    "__version__", "HFExport", "GPT", "gpt_hf_export", "hookimpl", "KINDS", "BASES", "ComponentConfig", "ModelConfig", "RegularizerConfig",
    "CurriculumConfig", "DataSourceConfig", "TokenizerConfig", "AnalyzerConfig", "GeneratorConfig",
    "ModelOutput", "Phase", "RunContext", "Tokenizer", "BATCH_KEYS", "COMPONENT_KINDS", "IGNORE_INDEX",
    "LossResult", "Objective", "ObjectiveConfig", "Stateful", "StepContext", "load_run", "load_pretrained",
    "load_spec", "train", "component", "OPTIONAL_METHODS", "FIGURE_DPI", "REPORT_DPI", "ANALYZER_TEXTS",
    "PPL_CAP_NATS", "perplexity", "bits_per_byte", "SpecError", "RunError", "CheckpointError", "RegistryError",
    "DataError", "NestedConfig", "validate_nested", "ModelWrapper", "CAPABILITIES", "BLOCK_LIST_NAMES",
    "HFExport", "available_memory",
]
