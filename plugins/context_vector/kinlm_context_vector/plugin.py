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


@hookimpl
def kinlm_diagnostics():
    """The context-vector LM in ``kinlm diagnose``: a fixed state of d_context numbers, swept on MQAR's
    state-size curve."""
    return [{"architecture": "context_vector", "family": "fixed",
             "about": "one fixed-size context vector carried from token to token",
             "model": {"type": "context_vector", "d_embed": 64, "d_hidden": 160, "n_layer": 2, "d_context": 32,
                       "dropout": 0.0},
             "state_knob": "d_context", "state_sizes": {"cpu": [8, 16, 32, 64], "gpu": [16, 32, 64, 128, 256]},
             "state_numbers": lambda model, seq_len: model["d_context"]}]
