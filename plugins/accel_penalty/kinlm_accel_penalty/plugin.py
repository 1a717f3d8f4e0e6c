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
