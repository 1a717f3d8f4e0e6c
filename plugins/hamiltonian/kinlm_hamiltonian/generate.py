"""Generators of the hamiltonian plugin (torch code; the configs live in config.py).

- :func:`sample`: temperature, repetition penalty over every generated token, top-k, top-p;
  optionally with a steering vector (:func:`steer`).
- :func:`least_action`: top-c candidates, each scored by the mean over itself and a greedy
  look-ahead of (-log p + penalty if the token repeats a recent one); least action wins.
- :func:`flow`: top-c candidates scored by -log p + repeat penalty + w (1 - cos(h_before, h_after)).

Token choice is the core sampler's (``kinlm_core.sampling``: one temperature / top-k / top-p /
repetition penalty for every generator). ``sample`` and ``least_action`` feed the model through
``kinlm_core.sampling.Decoder``, i.e. the model's KV cache and momentum state: one new token per
step. ``flow`` needs the final hidden state of every candidate and re-encodes the context (cropped
to ``model.block_size``). None proposes padded vocabulary rows (ids >= tokenizer.vocab_size).
Every function returns only the continuation text.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from kinlm_core.sampling import Decoder, apply_repetition_penalty, choose


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model):
    return next(model.parameters()).device


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        if tokenizer.eos_id is None:
            raise ValueError("empty prompt and the tokenizer has no eos_id to start from")
        ids = [tokenizer.eos_id]
    return list(ids)


def _next_logits(model, ids: list[int] | torch.Tensor, vocab: int, **kw):
    """Logits (N, V) at the last position of the context(s), cropped to block_size, padded rows at -inf."""
    x = ids if torch.is_tensor(ids) else torch.tensor([ids], device=_device(model))
    out = model(x[:, -model.block_size:], **kw)
    logits = out.logits[:, -1].float()
    logits[:, vocab:] = float("-inf")
    return logits, out


def sample_next(logits, generated: list[int], temperature: float, top_k, top_p, repetition_penalty: float,
                generator=None) -> int:
    """One token from logits (1, V): the repetition penalty over every token generated so far
    (positive logits divided, negative multiplied), then the core's temperature, top-k and top-p."""
    if generated and repetition_penalty != 1.0:
        seen = torch.tensor([sorted(set(generated))], device=logits.device)
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    return int(choose(logits, temperature, top_k, top_p, generator))


def sample(model, tokenizer, prompt: str, *, max_new_tokens: int, temperature: float = 0.7, top_k=50, top_p=None,
           repetition_penalty: float = 1.2, seed=None, steer=None, steer_target: str = "q") -> str:
    """Plain sampling (``steer=None``) or steered sampling; returns the continuation text."""
    device = _device(model)
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    new = []
    kw = {} if steer is None else {"steer": steer, "steer_target": steer_target}
    with _eval_mode(model):
        dec = Decoder(model, vocab_size=tokenizer.vocab_size, **kw)
        logits = dec.prefill(torch.tensor([_prompt_ids(tokenizer, prompt)], device=device))
        for i in range(max_new_tokens):
            new.append(sample_next(logits, new, temperature, top_k, top_p, repetition_penalty, gen))
            if i + 1 < max_new_tokens:
                logits = dec.step(torch.tensor([[new[-1]]], device=device))
    return tokenizer.decode(new)


def concept_vector(model, tokenizer, word: str, leading_space: bool = False):
    """The tied output-head row (= q embedding) of the first token of ``word``: (C,)."""
    ids = tokenizer.encode((" " + word) if leading_space else word)
    if not ids:
        raise ValueError(f"steer target {word!r} encodes to no tokens")
    return model.head.weight[ids[0]].detach()


def steer(model, tokenizer, cfg, prompt: str) -> str:
    """Sampling with strength x concept_vector(target) added at every position (to q or to the velocity)."""
    vec = None
    if cfg.target:
        vec = cfg.strength * concept_vector(model, tokenizer, cfg.target, cfg.leading_space)
    return sample(model, tokenizer, prompt, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                  top_k=cfg.top_k, top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty, seed=cfg.seed,
                  steer=vec, steer_target=cfg.steer_target)


