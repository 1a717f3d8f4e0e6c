#!/usr/bin/env python3
"""The ContextBlock recurrence: the hoisted loop (``ContextBlock.run``: token half of every layer
computed for all T before the loop, one addmm per layer and token) against the readable per-token
loop (``run_reference``) and against the hoisted loop with each token's step compiled (``loop="compiled"``,
the GPU's path: CUDA graphs there; its compilation falls in the warm-up rounds; ``--no-compiled`` leaves it
out), same weights, same process, rounds alternating. Forward + backward of the contexts, the spec's shape
by default (specs/cvfp_ultrachat.json: d_model 768, 6 layers, batch 8 x 128).

    python plugins/cvfp/bench_loop.py [--batch 8] [--ctx 128] [--d-model 768] [--layers 6] [--rounds 3] [--no-compiled]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from kinlm_cvfp.config import CvfpConfig


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-compiled", action="store_true", help="leave out the compiled step (saves its compilation)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = CvfpConfig(d_model=a.d_model, n_layer=a.layers, block_size=a.ctx).build(1000)
    e = torch.randn(a.batch, a.ctx, a.d_model)
    block = model.context_block
    paths = {"reference": block.run_reference, "hoisted": block.run}
    if not a.no_compiled:
        paths["compiled"] = lambda x: block.run(x, compiled=True)
    times = {k: [] for k in paths}
    for r in range(a.rounds + 2):
        for k, fn in paths.items():
            t = time.perf_counter()
            fn(e)[-1].sum().backward()
            if r > 1:  # rounds 0 and 1 warm up (TorchScript's profiling runs)
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"cvfp ContextBlock fwd+bwd, batch {a.batch} x {a.ctx}, d {a.d_model}, {a.layers} layers, "
          f"{a.threads} threads (pinned)")
    for k, t in med.items():
        print(f"  {k:9s} {t * 1e3:8.1f} ms  {a.batch * a.ctx / t:9.0f} tok/s")
    print(f"  speed-up hoisted / reference {med['reference'] / med['hoisted']:.2f}x")
    if "compiled" in med:
        print(f"  speed-up compiled / reference {med['reference'] / med['compiled']:.2f}x, "
              f"compiled / hoisted {med['hoisted'] / med['compiled']:.2f}x")


if __name__ == "__main__":
    main()
