#!/usr/bin/env python3
"""The 23x claim, measured: phase 1 of cvfp run sequentially and in parallel on the same tokens.

    flock /tmp/kinlm-cpu.lock python plugins/cvfp/bench_phase1.py [--tokens 1000] [--d-model 768] [--iterations 10]

The source (rato-tokyo/new-llm, 11-25) reports 266 s sequential vs 11.4 s parallel on 1,000 tokens
(23x), effective rank 66.6% sequential vs 55.9% (validation) / about 60% (train) parallel, with 10
iterations, w 0.9 for the 55.9% figure, tau 0.1, no noise and the whole stream in one chunk; these are
the defaults here. Both modes are ordinary kinlm runs through the engine (``kinlm_core.train``) of a
phase-1-only spec: the same seed (so the same initial weights), the first ``--tokens`` tokens of Tiny
Shakespeare's training stream (byte tokenizer; phase 1 never touches the output head, so the
vocabulary does not change its cost), ``--iterations`` iterations counted as the source counts them
(iteration 0, sequential from zero, then one optimizer step per iteration), early stop off so the
work is equal. Seconds = the run's ``train_seconds`` (time inside training steps: no data
preparation, evaluation or checkpoint writing).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from kinlm_core import load_run, load_spec, train
from kinlm_cvfp.losses import effective_rank
from kinlm_cvfp.training import parallel_iteration, sequential_contexts, streams


def spec_dict(mode: str, args) -> dict:
    return {
        "name": f"bench-cvfp-phase1-{mode}", "seed": args.seed,
        "data": {"type": "embedded", "corpus": "tinyshakespeare"},
        "tokenizer": {"type": "byte"},
        "model": {"type": "cvfp", "d_model": args.d_model, "n_layer": args.layers, "tie_head": True,
                  "freeze_embedding": True},
        "curriculum": {"type": "cvfp_two_phase", "mode": mode, "train_tokens": args.tokens, "validation": "split",
                       "validation_tokens": 2, "max_iterations": args.iterations, "min_iterations": args.iterations,
                       "convergence_rate": 1.0, "convergence_threshold": args.threshold,
                       "dist_reg_weight": args.weight, "noise_std": args.noise, "chunk_tokens": args.chunk_tokens},
        "train": {"max_steps": args.iterations - 1, "batch_size": 1, "block_size": 16, "checkpoint_every": 10_000,
                  "log_every": 1, "device": args.device},
        "eval": {"every": 10_000, "batches": 1},
        "generate": [], "analyzers": [],
    }


def run(mode: str, args, work: Path) -> dict:
    f = work / f"{mode}.json"
    f.write_text(json.dumps(spec_dict(mode, args)))
    rd = work / mode
    result = train(load_spec(f), rd, progress=False, log=lambda *a, **k: None)
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    p1 = [r for r in rows if "fixed_point/convergence_rate" in r]
    loaded = load_run(rd, device=args.device)
    model = loaded.model
    ids, _ = streams(loaded.spec.curriculum, loaded.data, next(model.parameters()).device)
    with torch.no_grad():  # the trained ContextBlock's own sequential contexts, and its fixed point
        C_seq = sequential_contexts(model, ids)[-1]
        again = parallel_iteration(model, model.embed(ids), torch.cat([torch.zeros_like(C_seq[:1]), C_seq[:-1]]))
    return {"mode": mode, "seconds": result["train_seconds"], "iterations": len(p1) + 1,
            "initial_er_pct": p1[0]["fixed_point/initial_effective_rank_pct"],
            "er_pct_last_iteration": p1[-1]["fixed_point/effective_rank_pct"],
            "er_pct_sequential_after": 100 * effective_rank(C_seq) / args.d_model,
            "convergence_rate_last": p1[-1]["fixed_point/convergence_rate"],
            "fixed_point_mse": float((again - C_seq).pow(2).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=10, help="iterations, iteration 0 included (>= 2)")
    ap.add_argument("--weight", type=float, default=0.9, help="dist_reg_weight w")
    ap.add_argument("--threshold", type=float, default=0.1, help="convergence threshold tau")
    ap.add_argument("--chunk-tokens", type=int, default=8000)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2: the published figures' setting)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    if args.iterations < 2:
        ap.error("--iterations must be at least 2 (iteration 0 and one step)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("KINLM_CACHE", str(Path(tmp) / "cache"))
        par = run("parallel", args, Path(tmp))
        seq = run("sequential", args, Path(tmp))
    speedup = seq["seconds"] / par["seconds"]
    env = {"tokens": args.tokens, "d_model": args.d_model, "layers": args.layers, "iterations": args.iterations,
           "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(0),
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.json:
        print(json.dumps({"env": env, "parallel": par, "sequential": seq, "speedup": speedup}, indent=2))
        return
    print(f"phase 1, {args.tokens} tokens, d {args.d_model}, K {args.layers}, {args.iterations} iterations, "
          f"w {args.weight}, {env['device']}, {env['threads']} threads")
    print(f"{'mode':<11}{'seconds':>9}{'ER% C_0':>9}{'ER% C_N':>9}{'ER% seq':>9}{'conv.':>8}{'fixed-pt MSE':>14}")
    for r in (seq, par):
        print(f"{r['mode']:<11}{r['seconds']:>9.2f}{r['initial_er_pct']:>9.1f}{r['er_pct_last_iteration']:>9.1f}"
              f"{r['er_pct_sequential_after']:>9.1f}{r['convergence_rate_last']:>8.3f}{r['fixed_point_mse']:>14.2e}")
    print(f"speed-up parallel vs sequential: {speedup:.1f}x (source claim: 23x, 266 s vs 11.4 s)")


if __name__ == "__main__":
    main()
