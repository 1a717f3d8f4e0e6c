#!/usr/bin/env python3
"""Engine benchmark: kinlm's training loop against a bare hand-written PyTorch loop, in one process.

Measures, alternating rounds so that machine noise hits both alike:
  - tokens/s of `kinlm run` (the real Trainer.run, logging and hooks included) and of a bare
    loop (same model class, data, batch, AdamW groups, clipping), and their ratio;
  - tokens/s of transformers' GPT2LMHeadModel of the same shape in the bare loop (which
    implementation of the `gpt` baseline is faster);
  - model FLOPs utilisation, 6 x parameters x tokens/s / this machine's fp32 matmul FLOP/s
    measured in the same run;
  - the data cache: a second prepare_data re-tokenizes nothing.

    python tools/bench_engine.py [--rounds 3] [--steps 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SPEC = {
    "name": "bench",
    "seed": 0,
    "data": {"type": "embedded", "corpus": "tinyshakespeare"},
    "tokenizer": {"type": "bpe", "vocab_size": 2048},
    "model": {"type": "gpt", "n_layer": 6, "n_head": 6, "d_model": 384, "block_size": 256, "dropout": 0.0},
    "train": {"max_steps": 30, "batch_size": 8, "block_size": 256, "lr": 1e-3, "warmup_steps": 5,
              "checkpoint_every": 100000, "log_every": 10},
    "eval": {"every": 100000, "batches": 1},
}


def matmul_flops(device, n=2048, reps=5, tries=3) -> float:
    """fp32 matmul FLOP/s: best of a few timed batches of n x n products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = 0.0
    for _ in range(tries):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(model, blocks, batch_size, steps, device, lr=1e-3, clip=1.0, warm=10) -> float:
    """A hand-written loop: random rows, forward, CE, backward, clip, AdamW. Returns tokens/s over
    ``steps`` steps after ``warm`` untimed ones (the kinlm loop also drops its first 10 steps)."""
    from kinlm_core.engine.optim import param_groups

    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(0)
    model.train()
    T = blocks.shape[1] - 1
    for i in range(warm + steps):
        if i == warm:
            sync(device)
            t0 = time.perf_counter()
        rows = torch.from_numpy(blocks[np.sort(rng.integers(0, len(blocks), batch_size))].astype(np.int64)).to(device)
        x, y = rows[:, :-1], rows[:, 1:]
        out = model(x)
        logits = out.logits if hasattr(out, "logits") else out
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return steps * batch_size * T / (time.perf_counter() - t0)


def kinlm_loop(spec_dict, steps, workdir) -> float:
    """tokens/s as `kinlm run` measures it (perf/tokens_per_s), first window (warm-up) dropped."""
    from kinlm_core.engine.train import run
    from kinlm_core.spec import validate

    d = json.loads(json.dumps(spec_dict))
    d["train"]["max_steps"] = steps + 10
    rd = Path(tempfile.mkdtemp(dir=workdir)) / "run"
    run(validate(d), rd, progress=False, log=lambda m: None)
    rates = [json.loads(l).get("perf/tokens_per_s") for l in (rd / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r is not None][1:]
    return statistics.mean(rates)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2: the published figures' setting)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from kinlm_core.data import prepare_data
    from kinlm_core.spec import validate

    device = torch.device(a.device)
    spec = json.loads(json.dumps(SPEC))
    spec["train"]["device"] = a.device
    work = Path(tempfile.mkdtemp(prefix="kinlm-bench-"))
    os.environ["KINLM_CACHE"] = str(work / "cache")
    s = validate(spec)

    t = time.perf_counter()
    data = prepare_data(s.data, s.tokenizer, s.train.block_size, work / "cache" / "data", log=lambda *x, **k: None)
    first = time.perf_counter() - t
    t = time.perf_counter()
    again = prepare_data(s.data, s.tokenizer, s.train.block_size, work / "cache" / "data", log=lambda *x, **k: None)
    second = time.perf_counter() - t
    print(f"data: first prepare {first:.2f}s (cache_hit={data.cache_hit}), second {second:.3f}s (cache_hit={again.cache_hit})")

    blocks = data.blocks("train")
    V = data.tokenizer.vocab_size
    torch.manual_seed(0)
    own = s.model.build(V).to(device)
    n_params = sum(p.numel() for p in own.parameters())
    from transformers import GPT2Config, GPT2LMHeadModel

    m = s.model
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=own.vocab_size, n_positions=m.block_size, n_embd=m.d_model,
                                    n_layer=m.n_layer, n_head=m.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)).to(device)
    hf_params = sum(p.numel() for p in hf.parameters())
    print(f"model: kinlm gpt {n_params / 1e6:.2f}M params, transformers GPT2 {hf_params / 1e6:.2f}M params, "
          f"batch {s.train.batch_size} x {s.train.block_size}, device {device}, threads {torch.get_num_threads()}")

    res = {"kinlm": [], "bare": [], "hf_bare": [], "flops": []}
    for r in range(a.rounds):
        res["flops"].append(matmul_flops(device))
        jobs = [("kinlm", lambda: kinlm_loop(spec, a.steps, work)),
                ("bare", lambda: bare_loop(own, blocks, s.train.batch_size, a.steps, device)),
                ("hf_bare", lambda: bare_loop(hf, blocks, s.train.batch_size, a.steps, device))]
        for key, job in (jobs if r % 2 == 0 else jobs[::-1]):  # alternate the order between rounds
            res[key].append(job())
        print(f"round {r + 1}: kinlm {res['kinlm'][-1]:.0f} tok/s, bare {res['bare'][-1]:.0f} tok/s, "
              f"transformers GPT2 bare {res['hf_bare'][-1]:.0f} tok/s, matmul {res['flops'][-1] / 1e9:.1f} GFLOP/s")
    k, b, h, f = (statistics.median(res[x]) for x in ("kinlm", "bare", "hf_bare", "flops"))
    print()
    print(f"kinlm loop / bare loop (same model):        {k / b:.3f}   (goal >= 0.97)")
    print(f"kinlm gpt / transformers GPT2 (bare loops):  {b / h:.3f}")
    print(f"MFU kinlm loop:          {6 * n_params * k / f:.3f}  (6 x {n_params / 1e6:.2f}M x {k:.0f} tok/s / {f / 1e9:.1f} GFLOP/s)")
    print(f"MFU bare loop:           {6 * n_params * b / f:.3f}")
    print(f"MFU transformers GPT2:   {6 * hf_params * h / f:.3f}")
    print(f"data cache: second prepare {second:.3f}s vs first {first:.2f}s, re-tokenized: {not again.cache_hit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
