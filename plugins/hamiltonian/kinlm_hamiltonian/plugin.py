"""Hook implementations of the hamiltonian plugin (torch-free)."""

from kinlm_core import hookimpl


@hookimpl
def kinlm_register_models():
    from .config import HamiltonianConfig

    return [HamiltonianConfig]


@hookimpl
def kinlm_register_generators():
    from .config import FlowConfig, LeastActionConfig, SteerConfig

    return [SteerConfig, LeastActionConfig, FlowConfig]


@hookimpl
def kinlm_register_claims():
    from pathlib import Path

    return [Path(__file__).parent / "claims"]


@hookimpl
def kinlm_diagnostics():
    """The Hamiltonian transformer in ``kinlm diagnose`` (attention: its KV cache grows with the context)."""
    return [{"architecture": "hamiltonian", "family": "attention", "about": "Hamiltonian transformer",
             "model": {"type": "hamiltonian", "d_model": 64, "n_layer": 2, "n_head": 2, "block_size": 256,
                       "dropout": 0.0, "decay": "matrices", "pad_vocab_to_multiple": 1},
             "state_numbers": lambda model, seq_len: 2 * model["n_layer"] * model["d_model"] * seq_len}]
