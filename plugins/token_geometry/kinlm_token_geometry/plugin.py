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


@hookimpl
def kinlm_diagnostics():
    """The LLaMA-like presets in ``kinlm diagnose`` (attention: KV cache)."""

    def state(model, seq_len):  # the KV cache: 2 n_layer d_model numbers per token
        return 2 * model["n_layer"] * model["d_model"] * seq_len

    return [{"architecture": "llama_preln", "family": "attention", "about": "LLaMA-like, pre-LN",
             "model": {"type": "llama_like", "preset": "LLaMA-PreLN", "n_layer": 2, "n_head": 2, "d_model": 64,
                       "block_size": 256, "dropout": 0.0, "residual_init": "all", "decay": "matrices"},
             "state_numbers": state},
            {"architecture": "llama_postln", "family": "attention", "about": "LLaMA-like, post-LN",
             "model": {"type": "llama_like", "preset": "LLaMA-PostLN", "n_layer": 2, "n_head": 2, "d_model": 64,
                       "block_size": 256, "dropout": 0.0, "residual_init": "all", "decay": "matrices"},
             "state_numbers": state}]
