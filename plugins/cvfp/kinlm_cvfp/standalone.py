"""Run the curriculum's phases outside the engine, on one process: for the benchmark and the tests.

``run_phase(phase, model, tokens)`` does what the engine does with a :class:`kinlm_core.Phase` that
owns its step: freeze what the phase does not train, build the phase's Adam optimizer, call the
step function with a :class:`kinlm_core.StepContext` made of plain callables, stop after ``steps``
or when ``until`` fires. It is not the engine: no checkpoints, no logging, no DDP.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from kinlm_core import StepContext


class Tokens:
    """Stand-in for the engine's prepared data: ``tokens(split)`` -> 1-D numpy array."""

    def __init__(self, train, validation=None):
        self._s = {"train": np.asarray(train), "validation": np.asarray(train if validation is None else validation)}

    def tokens(self, split: str):
        return self._s[split]


def make_context(model, optimizer, data, state: dict, grad_clip: float = 1.0, step: int = 0, phase_step: int = 0):
    def optimizer_step():
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def no_batches():
        raise RuntimeError("the standalone runner has no batches; cvfp's steps read data.tokens()")

    device = next(model.parameters()).device
    return StepContext(model=model, raw_model=model, optimizer=optimizer, data=data, objective=None, state=state,
                       step=step, phase_step=phase_step, device=device, autocast=nullcontext, rank=0, world=1,
                       grad_accum=1, next_batch=no_batches, backward=lambda loss, sync=True: loss.backward(),
                       optimizer_step=optimizer_step, all_reduce_mean=lambda t: t)


def apply_trainable(model, trainable) -> list:
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(trainable is None or any(name.startswith(t) for t in trainable))
        if p.requires_grad:
            params.append(p)
    return params


def run_phase(phase, model, data, max_steps: int | None = None, state: dict | None = None, grad_clip: float = 1.0,
              on_step=None):
    """Run one phase to its end. Returns (state, list of each step's scalars)."""
    params = apply_trainable(model, phase.trainable)
    optim = phase.optim or {}
    opt = torch.optim.AdamW(params, lr=optim.get("lr", 1e-3), weight_decay=optim.get("weight_decay", 0.0))
    state = {} if state is None else state
    history = []
    limit = phase.steps if max_steps is None else max_steps if phase.steps is None else min(phase.steps, max_steps)
    i = 0
    while limit is None or i < limit:
        m = phase.step(make_context(model, opt, data, state, grad_clip, step=i, phase_step=i))
        history.append(m)
        i += 1
        if on_step is not None:
            on_step(i, state, m)
        if phase.until is not None and phase.until(state, m):
            break
    return state, history
