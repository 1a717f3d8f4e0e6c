"""``train.batch_size: "auto"``: the largest micro-batch that fits, the optimizer step kept.

The spec asks for ``train.batch_size_target`` sequences per optimizer step (per rank). The engine
picks a micro-batch ``m`` that divides the target and fits on the device, and accumulates
``target / m`` micro-batches per step, so every step sees the same sequences whatever ``m`` is (the
data stream is one sequence of examples, consumed ``target`` at a time) and the results do not depend
on the device's memory (up to float rounding of the sums).

- **GPU**: the candidates (divisors of the target, largest first) are tried with one forward and
  backward pass each; an out-of-memory error backs off to the next one (as accelerate's
  ``find_executable_batch_size`` does).
- **CPU**: running out of memory there kills the process instead of raising, so a candidate is
  tried only when an estimate says it fits: the bytes autograd saves for one sequence (measured with
  ``torch.autograd.graph.saved_tensors_hooks`` on a one-sequence pass) x ``2 m`` (the saved tensors
  and their gradients), plus the weights x 4 (weights, gradients, AdamW's two moments), against half
  of the memory the system reports available (``MemAvailable`` in /proc/meminfo).
"""

from __future__ import annotations

import os
from typing import Callable

import torch

CPU_MEMORY_SHARE = 0.5  # the share of the available memory an estimate may use


def candidates(target: int) -> list[int]:
    """The micro-batches that divide ``target``, largest first."""
    return [m for m in range(target, 0, -1) if target % m == 0]


def smaller(target: int, micro: int) -> int | None:
    """The next candidate below ``micro`` (None when ``micro`` is 1)."""
    return next((m for m in candidates(target) if m < micro), None)


def available_memory() -> int | None:
    """Bytes the system reports available (``MemAvailable``), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves while ``fn()`` builds its graph (the activations kept for
    the backward pass; shared storages counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def cpu_estimate(per_sequence: int, weight_bytes: int, micro: int) -> int:
    """Estimated peak bytes of a training step with ``micro`` sequences (see the module docstring)."""
    return 2 * micro * per_sequence + 4 * weight_bytes


def choose(target: int, trial: Callable[[int], bool], fits_estimate: Callable[[int], bool] | None = None) -> int:
    """The largest candidate micro-batch that ``fits_estimate`` (when given) allows and ``trial`` runs
    (``trial(m)`` returns False on out-of-memory). Raises ``torch.OutOfMemoryError`` when not even one
    sequence fits."""
    for m in candidates(target):
        if fits_estimate is not None and not fits_estimate(m):
            continue
        if trial(m):
            return m
    raise torch.OutOfMemoryError("train.batch_size \"auto\": not even a micro-batch of 1 sequence fits on the device")
