"""Hook implementations of the vt_t5 plugin (torch-free)."""

from kinlm_core import hookimpl


@hookimpl
def kinlm_register_models():
    from .config import T5Config, VTEmbeddingsConfig

    return [VTEmbeddingsConfig, T5Config]


@hookimpl
def kinlm_register_objectives():
    from .config import HybridTasksConfig

    return [HybridTasksConfig]


@hookimpl
def kinlm_register_curricula():
    from .config import HybridConfig

    return [HybridConfig]


@hookimpl
def kinlm_register_regularizers():
    from .config import RepresentationConfig

    return [RepresentationConfig]


@hookimpl
def kinlm_register_analyzers():
    from .config import ProbeConfig

    return [ProbeConfig]


@hookimpl
def kinlm_step_end(run, step, metrics):
    """After every optimizer step (every rank): a learnable VT weight w goes back into its w_range.
    Reads no ``metrics`` (device tensors between logging steps), so it adds no host sync to the step."""
    from .vt import clamp_all

    if run.model is not None:
        clamp_all(run.model)


@hookimpl
def kinlm_register_claims():
    from pathlib import Path

    return [Path(__file__).parent / "claims"]


@hookimpl
def kinlm_diagnostics():
    """GPT with VT embeddings in ``kinlm diagnose`` (attention: KV cache)."""
    return [{"architecture": "gpt_vt", "family": "attention", "about": "gpt with VT embeddings (add, w 0.2)",
             "model": {"type": "vt_embeddings", "mode": "add", "w": 0.2,
                       "inner": {"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 64, "block_size": 256,
                                 "dropout": 0.0}},
             "state_numbers": lambda m, seq_len: 2 * m["inner"]["n_layer"] * m["inner"]["d_model"] * seq_len}]
