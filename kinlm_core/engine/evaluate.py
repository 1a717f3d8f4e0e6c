"""Evaluation: an objective's loss over the first batches of a split, with perplexity and bits per byte."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from ..api import bits_per_byte, perplexity


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, objective, data, split: str, unit: str, batch_size: int, max_batches: int | None, device,
             bpb: bool = True, autocast=nullcontext, seed: int = 0) -> dict:
    """Mean loss over the objective's targets in the first ``max_batches`` batches (None: all) of a
    split, in data order; collate randomness (e.g. span corruption) is seeded, so every evaluation of a
    run scores the same targets. ``bpb``: nats / ln 2 / bytes, where the bytes are those the targets
    cover (an objective reports them) or targets x the split's bytes per token (causal LM). An objective
    whose ``LossResult.metrics`` holds ``accuracy`` (the ``supervised`` objective: answer-token accuracy)
    gets ``accuracy``, its mean over the split's scored targets."""
    was_training = model.training
    model.eval()
    n_examples = len(data.examples(split, unit))
    n = n_examples if max_batches is None else min(n_examples, max_batches * batch_size)
    nats, targets, n_bytes = 0.0, 0, 0.0
    correct, judged = 0.0, 0  # an objective that reports `accuracy` per batch: weighted by its targets
    for i in range(0, n, batch_size):
        idx = np.arange(i, min(i + batch_size, n))
        batch = to_device(objective.collate(data.batch_examples(split, unit, idx), np.random.default_rng([seed, i])),
                          device)
        with autocast():
            r = objective.loss(model, batch)
        nats += float(r.nats)
        targets += int(r.targets)
        n_bytes += r.bytes if r.bytes is not None else r.targets * data.bytes_per_token[split]
        if "accuracy" in r.metrics:
            correct += float(r.metrics["accuracy"]) * int(r.targets)
            judged += int(r.targets)
    model.train(was_training)
    mean = nats / max(targets, 1)
    out = {"loss": mean, "ppl": perplexity(mean), "tokens": targets}
    if bpb:
        out["bpb"] = bits_per_byte(nats, n_bytes)
    if judged:
        out["accuracy"] = correct / judged
    return out
