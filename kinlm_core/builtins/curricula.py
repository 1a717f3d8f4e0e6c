"""The built-in `phases` curriculum: an explicit list of phases."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kinlm_core.api import CurriculumConfig, Phase


class PhaseSpec(BaseModel):
    """One phase of a `phases` curriculum."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="shown in logs (train/phase)")
    steps: int | None = Field(None, gt=0, description="optimizer steps (None: until the end of training)")
    token_loss: float = Field(1.0, ge=0, description="weight of the next-token loss (0 = off)")
    trainable: list[str] | None = Field(None, description="parameter-name prefixes that train (None: all)")
    regularizers: list[str] | None = Field(None, description="regularizer types active (None: all)")


class PhasesConfig(CurriculumConfig):
    """Ordered training phases: steps, token-loss weight, trainable parameters, active regularizers."""

    type: Literal["phases"] = "phases"
    phases: list[PhaseSpec] = Field(..., min_length=1, description="the phases in order")

    def schedule(self, max_steps: int) -> list[Phase]:
        return [Phase(**p.model_dump()) for p in self.phases]
