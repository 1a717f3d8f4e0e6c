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
    """No claims: the source (nikitus20/llama-token-geometry) commits no results and claims no
    difference between normalisation placements (its README says how to read the plots), so the
    former token_geometry.preln_vs_postln was dropped (#30 item 6)."""
    return []
