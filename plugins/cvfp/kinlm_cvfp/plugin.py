"""Hook implementations of the cvfp plugin (torch-free)."""

from kinlm_core import hookimpl


@hookimpl
def kinlm_register_models():
    from .config import CvfpConfig

    return [CvfpConfig]


@hookimpl
def kinlm_register_curricula():
    from .config import TwoPhaseConfig

    return [TwoPhaseConfig]


@hookimpl
def kinlm_register_regularizers():
    from .config import DiversityConfig

    return [DiversityConfig]


@hookimpl
def kinlm_register_analyzers():
    from .config import (ConvergenceConfig, EffectiveRankConfig, GlobalAttractorConfig, IdentityCheckConfig,
                         ZeroSolutionConfig)

    return [EffectiveRankConfig, ConvergenceConfig, IdentityCheckConfig, GlobalAttractorConfig, ZeroSolutionConfig]


@hookimpl
def kinlm_register_claims():
    from pathlib import Path

    return [Path(__file__).parent / "claims"]
