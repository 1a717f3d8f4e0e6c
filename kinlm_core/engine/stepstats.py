"""A training step's scalars without host syncs.

The standard step keeps its loss, logged terms and gradient norm as 0-dim tensors on the device;
reading one into Python (``float``, ``.item()``) makes the host wait for the device, which on a GPU
leaves it idle between steps. So the engine reads them only at logging steps, all at once
(:func:`to_host`, one transfer per device), and watches for a non-finite loss on the device
(:class:`NonFiniteWatch`), reading that flag at the steps where it logs, evaluates or saves a
checkpoint: a checkpoint is never written after a non-finite loss.
"""

from __future__ import annotations

import torch


def to_host(metrics: dict) -> dict:
    """``metrics`` with every tensor value replaced by a Python float (one device-to-host copy per
    device, not one per value); other values as they are."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    if not keys:
        return metrics
    out = dict(metrics)
    by_device: dict = {}
    for k in keys:
        by_device.setdefault(metrics[k].device, []).append(k)
    for ks in by_device.values():
        vals = torch.stack([metrics[k].detach().reshape(()).to(torch.float64) for k in ks]).tolist()
        out.update(zip(ks, vals))
    return out


class NonFiniteWatch:
    """The first step whose loss was not finite, recorded on the loss's device without a host sync;
    :meth:`read` (one sync) returns ``(step, loss)`` for it, or None."""

    def __init__(self):
        self.first = self.value = None

    def update(self, step: int, loss) -> None:
        f64 = torch.float64
        loss = loss.detach().to(f64) if torch.is_tensor(loss) else torch.tensor(float(loss), dtype=f64)
        if self.first is None:
            self.first = torch.zeros((), dtype=torch.float64, device=loss.device)
            self.value = torch.zeros((), dtype=torch.float64, device=loss.device)
        elif self.first.device != loss.device:  # a phase whose step reports its loss elsewhere
            loss = loss.to(self.first.device)
        new = ~torch.isfinite(loss) & (self.first == 0)
        self.first = torch.where(new, float(step), self.first)
        self.value = torch.where(new, loss, self.value)

    def read(self) -> tuple[int, float] | None:
        if self.first is None:
            return None
        step, value = torch.stack([self.first, self.value]).tolist()
        return (int(step), value) if step else None