def _top_candidates(logits, c: int):
    """-log p and ids of the c most likely tokens: two lists."""
    logp = logits.log_softmax(-1)[0]
    top = torch.topk(logp, min(c, int(torch.isfinite(logp).sum())))
    return [-max(v, math.log(1e-9)) for v in top.values.tolist()], top.indices.tolist()


def least_action(model, tokenizer, cfg, prompt: str) -> str:
    """Each step: for the top-c candidates roll out ``lookahead`` greedy tokens (all candidates in one
    batch); action = mean over the 1 + lookahead tokens of (-log p + repeat_penalty if the token repeats
    one of the last ``repeat_window``); append the candidate with the least action."""
    device, V = _device(model), tokenizer.vocab_size
    ids = _prompt_ids(tokenizer, prompt)
    start = len(ids)
    with _eval_mode(model):
        main = Decoder(model, vocab_size=V)
        logits = main.prefill(torch.tensor([ids], device=device))
        for i in range(cfg.max_new_tokens):
            nll, cands = _top_candidates(logits, cfg.candidates)
            window = ids[-cfg.repeat_window:] if cfg.repeat_window else []
            hist = [window + [c] for c in cands]
            action = [n + cfg.repeat_penalty * (c in window) for n, c in zip(nll, cands)]
            if cfg.lookahead:  # roll every candidate out greedily, all in one batch with its own state
                roll = Decoder(model, vocab_size=V)
                ctx = torch.tensor(ids, device=device).repeat(len(cands), 1)
                step_logits = roll.prefill(torch.cat([ctx, torch.tensor(cands, device=device)[:, None]], dim=1))
                for j in range(cfg.lookahead):
                    logp, best = step_logits.log_softmax(-1).max(dim=-1)
                    for c, (lp, b) in enumerate(zip(logp.tolist(), best.tolist())):
                        recent = hist[c][-cfg.repeat_window:] if cfg.repeat_window else []
                        action[c] += -max(lp, math.log(1e-9)) + cfg.repeat_penalty * (b in recent)
                        hist[c].append(b)
                    if j + 1 < cfg.lookahead:
                        step_logits = roll.step(best[:, None])
            scores = [a / (1 + cfg.lookahead) for a in action]
            ids.append(cands[min(range(len(cands)), key=scores.__getitem__)])
            if i + 1 < cfg.max_new_tokens:
                logits = main.step(torch.tensor([[ids[-1]]], device=device))
    return tokenizer.decode(ids[start:])


def flow(model, tokenizer, cfg, prompt: str) -> str:
    """Each step: energy = -log p + repeat_penalty (if in the last ``repeat_window`` tokens)
    + momentum_weight * (1 - cos(h_last, h_cand)), h = final-norm hidden state at the last position
    before / after appending the candidate (candidates in one batch); append the least-energy candidate."""
    device, V = _device(model), tokenizer.vocab_size
    ids = _prompt_ids(tokenizer, prompt)
    start = len(ids)
    with _eval_mode(model):
        for _ in range(cfg.max_new_tokens):
            logits, out = _next_logits(model, ids, V, output_hidden_states=True)
            h_last = out.hidden_states[-1][:, -1]                         # (1, C)
            nll, cands = _top_candidates(logits, cfg.candidates)
            window = ids[-cfg.repeat_window:] if cfg.repeat_window else []
            ctx = torch.tensor(ids[-model.block_size:], device=device).repeat(len(cands), 1)
            x = torch.cat([ctx, torch.tensor(cands, device=device)[:, None]], dim=1)[:, -model.block_size:]
            h_cand = model(x, output_hidden_states=True).hidden_states[-1][:, -1]  # (c, C)
            turn = 1.0 - F.cosine_similarity(h_last.float(), h_cand.float(), dim=-1)
            energy = [n + cfg.repeat_penalty * (c in window) + cfg.momentum_weight * t
                      for n, c, t in zip(nll, cands, turn.tolist())]
            ids.append(cands[min(range(len(cands)), key=energy.__getitem__)])
    return tokenizer.decode(ids[start:])
