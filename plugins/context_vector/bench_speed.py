"""Training throughput: context_vector vs the `gpt` baseline at equal parameters, 64-token windows.

Both models are the pair in specs/context_vector_vs_gpt/ (vocabulary 1,000): context_vector at the
paper's size (d_e 256, d_h 512, 6 layers, d_c 256, 2.74M parameters) and gpt with d_model 256,
3 layers, 4 heads (2.65M). One optimizer step = forward + backward + Adam on a (batch, 64) batch of
random tokens in training mode (dropout 0.1 on). Steps of the models alternate; the figure is the
median step time after ``--warmup`` steps. context_vector is timed with each loop of ``--loops``
(TorchScript, eager, and each token's step compiled: the GPU's path, whose compilation falls in the
warm-up steps), so the table shows what each buys against the others. Also timed: eval-mode forward
(scoring) throughput.

    flock /tmp/kinlm-cpu.lock python plugins/context_vector/bench_speed.py [--steps 10] [--batch 32] [--loops script,compiled]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F


def build_models(vocab: int, loops=("script", "eager", "compiled")) -> dict:
    from kinlm_core import component

    from kinlm_context_vector.config import ContextVectorConfig

    gpt = component("model", "gpt")(d_model=256, n_layer=3, n_head=4, block_size=64, dropout=0.1)
    models = {f"context_vector ({loop})": ContextVectorConfig(loop=loop).build(vocab) for loop in loops}
    models["gpt"] = gpt.build(vocab)
    return models


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--loops", default="script,eager,compiled", help="context_vector loops to time, comma-separated")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2: the published figures' setting)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    models = build_models(a.vocab, a.loops.split(","))
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    x = torch.randint(0, a.vocab, (a.batch, a.block + 1))
    train_t = {k: [] for k in models}
    eval_t = {k: [] for k in models}
    for i in range(a.warmup + a.steps):
        for k, m in models.items():
            m.train()
            t0 = time.perf_counter()
            logits = m(x[:, :-1]).logits[..., : a.vocab]
            loss = F.cross_entropy(logits.reshape(-1, a.vocab), x[:, 1:].reshape(-1))
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            t1 = time.perf_counter()
            m.eval()
            with torch.no_grad():
                m(x[:, :-1])
            t2 = time.perf_counter()
            if i >= a.warmup:
                train_t[k].append(t1 - t0)
                eval_t[k].append(t2 - t1)
    tokens = a.batch * a.block
    gpt_train = tokens / statistics.median(train_t["gpt"])
    gpt_eval = tokens / statistics.median(eval_t["gpt"])
    print(f"torch {torch.__version__}, {a.threads} threads, batch {a.batch} x {a.block} tokens, vocab {a.vocab}, "
          f"median of {a.steps} steps after {a.warmup} warm-up")
    print("| model | parameters | train tok/s | train vs gpt | eval-forward tok/s | eval vs gpt |")
    print("|---|---|---|---|---|---|")
    for k, m in models.items():
        tr, ev = tokens / statistics.median(train_t[k]), tokens / statistics.median(eval_t[k])
        n = sum(p.numel() for p in m.parameters())
        print(f"| {k} | {n / 1e6:.2f}M | {tr:,.0f} | {tr / gpt_train:.2f}x | {ev:,.0f} | {ev / gpt_eval:.2f}x |")


if __name__ == "__main__":
    main()
