"""kinlm: a lab for physics-inspired small language models.

The public API for plugins (importing it never imports torch):

    from kinlm_core import hookimpl, ModelConfig, ModelOutput, ...
"""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    BASES,
    KINDS,
    AnalyzerConfig,
    ComponentConfig,
    CurriculumConfig,
    DataSourceConfig,
    GeneratorConfig,
    ModelConfig,
    ModelOutput,
    Phase,
    RegularizerConfig,
    RunContext,
    Tokenizer,
    TokenizerConfig,
)
from .plugins import hookimpl  # noqa: E402


def load_run(run_dir, device: str = "auto"):
    """Load a run directory's spec, model (last checkpoint) and tokenizer: ``.model``,
    ``.tokenizer``, ``.spec``, ``.data``, ``.step``. Imports torch."""
    from .engine.load import load_run as _load

    return _load(run_dir, device)

__all__ = [
    "__version__", "hookimpl", "KINDS", "BASES", "ComponentConfig", "ModelConfig", "RegularizerConfig",
    "CurriculumConfig", "DataSourceConfig", "TokenizerConfig", "AnalyzerConfig", "GeneratorConfig",
    "ModelOutput", "Phase", "RunContext", "Tokenizer", "load_run",
]
