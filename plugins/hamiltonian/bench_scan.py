"""Benchmark the momentum recurrence: chunked parallel scan vs the per-token loop (eager and
TorchScript, as in the source), forward and forward+backward, in one process.

    PYTHONPATH=plugins/hamiltonian:. python3 plugins/hamiltonian/bench_scan.py [--B 8 --T 1024 --C 640] [--compile]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import List

import torch

from kinlm_hamiltonian.model import momentum_loop, momentum_scan, momentum_step


@torch.jit.script
def momentum_loop_jit(v: torch.Tensor, beta: float, r: torch.Tensor) -> torch.Tensor:
    """The source's TorchScript loop, over the plugin's one :func:`momentum_step` (compiled with it)."""
    m = torch.zeros_like(v[:, 0])
    out: List[torch.Tensor] = []
    for t in range(v.size(1)):
        m = momentum_step(m, v[:, t], r[:, t], beta)
        out.append(m)
    return torch.stack(out, dim=1)


def interleaved_best(fns: dict, reps: int) -> dict:
    """Best wall time of each function over ``reps`` rounds; the functions alternate within a round so
    that load from other processes on a shared machine hits them alike."""
    for fn in fns.values():
        fn()  # warm-up (and compilation)
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--C", type=int, default=640)
    ap.add_argument("--beta", type=float, default=0.9)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2: the published figures' setting)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(momentum_scan)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    v = torch.randn(a.B, a.T, a.C)
    r = (torch.rand(a.B, a.T) < 0.01).float() * 0.5  # ~1% end-of-text resets
    ref = momentum_loop(v, a.beta, r)

    impls = {"loop (eager)": momentum_loop, "loop (torch.jit.script)": momentum_loop_jit}
    for chunk in (32, 64, 128, 256):
        impls[f"parallel chunk={chunk}"] = lambda v, b, r, c=chunk: momentum_scan(v, b, r, c)
    if a.compile:
        compiled = torch.compile(momentum_scan)
        impls["parallel chunk=64 (torch.compile)"] = lambda v, b, r: compiled(v, b, r, 64)

    print(f"B={a.B} T={a.T} C={a.C} beta={a.beta} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'implementation':36s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'max|err|':>9s}")
    vg = v.clone().requires_grad_(True)
    errs = {k: (fn(v, a.beta, r) - ref).abs().max().item() for k, fn in impls.items()}
    fwd = interleaved_best({k: (lambda fn=fn: fn(v, a.beta, r)) for k, fn in impls.items()}, a.reps)
    # TorchScript's backward of the 1024-step loop takes tens of seconds per call: forward only
    bwd = interleaved_best({k: (lambda fn=fn: fn(vg, a.beta, r).sum().backward())
                            for k, fn in impls.items() if "jit" not in k}, a.reps)
    times = {k: (fwd[k], bwd.get(k, float("nan"))) for k in impls}
    for k, (f, b) in times.items():
        print(f"{k:36s} {f * 1e3:9.1f} {b * 1e3:11.1f} {errs[k]:9.1e}")
    lf, lb = times["loop (eager)"]
    pf, pb = times["parallel chunk=64"]
    print(f"speedup parallel(chunk=64) vs eager loop: forward {lf / pf:.1f}x, forward+backward {lb / pb:.1f}x")


if __name__ == "__main__":
    main()
