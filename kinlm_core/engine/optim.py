"""The optimizer and the learning-rate schedule, per phase.

Every phase trains with an AdamW over the parameters that train in it. Its settings are the spec's
``train`` settings overridden by the phase's ``optim`` dict. A phase that overrides lr, schedule or
warmup_steps runs its own schedule over its own steps; otherwise the run's schedule goes on
(step counted from the run's start, over train.max_steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

OPTIM_KEYS = ("lr", "schedule", "warmup_steps", "min_lr_ratio", "weight_decay", "betas")
_OWN_SCHEDULE = {"lr", "schedule", "warmup_steps", "min_lr_ratio"}


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    schedule: str
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    betas: tuple
    own_schedule: bool  # the phase's own schedule over its own steps

    @classmethod
    def of(cls, train, overrides: dict | None) -> "OptimSettings":
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(OPTIM_KEYS)
        if unknown:
            raise ValueError(f"unknown phase optimizer setting(s) {sorted(unknown)}; use any of {', '.join(OPTIM_KEYS)}")
        vals = {k: overrides.get(k, getattr(train, k)) for k in OPTIM_KEYS}
        vals["betas"] = tuple(vals["betas"])
        return cls(**vals, own_schedule=bool(_OWN_SCHEDULE & set(overrides)))


def lr_at(step: int, s, total_steps: int) -> float:
    """Learning rate at 0-based step of a schedule ``total_steps`` long: linear warmup, then
    cosine, linear or constant down to lr * min_lr_ratio."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return s.lr
    span = max(1, total_steps - s.warmup_steps)
    frac = min(1.0, (step - s.warmup_steps) / span)
    floor = s.lr * s.min_lr_ratio
    if s.schedule == "linear":
        return floor + (s.lr - floor) * (1 - frac)
    return floor + 0.5 * (s.lr - floor) * (1 + math.cos(math.pi * frac))


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups over the parameters that train: decay on matrices only; never on norms, biases
    or embeddings (nor on the names a model lists in ``no_decay_param_names()``), except the names a
    model lists in ``decay_param_names()`` (a source that decays every parameter, e.g. DiffWrapper's)."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    extra = set(model.no_decay_param_names()) if hasattr(model, "no_decay_param_names") else set()
    force = set(model.decay_param_names()) if hasattr(model, "decay_param_names") else set()
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        exempt = (p.dim() < 2 or id(p) in emb or name in extra) and name not in force
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, s: OptimSettings, device) -> torch.optim.Optimizer:
    groups = [g for g in param_groups(model, s.weight_decay) if g["params"]]
    if not groups:
        raise ValueError("no parameter trains in this phase (check the phase's trainable prefixes)")
    return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, fused=device.type == "cuda")
