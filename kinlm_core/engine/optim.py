"""The optimizer and the learning-rate schedule, per phase.

Every phase trains with an AdamW over the parameters that train in it. Its settings are the spec's
``train`` settings overridden by the phase's ``optim`` dict. A phase that overrides lr, schedule or
warmup_steps runs its own schedule over its own steps; otherwise the run's schedule goes on
(step counted from the run's start, over train.max_steps).
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass

import torch

from ..spec import TrainConfig

DECAY_RULES = typing.get_args(TrainConfig.model_fields["decay"].annotation)  # the spec's choices, one list
OPTIM_KEYS = ("lr", "schedule", "warmup_steps", "min_lr_ratio", "weight_decay", "decay", "betas")
_OWN_SCHEDULE = {"lr", "schedule", "warmup_steps", "min_lr_ratio"}


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    schedule: str
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    decay: str
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
        if vals["decay"] not in DECAY_RULES:
            raise ValueError(f"decay {vals['decay']!r}: use one of {', '.join(DECAY_RULES)}")
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


# transformers.Trainer.get_decay_parameter_names: names with these never decay, nor LayerNorm modules' parameters
_TRANSFORMERS_NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def param_groups(model, weight_decay: float, decay: str = "matrices") -> list[dict]:
    """AdamW groups over the parameters that train. ``decay`` picks the decayed ones:

    - "matrices" (kinlm's rule): matrices only; never norms, biases or embeddings, nor the names a
      model lists in ``no_decay_param_names()``;
    - "all": every parameter (``AdamW(model.parameters(), weight_decay=...)``);
    - "transformers": transformers.Trainer's rule: all but parameters of nn.LayerNorm modules and
      names containing bias, layernorm, rmsnorm or a ``norm`` / ``_norm`` component.

    Under every rule, the names a model lists in ``decay_param_names()`` decay (a source that
    decays every parameter, e.g. DiffWrapper's alpha, beta, gamma)."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    ln = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters(recurse=False)}
    extra = set(model.no_decay_param_names()) if hasattr(model, "no_decay_param_names") else set()
    force = set(model.decay_param_names()) if hasattr(model, "decay_param_names") else set()
    decayed, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if decay == "all":
            exempt = False
        elif decay == "transformers":
            exempt = id(p) in ln or bool(_TRANSFORMERS_NO_DECAY.search(name.lower()))
        else:
            exempt = p.dim() < 2 or id(p) in emb or name in extra
        (no_decay if exempt and name not in force else decayed).append(p)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, s: OptimSettings, device) -> torch.optim.Optimizer:
    groups = [g for g in param_groups(model, s.weight_decay, s.decay) if g["params"]]
    if not groups:
        raise ValueError("no parameter trains in this phase (check the phase's trainable prefixes)")
    return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, fused=device.type == "cuda")
