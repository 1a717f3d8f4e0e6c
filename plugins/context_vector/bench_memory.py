"""O(1)-memory generation: peak memory and tokens/s at 1k, 8k and 64k generated tokens, context_vector
vs the `gpt` baseline, both through kinlm's default sampler (``kinlm_core.sampling.generate_ids``,
which uses each model's ``decode``: the context vector, or gpt's KV cache).

Models (random weights, vocabulary 1,000, the pair of specs/context_vector_vs_gpt/):
- ``context_vector``: the paper's 2.74M model; its decoding state is the (1, 256) context.
- ``gpt-window``: gpt (2.65M) with its 64-token training context: its KV cache is bounded, but it
  sees only the last 64 tokens (the sampler re-prefills them once the cache is full).
- ``gpt-full``: the same gpt with block_size = prompt + N, so it keeps the whole text (a KV cache of
  every token, and a position table of that size): what remembering everything costs a transformer.

Each (model, length) runs in a fresh process on the CPU: RSS is read after the model is built and a
short warm-up generation, then ``N`` tokens are sampled (temperature 1, seed 0, prompt of 16 tokens)
and the process's peak RSS is read (``ru_maxrss``). Printed: tokens/s, peak RSS, its growth over the
pre-generation RSS, the bytes of the decoding state, and the ratio of peak RSS at the longest to the
shortest length per model (goal for context_vector: <= 1.05). ``--gpt-max`` caps the gpt lengths
(default 8192: gpt at 64k takes minutes on 2 CPU cores; the ratio printed for gpt is then the ratio at
its longest measured length).

    flock /tmp/kinlm-cpu.lock python plugins/context_vector/bench_memory.py [--lengths 1024,8192,65536]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

VOCAB, PROMPT = 1000, 16


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _state_bytes(state) -> int:
    import torch

    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    if hasattr(state, "__dict__"):
        return _state_bytes(vars(state))
    return 0


def child(kind: str, n: int, threads: int) -> dict:
    import torch

    from kinlm_core import component
    from kinlm_core.sampling import Decoder, generate_ids

    from kinlm_context_vector.config import ContextVectorConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if kind == "context_vector":
        model = ContextVectorConfig().build(VOCAB)
    else:
        block = 64 if kind == "gpt-window" else PROMPT + n
        model = component("model", "gpt")(d_model=256, n_layer=3, n_head=4, block_size=block, dropout=0.1).build(VOCAB)
    model.eval()
    prompt = torch.randint(0, VOCAB, (1, PROMPT))
    opts = SimpleNamespace(temperature=1.0, top_k=None, top_p=None, seed=0, max_new_tokens=8)
    generate_ids(model, prompt, opts, vocab_size=VOCAB)  # warm-up (and the scripted loop's compilation)
    with torch.inference_mode():
        dec = Decoder(model, vocab_size=VOCAB)
        dec.prefill(prompt)
        state = _state_bytes(dec.state)  # gpt's KV cache is allocated whole at prefill
    del dec
    before = _rss_mb()
    opts.max_new_tokens = n
    t0 = time.perf_counter()
    out = generate_ids(model, prompt, opts, vocab_size=VOCAB)
    dt = time.perf_counter() - t0
    assert out.shape == (1, PROMPT + n)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": kind, "tokens": n, "tok_s": n / dt, "seconds": dt, "rss_before_mb": before,
            "peak_mb": peak, "growth_mb": peak - before, "state_bytes": state,
            "params": sum(p.numel() for p in model.parameters())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1024,8192,65536", help="generated tokens, comma-separated")
    ap.add_argument("--gpt-max", type=int, default=8192, help="longest length measured for the gpt models")
    ap.add_argument("--models", default="context_vector,gpt-window,gpt-full")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2: the published figures' setting)")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.threads)))
        return
    lengths = [int(x) for x in a.lengths.split(",")]
    print(f"{a.threads} threads, CPU, prompt {PROMPT} tokens, vocab {VOCAB}, sampling at temperature 1 through "
          f"kinlm_core.sampling.generate_ids; peak RSS per fresh process")
    print("| model | params | generated | tok/s | peak RSS MB | growth over pre-generation MB | decoding state |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for kind in a.models.split(","):
        for n in lengths:
            if kind != "context_vector" and n > a.gpt_max:
                continue
            r = subprocess.run([sys.executable, __file__, "--child", kind, str(n), "--threads", str(a.threads)],
                               capture_output=True, text=True)
            if r.returncode:
                print(f"| {kind} | | {n} | failed: {r.stderr.strip().splitlines()[-1]} | | | |", flush=True)
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.setdefault(kind, []).append(row)
            print(f"| {kind} | {row['params'] / 1e6:.2f}M | {n:,} | {row['tok_s']:,.0f} | {row['peak_mb']:.0f} | "
                  f"{row['growth_mb']:.1f} | {row['state_bytes'] / 1024:,.1f} KiB |", flush=True)
    print()
    for kind, rs in rows.items():
        lo, hi = rs[0], rs[-1]
        print(f"{kind}: peak RSS {hi['tokens']:,} / {lo['tokens']:,} tokens = {hi['peak_mb'] / lo['peak_mb']:.3f}; "
              f"growth {lo['growth_mb']:.1f} -> {hi['growth_mb']:.1f} MB; state {lo['state_bytes']:,} -> "
              f"{hi['state_bytes']:,} bytes; tok/s {lo['tok_s']:,.0f} -> {hi['tok_s']:,.0f}")


if __name__ == "__main__":
    main()
