#!/usr/bin/env python3
"""BLiMP benchmark: kinlm's batched scorer against scoring one sentence at a time, in one process.

Both score the same pairs with the same model (a `gpt` of the benchmark's size, random weights,
the byte tokenizer) and must agree on every log-probability; prints pairs/s of each, their ratio,
and the time the batched scorer needs for all 67,000 pairs at that rate.

    python tools/bench_blimp.py [--pairs-per-paradigm 30] [--d-model 128] [--layers 4]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from kinlm_core import blimp
from kinlm_core.builtins.models import GPTConfig
from kinlm_core.data.tokenizers import ByteTokenizer


def one_at_a_time(model, tok, sentences) -> list[float]:
    out = []
    with torch.no_grad():
        for s in sentences:
            ids = [tok.eos_id, *tok.encode(" " + s)][-(model.block_size + 1):]
            logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits[0].float(), -1)
            out.append(float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs-per-paradigm", type=int, default=30)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2: the published figures' setting)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = GPTConfig(n_layer=args.layers, n_head=4, d_model=args.d_model, block_size=256).build(tok.vocab_size).eval()
    pairs = blimp.load_pairs(max_pairs=args.pairs_per_paradigm)
    sentences = [s for p in pairs for s in (p["good"], p["bad"])]
    t = time.perf_counter()
    ref = one_at_a_time(model, tok, sentences)
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    got, _ = blimp.sentence_logprobs(model, tok, sentences, progress=False)
    t_kinlm = time.perf_counter() - t
    worst = max(abs(a - b) for a, b in zip(got, ref))
    assert worst < 1e-3, f"the scorers disagree by {worst} nats"
    n = len(pairs)
    print(f"{n} pairs, gpt d{args.d_model} L{args.layers}, byte tokenizer, {torch.get_num_threads()} threads")
    print(f"one at a time: {n / t_ref:,.0f} pairs/s; kinlm batched: {n / t_kinlm:,.0f} pairs/s; "
          f"ratio {t_ref / t_kinlm:.2f}x; max |difference| {worst:.1e} nats")
    print(f"all 67,000 pairs at the batched rate: {67000 / (n / t_kinlm) / 60:.1f} min")


if __name__ == "__main__":
    main()
