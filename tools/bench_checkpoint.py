"""Checkpoint cost on the training thread: the synchronous save against the asynchronous one.

Builds the `gpt` baseline at a given size with AdamW state (one step taken), then, in alternating
order, best of ``--rounds``: the seconds ``checkpoint.save`` blocks the caller (the whole write), and
the seconds ``AsyncSaver.save`` blocks it (the host copy; the write runs in its thread, joined
outside the timed span). Prints both, their ratio and the background write's own seconds. On a GPU
the async copy is queued on the stream into pinned buffers; tools/gpu_check.py measures the
throughput of training steps across a checkpoint window there.

    flock /tmp/kinlm-cpu.lock python tools/bench_checkpoint.py [--layers 6 --d-model 384]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from kinlm_core.builtins.models import GPTConfig
    from kinlm_core.engine import checkpoint as ckpt

    torch.manual_seed(0)
    model = GPTConfig(n_layer=args.layers, n_head=max(1, args.d_model // 64), d_model=args.d_model,
                      block_size=256).build(args.vocab)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long)).logits.sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng_cpu": torch.get_rng_state(), "step": 1}
    n = sum(p.numel() for p in model.parameters())
    saver = ckpt.AsyncSaver()
    sync_s, async_s, write_s = [], [], []
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            for kind in (("sync", "async") if r % 2 == 0 else ("async", "sync")):
                t = time.perf_counter()
                if kind == "sync":
                    ckpt.save(Path(d) / "sync", r, model, state)
                    sync_s.append(time.perf_counter() - t)
                else:
                    saver.save(Path(d) / "async", r, model, state)
                    async_s.append(time.perf_counter() - t)
                    saver.join()
                    write_s.append(time.perf_counter() - t)
        mb = ckpt.size_of(ckpt.latest(Path(d) / "sync")) / 1e6
    print(f"gpt {n / 1e6:.1f}M parameters, checkpoint {mb:.0f} MB, torch {torch.__version__}, {args.threads} threads, best of {args.rounds}")
    print("| synchronous save, s | async: training thread blocked, s | **sync / async** | "
          "async write in its thread, s |")
    print("|---|---|---|---|")
    print(f"| {min(sync_s):.3f} | {min(async_s):.3f} | **{min(sync_s) / min(async_s):.1f}** | {min(write_s):.3f} |")


if __name__ == "__main__":
    main()
