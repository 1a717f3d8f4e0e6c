"""Training throughput as result.json reports it: warm-up apart from the steady state, and MFU.

The first :data:`WARMUP_STEPS` optimizer steps of a process (a new run or a resume) are warm-up:
``torch.compile`` compiles there, the allocator and the kernels' autotuning settle. Their seconds are
``warmup_seconds``; ``compile_seconds`` is what they took beyond as many steady steps (with
``train.compile`` on, mostly the compile). ``steady_tokens_per_s`` counts the tokens and the seconds
of the train steps after them (evaluations, checkpoints and logging excluded, as for
``tokens_per_s``). On CUDA the device is synchronised once, when the warm-up ends, so that its queued
work is not counted as steady; the step times after it are host times of steps that do not wait on
the device, which add up to the device's time over a window (the queue is bounded) and are read at
the logging steps, which wait for the device anyway.

MFU (model FLOPs utilisation) is ``flops_per_token x steady tokens/s / peak``: the FLOPs per token are
nanoGPT's estimate, 6 N for the weights' forward and backward plus 12 L d T for the attention scores
and values (L, d from the model's ``n_layer`` and ``d_model`` where it has them, T the block size),
and the peak is the device's dense bf16/fp16 tensor-core rate from the datasheet table
:data:`PEAK_BF16_TFLOPS`. Where no peak applies (a CPU, an fp32 run, a device not in the table) MFU is
null and ``mfu_note`` says why.
"""

from __future__ import annotations

import time

WARMUP_STEPS = 3
"""Optimizer steps at the start of each process counted as warm-up, not steady state."""

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity). The first
# substring of the device name that matches wins, so the more specific names come first.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0), ("H800", 989.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
]


def peak_tflops(device_name: str) -> float | None:
    """The peak dense bf16 rate of the device called ``device_name`` (TFLOP/s), or None when not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def flops_per_token(n_params: int, n_layer: int = 0, d_model: int = 0, context: int = 0) -> float:
    """Training FLOPs per token: 6 N plus 12 L d T (attention over a context of T)."""
    return 6.0 * n_params + 12.0 * n_layer * d_model * context


def device_peak(device, half_precision: bool) -> tuple[float | None, str | None]:
    """(peak FLOP/s, None), or (None, why there is none) for ``device`` (a torch.device)."""
    if device.type != "cuda":
        return None, f"no peak FLOP/s for a {device.type} device"
    if not half_precision:
        return None, "fp32 run: the peak table holds bf16/fp16 tensor-core rates"
    import torch

    name = torch.cuda.get_device_name(device)
    peak = peak_tflops(name)
    return (peak * 1e12, None) if peak else (None, f"{name} is not in kinlm's peak table (engine/perf.py)")


class Throughput:
    """Warm-up and steady-state seconds and tokens of the train steps of one process.

    ``step(seconds, tokens_seen)`` after every optimizer step with that step's seconds and the run's
    token count after it; :meth:`summary` gives result.json's figures."""

    def __init__(self, device, flops_token: float, peak_flops: float | None, mfu_note: str | None,
                 warmup_steps: int = WARMUP_STEPS):
        self.device, self.flops_token, self.peak, self.note = device, flops_token, peak_flops, mfu_note
        self.warmup_steps, self.steps = warmup_steps, 0
        self.warmup_seconds, self.steady_seconds = 0.0, 0.0
        self.tokens0 = self.steady_tokens0 = None
        self.tokens = 0

    def start(self, tokens_seen: int) -> None:
        self.tokens0 = tokens_seen

    def step(self, seconds: float, tokens_seen: int) -> None:
        self.steps += 1
        self.tokens = tokens_seen
        if self.steps <= self.warmup_steps:
            if self.steps == self.warmup_steps:  # the warm-up's queued device work belongs to the warm-up
                t = time.perf_counter()
                self._sync()
                seconds += time.perf_counter() - t
                self.steady_tokens0 = tokens_seen
            self.warmup_seconds += seconds
        else:
            self.steady_seconds += seconds

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def steady_tokens_per_s(self) -> float | None:
        if self.steady_tokens0 is None or self.steady_seconds <= 0:
            return None
        return (self.tokens - self.steady_tokens0) / self.steady_seconds

    def mfu(self, tokens_per_s: float | None) -> float | None:
        return None if tokens_per_s is None or not self.peak else tokens_per_s * self.flops_token / self.peak

    def summary(self) -> dict:
        tps = self.steady_tokens_per_s()
        per_step = self.steady_seconds / (self.steps - self.warmup_steps) if tps is not None else None
        out = {"warmup_steps": min(self.steps, self.warmup_steps), "warmup_seconds": self.warmup_seconds,
               "compile_seconds": (max(0.0, self.warmup_seconds - self.warmup_steps * per_step)
                                   if per_step is not None else None),
               "steady_tokens_per_s": tps, "flops_per_token": self.flops_token, "mfu": self.mfu(tps)}
        if out["mfu"] is None:
            out["mfu_note"] = (f"no steady state: at most {self.warmup_steps} steps (the warm-up) ran in this "
                               "process" if tps is None else self.note)
        return out
