#!/usr/bin/env python3
"""The 23x claim, measured: phase 1 of cvfp run sequentially and in parallel on the same tokens.

    flock /tmp/kinlm-cpu.lock python plugins/cvfp/bench_phase1.py [--tokens 1000] [--d-model 768] [--iterations 10]

The source (rato-tokyo/new-llm) reports 266 s sequential vs 11.4 s parallel on 1,000 tokens (23x),
effective rank 66.6% sequential vs 55.9% (validation) / about 60% (train) parallel. Both modes here
run the same step function (kinlm_cvfp.training.phase1_step) from the same initial weights on the
same tokens for the same number of iterations (early stop off, so the work is equal): iteration 0
sequential from zero, then each iteration one optimizer step whose incoming contexts are the
previous iteration's (parallel) or this iteration's, token by token (sequential). Tokens: the first
``--tokens`` bytes of Tiny Shakespeare's training split (byte tokenizer; phase 1 never touches the
output head, so the vocabulary does not change its cost).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from kinlm_core import component
from kinlm_cvfp.config import CvfpConfig, TwoPhaseConfig
from kinlm_cvfp.losses import effective_rank
from kinlm_cvfp.standalone import Tokens, run_phase
from kinlm_cvfp.training import parallel_iteration, sequential_contexts


def shakespeare_bytes(n: int) -> np.ndarray:
    tok = component("tokenizer", "byte")().build(lambda: iter(()), None)
    ids: list[int] = []
    for doc in component("data_source", "embedded")(corpus="tinyshakespeare").documents("train"):
        ids += tok.encode(doc) + [tok.eos_id]
        if len(ids) >= n:
            return np.asarray(ids[:n]), tok.vocab_size
    raise SystemExit(f"the corpus has fewer than {n} tokens")


def run(mode: str, args, tokens, vocab) -> dict:
    torch.manual_seed(args.seed)
    model = CvfpConfig(d_model=args.d_model, n_layer=args.layers).build(vocab).to(args.device)
    cur = TwoPhaseConfig(mode=mode, train_tokens=None, max_iterations=args.iterations, min_iterations=args.iterations,
                         convergence_rate=1.0, chunk_tokens=args.chunk_tokens, noise_std=args.noise)
    phase1 = cur.schedule(args.iterations)[0]
    data = Tokens(tokens)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    state, hist = run_phase(phase1, model, data)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    ids = torch.as_tensor(tokens, device=args.device)
    with torch.no_grad():  # the trained ContextBlock's own sequential contexts, and its fixed point
        C_seq = sequential_contexts(model, ids)[-1]
        again = parallel_iteration(model, model.embed(ids), torch.cat([torch.zeros_like(C_seq[:1]), C_seq[:-1]]))
    return {"mode": mode, "seconds": seconds, "iterations": len(hist),
            "initial_er_pct": hist[0]["initial_effective_rank_pct"],
            "er_pct_last_iteration": hist[-1]["effective_rank_pct"],
            "er_pct_sequential_after": 100 * effective_rank(C_seq) / args.d_model,
            "convergence_rate_last": hist[-1]["convergence_rate"],
            "fixed_point_mse": float((again - C_seq).pow(2).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--chunk-tokens", type=int, default=8000)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokens, vocab = shakespeare_bytes(args.tokens)
    par = run("parallel", args, tokens, vocab)
    seq = run("sequential", args, tokens, vocab)
    speedup = seq["seconds"] / par["seconds"]
    env = {"tokens": args.tokens, "d_model": args.d_model, "layers": args.layers, "iterations": args.iterations,
           "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(0),
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.json:
        print(json.dumps({"env": env, "parallel": par, "sequential": seq, "speedup": speedup}, indent=2))
        return
    print(f"phase 1, {args.tokens} tokens, d {args.d_model}, K {args.layers}, {args.iterations} iterations, "
          f"{env['device']}, {env['threads']} threads")
    print(f"{'mode':<11}{'seconds':>9}{'ER% C_0':>9}{'ER% C_N':>9}{'ER% seq':>9}{'conv.':>8}{'fixed-pt MSE':>14}")
    for r in (seq, par):
        print(f"{r['mode']:<11}{r['seconds']:>9.2f}{r['initial_er_pct']:>9.1f}{r['er_pct_last_iteration']:>9.1f}"
              f"{r['er_pct_sequential_after']:>9.1f}{r['convergence_rate_last']:>8.3f}{r['fixed_point_mse']:>14.2e}")
    print(f"speed-up parallel vs sequential: {speedup:.1f}x (source claim: 23x, 266 s vs 11.4 s)")


if __name__ == "__main__":
    main()
