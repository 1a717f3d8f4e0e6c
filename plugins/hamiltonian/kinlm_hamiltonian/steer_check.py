"""Measure steering: how the target's frequency in samples moves with the strength.

For each strength s and seed, sample a continuation with the `steer` generator, then report
- ``expected``: the mean probability the steered model gives the target's token at each
  generated position (the expected frequency of that token; low-variance), and
- ``count``: occurrences of the target word in the sampled text (what a reader sees).

    python -m kinlm_hamiltonian.steer_check RUN_DIR --target love --strengths=-2,0,2 --seeds 8
"""

from __future__ import annotations

import argparse
import json
import re


def steer_frequencies(model, tokenizer, target: str, strengths, seeds, prompt: str = "\n",
                      max_new_tokens: int = 60, leading_space: bool = False, steer_target: str = "q") -> dict:
    """{strength: {"expected": ..., "count": ...}} averaged over ``seeds``; each sample is one
    stream of ``max_new_tokens`` tokens (past any end of text)."""
    import torch

    from kinlm_core.sampling import continuation_text, generate_ids, prompt_ids

    from .config import SteerConfig
    from .generate import steer_kwargs

    tid = tokenizer.encode((" " + target) if leading_space else target)[0]
    word = re.compile(rf"\b{re.escape(target.strip())}\b", re.IGNORECASE)
    start = prompt_ids(tokenizer, prompt, next(model.parameters()).device)
    was_training = model.training
    model.eval()
    out = {}
    for s in strengths:
        expected, count = [], []
        for seed in seeds:
            cfg = SteerConfig(prompt=prompt, target=target, strength=s, max_new_tokens=max_new_tokens, seed=seed,
                              leading_space=leading_space, steer_target=steer_target, stop_at_eos=False)
            kw = steer_kwargs(model, tokenizer, cfg)
            ids = generate_ids(model, start, cfg, vocab_size=tokenizer.vocab_size, model_kwargs=kw)  # (1, T + n)
            text = continuation_text(tokenizer, ids[0, start.size(1):].tolist(), stop_at_eos=False)
            with torch.no_grad():
                logits = model(ids[:, -model.block_size:], **kw).logits
            expected.append(torch.softmax(logits[0, -max_new_tokens - 1:-1].float(), -1)[:, tid].mean().item())
            count.append(len(word.findall(text)))
        out[s] = {"expected": sum(expected) / len(expected), "count": sum(count) / len(count)}
    model.train(was_training)
    return out


def main(argv=None) -> int:
    from kinlm_core import load_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--target", required=True)
    ap.add_argument("--strengths", default="-2,-0.5,0,0.5,2", help="comma-separated strengths")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--prompt", default="\n")
    ap.add_argument("--leading-space", action="store_true")
    ap.add_argument("--steer-target", choices=["q", "momentum"], default="q")
    a = ap.parse_args(argv)
    run = load_run(a.run_dir)
    res = steer_frequencies(run.model, run.tokenizer, a.target, [float(s) for s in a.strengths.split(",")],
                            range(a.seeds), a.prompt, a.max_new_tokens, a.leading_space, a.steer_target)
    for s, r in res.items():
        print(f"strength {s:+6.2f}  expected frequency {r['expected']:.5f}  word count per sample {r['count']:.2f}")
    print(json.dumps({str(k): v for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
