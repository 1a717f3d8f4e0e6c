"""A curriculum phase at run time: its objective, examples, data cursor, length, optimizer
settings and state.

The engine walks the phases in order. A phase ends after ``steps`` optimizer steps, after
``epochs`` passes over its examples, or when ``until(state, metrics)`` fires; the run ends at
``train.max_steps`` or when the last phase ends. Each phase keeps its own data cursor (sampler) and
state dict, both saved in every checkpoint.
"""

from __future__ import annotations

import math

from ..api import Phase
from ..data import BlockSampler
from .optim import OptimSettings

SAMPLER_SEED_STRIDE = 7919  # phase i samples with seed + i * stride (phase 0: the run's seed)


class PhaseRun:
    def __init__(self, index: int, phase: Phase, spec, data, objective, rank: int, world: int):
        tc = spec.train
        self.index, self.phase, self.objective = index, phase, objective
        self.objective_cfg = phase.objective if phase.objective is not None else spec.objective
        self.unit = self.objective_cfg.unit()
        self.n_examples = len(data.examples("train", self.unit))
        if self.n_examples == 0:
            raise ValueError(f"phase '{phase.name}': the train split has no {self.unit} examples")
        if phase.order not in ("shuffle", "sequential"):
            raise ValueError(f"phase '{phase.name}': order must be 'shuffle' or 'sequential', got {phase.order!r}")
        self.sampler = BlockSampler(self.n_examples, tc.batch_size, spec.seed + index * SAMPLER_SEED_STRIDE, rank, world,
                                    shuffle=phase.order == "shuffle")
        self.optim = OptimSettings.of(tc, phase.optim)
        self.length = phase.steps
        if self.length is None and phase.epochs is not None:
            per_step = tc.batch_size * tc.grad_accum * world
            self.length = max(1, math.ceil(phase.epochs * self.n_examples / per_step))
        self.state: dict = {}

    @property
    def name(self) -> str:
        return self.phase.name

    def schedule_position(self, step: int, start: int, max_steps: int) -> tuple[int, int]:
        """(step within the schedule, the schedule's length) for this phase's lr."""
        if self.optim.own_schedule:
            return step - start, self.length or max(1, max_steps - start)
        return step, max_steps

    def ended(self, steps_done: int, metrics: dict) -> bool:
        if self.length is not None and steps_done >= self.length:
            return True
        return bool(self.phase.until is not None and self.phase.until(self.state, metrics))
