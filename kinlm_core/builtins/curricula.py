"""The built-in `phases` curriculum: an explicit list of phases, written in the spec."""

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kinlm_core.api import CurriculumConfig, Phase
from kinlm_core.nested import NestedConfig


class PhaseOptim(BaseModel):
    """Optimizer settings of one phase (unset: the spec's train settings)."""

    model_config = ConfigDict(extra="forbid")
    lr: Optional[float] = Field(None, gt=0, description="peak learning rate; setting it starts the phase's own schedule")
    schedule: Optional[Literal["cosine", "constant", "linear"]] = Field(None, description="the phase's own schedule")
    warmup_steps: Optional[int] = Field(None, ge=0, description="warmup of the phase's own schedule")
    min_lr_ratio: Optional[float] = Field(None, ge=0, le=1, description="final lr of the decay, as a fraction of lr")
    weight_decay: Optional[float] = Field(None, ge=0, description="AdamW weight decay (0: Adam)")
    betas: Optional[tuple[float, float]] = Field(None, description="AdamW betas")


PhaseObjective = NestedConfig("objective")


class PhaseSpec(BaseModel):
    """One phase of a `phases` curriculum."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="shown in logs (train/phase)")
    steps: Optional[int] = Field(None, gt=0, description="optimizer steps (None: until the end of training)")
    epochs: Optional[float] = Field(None, gt=0, description="length in passes over the phase's examples (instead of steps)")
    token_loss: float = Field(1.0, ge=0, description="weight of the objective's loss (0 = off)")
    trainable: Optional[list[str]] = Field(None, description="parameter-name prefixes that train (None: all)")
    regularizers: Optional[list[str]] = Field(None, description="regularizer types active (None: all)")
    order: Literal["shuffle", "sequential"] = Field("shuffle", description="example order within the phase")
    optim: Optional[PhaseOptim] = Field(None, description="optimizer settings of this phase")
    objective: Optional[PhaseObjective] = Field(
        None, description='an objective for this phase, e.g. {"type": "span_corruption"} (None: the spec\'s)')

    @model_validator(mode="after")
    def _one_length(self):
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give a phase steps or epochs, not both")
        return self


class PhasesConfig(CurriculumConfig):
    """Ordered training phases: length, objective, data order, optimizer, trainable parameters, regularizers."""

    type: Literal["phases"] = "phases"
    phases: list[PhaseSpec] = Field(..., min_length=1, description="the phases in order")

    def schedule(self, max_steps: int) -> list[Phase]:
        out = []
        for p in self.phases:
            d = p.model_dump(exclude={"optim", "objective"})
            optim = p.optim.model_dump(exclude_none=True) if p.optim else None
            out.append(Phase(**d, optim=optim, objective=p.objective))
        return out
