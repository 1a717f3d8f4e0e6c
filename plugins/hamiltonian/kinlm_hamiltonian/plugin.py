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
