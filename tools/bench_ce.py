"""The loss's cost: kinlm's chunked cross-entropy against ``F.cross_entropy(logits.float())``.

Forward and backward of the summed loss of random logits (N rows x V) in a given dtype, each path
in a fresh child process (so that its peak resident memory is its own), alternating, best of
``--rounds``: seconds per forward + backward and the process's peak RSS above the logits and their
gradient, which both paths hold. The old path also holds a float32 copy of the logits and float32
log-probabilities (2 x N x V x 4 bytes); the chunked one holds one chunk of float32 at a time.

    flock /tmp/kinlm-cpu.lock python tools/bench_ce.py [--rows 8192 --vocab 50257 --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def child(path: str, rows: int, vocab: int, dtype: str, reps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    from kinlm_core.api import IGNORE_INDEX
    from kinlm_core.objectives import token_nll

    torch.manual_seed(0)
    logits = torch.randn(rows, vocab, dtype=getattr(torch, dtype)).requires_grad_()
    labels = torch.randint(0, vocab, (rows,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        if path == "old":
            loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        else:
            loss = token_nll(logits, labels)
        loss.backward()
        logits.grad = None
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": min(times), "extra_mb": (peak - base) / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8192, help="N = batch x block")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="forward + backward passes per child (best counts)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads of each child, pinned (default: $OMP_NUM_THREADS, else 2)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.rows, a.vocab, a.dtype, a.reps, a.threads)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    res = {"old": [], "chunked": []}
    for _ in range(a.rounds):
        for path in res:
            out = subprocess.run([sys.executable, __file__, "--child", path, "--rows", str(a.rows), "--vocab",
                                  str(a.vocab), "--dtype", a.dtype, "--reps", str(a.reps), "--threads", str(a.threads)],
                                 env=env, check=True, capture_output=True, text=True).stdout
            res[path].append(json.loads(out.splitlines()[-1]))
    best = {k: {"seconds": min(r["seconds"] for r in v), "extra_mb": min(r["extra_mb"] for r in v)}
            for k, v in res.items()}
    print(f"logits {a.rows} x {a.vocab} {a.dtype} ({a.rows * a.vocab * (2 if a.dtype == 'bfloat16' else 4) / 2**20:,.0f} MB),"
          f" {a.threads} threads, best of {a.rounds}")
    for k, v in best.items():
        print(f"  {k:8s} {v['seconds'] * 1000:9.1f} ms forward + backward   peak RSS beyond the logits {v['extra_mb']:8,.0f} MB")
    o, c = best["old"], best["chunked"]
    print(f"  chunked / old: time {c['seconds'] / o['seconds']:.2f}x, extra memory "
          f"{c['extra_mb'] / max(o['extra_mb'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
