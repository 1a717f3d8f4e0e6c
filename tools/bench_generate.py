"""kinlm generate vs transformers generate (KV cache) on the same weights.

For each shape the tool builds the `gpt` baseline with random weights, converts it to
transformers' GPT2LMHeadModel (kinlm_core.engine.export: the same weights), and times greedy
generation of a 16-token prompt at two generated lengths, in alternating order, best of
``--rounds``:

- kinlm: ``kinlm_core.sampling.generate_ids`` (what `kinlm generate` runs: static decoding through
  gpt's ``decode_step``, no host read per token; ``--compile``: its step compiled);
- kinlm old: the same with ``static=False``, the growing-cache path (a ``bool`` read per token), so
  the ratio new / old is measured in the same process (issue 34 item 5);
- transformers: ``model.generate(do_sample=False, use_cache=True)``.

It checks that both produce the same tokens, and prints tokens/s, the ratio kinlm / transformers
(> 1: kinlm faster), and the per-token time at both lengths (flat = the cost of a token does not
grow with the text already generated). ``--batch N`` times N samples of one prompt at once.
Neither side stops at the end-of-text id here (kinlm: no ``eos_id``; transformers:
``eos_token_id=None``), so every call generates the same number of tokens; that both stop alike
is tested in tests/test_generate.py.

    flock /tmp/kinlm-cpu.lock python tools/bench_generate.py
"""

from __future__ import annotations

import argparse
import os
import time
from types import SimpleNamespace

import torch

SHAPES = [  # (layers, d_model, heads, context)
    (4, 128, 4, 128),
    (6, 384, 6, 256),
    (6, 384, 6, 1024),
]


class _Tok:
    vocab_size, eos_id, bos_id, pad_id = 50257, 50256, None, None


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_shape(layers, d, heads, context, vocab, prompt_len, rounds, batch, compile_step=False) -> dict:
    from kinlm_core.builtins.models import GPTConfig
    from kinlm_core.engine.export import gpt_to_transformers
    from kinlm_core.sampling import generate_ids

    torch.manual_seed(0)
    tok = _Tok()
    tok.vocab_size, tok.eos_id = vocab, vocab - 1
    model = GPTConfig(n_layer=layers, n_head=heads, d_model=d, block_size=context).build(vocab).eval()
    hf = gpt_to_transformers(model, tok)
    prompt = torch.randint(0, vocab, (1, prompt_len)).expand(batch, -1).contiguous()
    lengths = (context // 4, context - prompt_len)
    out = {"shape": f"{layers} layers, d {d}, context {context}", "lengths": lengths}

    def kinlm(n, static=True):
        opts = SimpleNamespace(temperature=0.0, top_k=None, top_p=None, seed=0, max_new_tokens=n)
        return generate_ids(model, prompt, opts, vocab_size=vocab, eos_id=eos, static=static,
                            compile_step=compile_step and static)

    def old(n):
        return kinlm(n, static=False)

    def transformers(n):
        with torch.inference_mode():
            return hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                               eos_token_id=None, pad_token_id=0)

    eos = None  # fixed length: no stop (so the three generate the same number of tokens)
    same = torch.equal(kinlm(lengths[0]), transformers(lengths[0]))  # also a warm-up (and the compile)
    same_old = torch.equal(kinlm(lengths[0]), old(lengths[0]))
    for n in lengths:
        times = {kinlm: [], old: [], transformers: []}
        for r in range(rounds):
            order = [kinlm, old, transformers]
            for fn in order[r % 3:] + order[:r % 3]:  # each first in turn
                times[fn].append(_time(lambda: fn(n)))
        out[n] = {"kinlm_s": min(times[kinlm]), "old_s": min(times[old]), "hf_s": min(times[transformers])}
    out["same_tokens"], out["same_as_old"] = same, same_old
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=50257, help="GPT-2's vocabulary by default")
    ap.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    ap.add_argument("--batch", type=int, default=1, help="samples of one prompt generated together")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                    help="torch threads, pinned (default: $OMP_NUM_THREADS, else 2: the published figures' setting)")
    ap.add_argument("--shapes", default="all", help="comma-separated row numbers (1-3) or 'all'")
    ap.add_argument("--compile", action="store_true", help="compile kinlm's static decode step (torch.compile)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = SHAPES if args.shapes == "all" else [SHAPES[int(i) - 1] for i in args.shapes.split(",")]
    print(f"torch {torch.__version__}, {args.threads} threads, vocab {args.vocab}, prompt {args.prompt}, "
          f"batch {args.batch}, best of {args.rounds} rounds, greedy, static step "
          f"{'compiled' if args.compile else 'eager'}")
    print("| shape | generated | kinlm tok/s | kinlm old tok/s | **new / old** | transformers tok/s | "
          "kinlm / transformers | kinlm ms/token | transformers ms/token |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layers, d, heads, context in rows:
        r = bench_shape(layers, d, heads, context, args.vocab, args.prompt, args.rounds, args.batch, args.compile)
        for n in r["lengths"]:
            k, o, h = r[n]["kinlm_s"], r[n]["old_s"], r[n]["hf_s"]
            toks = n * args.batch
            print(f"| {r['shape']} | {n} | {toks / k:,.0f} | {toks / o:,.0f} | **{o / k:.2f}** | {toks / h:,.0f} | "
                  f"{h / k:.2f} | {1000 * k / n:.2f} | {1000 * h / n:.2f} |", flush=True)
        if not r["same_as_old"]:
            print(f"WARNING: {r['shape']}: static decoding and the growing-cache path generated different tokens")
        if not r["same_tokens"]:
            print(f"WARNING: {r['shape']}: kinlm and transformers generated different tokens")


if __name__ == "__main__":
    main()
