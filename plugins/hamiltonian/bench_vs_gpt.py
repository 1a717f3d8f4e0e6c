#!/usr/bin/env python3
"""hamiltonian vs the `gpt` baseline at (about) equal parameters: training tokens/s and peak memory
at several context lengths, measured in one run.

Throughput: one training step = forward, cross-entropy, backward, AdamW; rounds alternate the
two models so machine noise hits both. Peak memory: each (model, context) runs a few steps in a
fresh child process and reports its peak RSS above the RSS after the model was built (CPU, Linux
VmHWM reset through /proc/self/clear_refs) or
torch.cuda.max_memory_allocated (GPU).

    python plugins/hamiltonian/bench_vs_gpt.py [--contexts 256,1024] [--d-model 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import os
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def build(kind: str, d: int, layers: int, heads: int, ctx: int, vocab: int):
    if kind == "hamiltonian":
        from kinlm_hamiltonian.config import HamiltonianConfig

        cfg = HamiltonianConfig(d_model=d, n_layer=layers, n_head=heads, block_size=ctx, dropout=0.0, eot_token_id=0)
    else:
        from kinlm_core import component

        cfg = component("model", "gpt")(d_model=d, n_layer=layers, n_head=heads, block_size=ctx)
    return cfg.build(vocab)


def gpt_width_matching(target: int, layers: int, heads: int, ctx: int, vocab: int) -> int:
    """The gpt d_model (a multiple of heads * 8) whose parameter count is closest to target."""
    best = None
    for d in range(heads * 8, 4096, heads * 8):
        with torch.device("meta"):
            n = sum(p.numel() for p in build("gpt", d, layers, heads, ctx, vocab).parameters())
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (d, n)
        if n > target * 1.2:
            break
    return best[0]


def steps_per_s(model, batch, ctx, vocab, steps, device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab, (batch, ctx + 1), generator=torch.Generator().manual_seed(0)).to(device)
    for i in range(steps + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
        logits = model(x[:, :-1]).logits
        F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch * ctx / (time.perf_counter() - t)


def child(args):
    """Peak memory of a few training steps, in this fresh process (MiB)."""
    kind, d, layers, heads, ctx, vocab, batch, device = args
    device = torch.device(device)
    model = build(kind, int(d), int(layers), int(heads), int(ctx), int(vocab)).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to now
        base = _status_kib("VmRSS")
    steps_per_s(model, int(batch), int(ctx), int(vocab), 2, device)
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:
        print((_status_kib("VmHWM") - base) / 1024)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="256,1024")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per batch (batch = tokens // context)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2: the published figures' setting)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the memory children too
    device = torch.device(a.device)
    print(f"device {device}, threads {torch.get_num_threads()}, vocab {a.vocab}, {a.tokens} tokens per batch")
    for ctx in [int(c) for c in a.contexts.split(",")]:
        batch = max(1, a.tokens // ctx)
        torch.manual_seed(0)
        ham = build("hamiltonian", a.d_model, a.layers, a.heads, ctx, a.vocab).to(device)
        n_ham = sum(p.numel() for p in ham.parameters())
        d_gpt = gpt_width_matching(n_ham, a.layers, a.heads, ctx, a.vocab)
        gpt = build("gpt", d_gpt, a.layers, a.heads, ctx, a.vocab).to(device)
        n_gpt = sum(p.numel() for p in gpt.parameters())
        rates = {"hamiltonian": [], "gpt": []}
        for _ in range(a.rounds):
            rates["hamiltonian"].append(steps_per_s(ham, batch, ctx, a.vocab, a.steps, device))
            rates["gpt"].append(steps_per_s(gpt, batch, ctx, a.vocab, a.steps, device))
        mem = {}
        for kind, d in (("hamiltonian", a.d_model), ("gpt", d_gpt)):
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(d), str(a.layers), str(a.heads), str(ctx),
                                  str(a.vocab), str(batch), a.device], capture_output=True, text=True, check=True)
            mem[kind] = float(out.stdout.strip().splitlines()[-1])
        h, g = statistics.median(rates["hamiltonian"]), statistics.median(rates["gpt"])
        row = {"context": ctx, "batch": batch, "hamiltonian_params": n_ham, "gpt_params": n_gpt, "gpt_d_model": d_gpt,
               "hamiltonian_tok_s": round(h), "gpt_tok_s": round(g), "ratio_tok_s": round(h / g, 3),
               "hamiltonian_peak_mib": round(mem["hamiltonian"]), "gpt_peak_mib": round(mem["gpt"]),
               "ratio_peak_mem": round(mem["hamiltonian"] / mem["gpt"], 2)}
        print(f"context {ctx}: hamiltonian {n_ham / 1e6:.2f}M params {h:.0f} tok/s {mem['hamiltonian']:.0f} MiB | "
              f"gpt (d {d_gpt}) {n_gpt / 1e6:.2f}M params {g:.0f} tok/s {mem['gpt']:.0f} MiB | "
              f"tok/s ratio {h / g:.3f}, memory ratio {mem['hamiltonian'] / mem['gpt']:.2f}")
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
