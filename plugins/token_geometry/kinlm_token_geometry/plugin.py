"""Hook implementations of the token_geometry plugin (torch-free)."""

from kinlm_core import hookimpl


@hookimpl
def kinlm_register_models():
    from .config import LlamaLikeConfig

    return [LlamaLikeConfig]


@hookimpl
def kinlm_register_analyzers():
    from .config import TokenGeometryConfig

    return [TokenGeometryConfig]


@hookimpl
def kinlm_register_claims():
    from pathlib import Path

    return [Path(__file__).parent / "claims"]
