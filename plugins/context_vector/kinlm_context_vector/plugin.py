"""Hook implementations of the context_vector plugin (torch-free)."""

from kinlm_core import hookimpl


@hookimpl
def kinlm_register_models():
    from .config import ContextVectorConfig

    return [ContextVectorConfig]


@hookimpl
def kinlm_register_claims():
    from pathlib import Path

    return [Path(__file__).parent / "claims"]
