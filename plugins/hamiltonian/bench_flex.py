#!/usr/bin/env python3
"""Forward time of the hamiltonian model with FlexAttention (``attention="flex"``) against the
reference additive-mask path (``attention="reference"``), same weights, same process, rounds
alternating so machine noise hits both. CPU: FlexAttention is forward-only there (torch 2.13), eager
(torch's dense reference) or, with --compile, FlexAttention torch.compile'd (its C++ kernel; needs a
C++ compiler); on CUDA the fused kernel, and the training ratio is tools/gpu_check.py's.

    python plugins/hamiltonian/bench_flex.py [--batch 4] [--ctx 512] [--d-model 256] [--layers 4] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from kinlm_hamiltonian.config import HamiltonianConfig


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2)")
    ap.add_argument("--compile", action="store_true",
                    help="CPU: torch.compile FlexAttention (its C++ kernel; CUDA always compiles it)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = {}
    for kind in ("reference", "flex"):
        torch.manual_seed(0)
        cfg = HamiltonianConfig(d_model=a.d_model, n_layer=a.layers, n_head=a.heads, block_size=a.ctx,
                                dropout=0.0, eot_token_id=0, attention=kind)
        models[kind] = cfg.build(a.vocab).to(device).eval()
    if a.compile and device.type == "cpu":  # the model's CPU branch calls the module's flex_attention
        import kinlm_hamiltonian.model as hm

        hm.flex_attention = torch.compile(hm.flex_attention, dynamic=False)
    x = torch.randint(0, a.vocab, (a.batch, a.ctx), generator=torch.Generator().manual_seed(0)).to(device)
    times = {k: [] for k in models}
    with torch.no_grad():
        diff = (models["flex"](x).logits - models["reference"](x).logits).abs().max().item()  # also warms up
        for _ in range(a.rounds):
            for kind, m in models.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                m(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[kind].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device {device}, batch {a.batch} x ctx {a.ctx}, d_model {a.d_model}, {a.layers} layers, "
          f"{a.heads} heads, compile={a.compile}, {a.threads} threads; max |logit diff| {diff:.2e}")
    for k, t in med.items():
        print(f"  {k:9s} forward {t * 1e3:8.1f} ms  {a.batch * a.ctx / t:10.0f} tok/s")
    print(f"  flex / reference time ratio {med['flex'] / med['reference']:.3f} "
          f"(speed-up {med['reference'] / med['flex']:.2f}x)")


if __name__ == "__main__":
    main()
