"""Hook implementations of the accel_penalty plugin (torch-free)."""

from kinlm_core import hookimpl


@hookimpl
def kinlm_register_regularizers():
    from .config import AccelPenaltyConfig

    return [AccelPenaltyConfig]


@hookimpl
def kinlm_register_models():
    from .config import DiffWrapperConfig

    return [DiffWrapperConfig]


@hookimpl
def kinlm_register_analyzers():
    from .config import TrajectoryConfig

    return [TrajectoryConfig]


@hookimpl
def kinlm_register_claims():
    from pathlib import Path

    return [Path(__file__).parent / "claims"]


@hookimpl
def kinlm_diagnostics():
    """The plugin's two methods on gpt in ``kinlm diagnose``: the acceleration penalty (a regularizer)
    and the difference wrapper (attention models: KV cache)."""
    gpt = {"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 64, "block_size": 256, "dropout": 0.0}
    return [{"architecture": "gpt_accel_penalty", "family": "attention", "about": "gpt + acceleration penalty",
             "model": gpt,
             "regularizers": [{"type": "accel_penalty", "weight": 0.0001, "layers": "first_middle_last"}],
             "state_numbers": lambda model, seq_len: 2 * model["n_layer"] * model["d_model"] * seq_len},
            {"architecture": "gpt_diffwrapper", "family": "attention", "about": "gpt in the difference wrapper",
             "model": {"type": "diff_wrapper", "inner": gpt, "decay": "mix"},
             "state_numbers": lambda m, seq_len: 2 * m["inner"]["n_layer"] * m["inner"]["d_model"] * seq_len}]
