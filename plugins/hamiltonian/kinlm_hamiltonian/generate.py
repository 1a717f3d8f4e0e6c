"""Generators of the hamiltonian plugin (torch code; the configs live in config.py).

- :func:`steer`: the core sampler (``kinlm_core.sampling.generate_texts``: temperature, repetition
  penalty over every generated token, top-k, top-p) with a steering vector passed to every model
  call as a keyword argument;
- :func:`least_action`: top-c candidates, each scored by the mean over itself and a greedy
  look-ahead of (-log p + penalty if the token repeats a recent one); least action wins;
- :func:`flow`: top-c candidates scored by -log p + repeat penalty + w (1 - cos(h_before, h_after)).

``steer`` and ``least_action`` feed the model through ``kinlm_core.sampling.Decoder``, i.e. the
model's KV cache and momentum state: one new token per step. ``flow`` needs the final hidden state
of every candidate and re-encodes the context (cropped to ``model.block_size``). None proposes
padded vocabulary rows (ids >= tokenizer.vocab_size). Every function returns only the continuation
text, ended at the end-of-text token or, past it, with the boundary shown (``stop_at_eos``).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from kinlm_core.sampling import Decoder, continuation_text, generate_text, prompt_ids

MIN_P = 1e-9
"""The source clamps a candidate's probability to this before taking -log p."""


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


def concept_vector(model, tokenizer, word: str, leading_space: bool = False):
    """The tied output-head row (= q embedding) of the first token of ``word``: (C,)."""
    ids = tokenizer.encode((" " + word) if leading_space else word)
    if not ids:
        raise ValueError(f"steer target {word!r} encodes to no tokens")
    return model.head.weight[ids[0]].detach()


def steer_kwargs(model, tokenizer, cfg) -> dict:
    """The model keyword arguments of a steer config: {} without a target or at strength 0 (plain
    sampling, as the source skips the vector then), else the vector and where it is added."""
    if not cfg.target or cfg.strength == 0:
        return {}
    vec = cfg.strength * concept_vector(model, tokenizer, cfg.target, cfg.leading_space)
    return {"steer": vec, "steer_target": cfg.steer_target}


def steer(model, tokenizer, cfg, prompt: str) -> str:
    """The core sampler with strength x concept_vector(target) added at every position (to q or to the velocity)."""
    return generate_text(model, tokenizer, prompt, cfg, model_kwargs=steer_kwargs(model, tokenizer, cfg))


def _top_candidates(logits, c: int):
    """-log p (p clamped to MIN_P) and ids of the c most likely tokens of logits (1, V): two lists."""
    logp = logits.log_softmax(-1)[0]
    top = torch.topk(logp, min(c, int(torch.isfinite(logp).sum())))
    return [-max(v, math.log(MIN_P)) for v in top.values.tolist()], top.indices.tolist()


def _stops(tokenizer, cfg, chosen: int) -> bool:
    """True when a planner ends after appending ``chosen``: the end-of-text id, with ``stop_at_eos``."""
    return cfg.stop_at_eos and tokenizer.eos_id is not None and chosen == tokenizer.eos_id


def least_action(model, tokenizer, cfg, prompt: str) -> str:
    """Each step: for the top-c candidates roll out ``lookahead`` greedy tokens (all candidates in one
    batch); action = mean over the 1 + lookahead tokens of (-log p + repeat_penalty if the token repeats
    one of the last ``repeat_window``); append the candidate with the least action. The roll-outs run
    without end-of-text resets unless ``lookahead_resets`` (the source's do)."""
    device, V = _device(model), tokenizer.vocab_size
    ids = prompt_ids(tokenizer, prompt, device)[0].tolist()
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
                roll = Decoder(model, vocab_size=V, **({} if cfg.lookahead_resets else {"resets": False}))
                ctx = torch.tensor(ids, device=device).repeat(len(cands), 1)
                step_logits = roll.prefill(torch.cat([ctx, torch.tensor(cands, device=device)[:, None]], dim=1))
                for j in range(cfg.lookahead):
                    logp, best = step_logits.log_softmax(-1).max(dim=-1)
                    for c, (lp, b) in enumerate(zip(logp.tolist(), best.tolist())):
                        recent = hist[c][-cfg.repeat_window:] if cfg.repeat_window else []
                        action[c] += -max(lp, math.log(MIN_P)) + cfg.repeat_penalty * (b in recent)
                        hist[c].append(b)
                    if j + 1 < cfg.lookahead:
                        step_logits = roll.step(best[:, None])
            scores = [a / (1 + cfg.lookahead) for a in action]
            ids.append(cands[min(range(len(cands)), key=scores.__getitem__)])
            if _stops(tokenizer, cfg, ids[-1]):
                break
            if i + 1 < cfg.max_new_tokens:
                logits = main.step(torch.tensor([[ids[-1]]], device=device))
    return continuation_text(tokenizer, ids[start:], cfg.stop_at_eos)


def flow(model, tokenizer, cfg, prompt: str) -> str:
    """Each step: energy = -log p + repeat_penalty (if in the last ``repeat_window`` tokens)
    + momentum_weight * (1 - cos(h_last, h_cand)), h = final-norm hidden state at the last position
    before / after appending the candidate (candidates in one batch, without end-of-text resets
    unless ``lookahead_resets``, as the source); append the least-energy candidate."""
    device, V = _device(model), tokenizer.vocab_size
    ids = prompt_ids(tokenizer, prompt, device)[0].tolist()
    start = len(ids)
    cand_kw = {} if cfg.lookahead_resets else {"resets": False}
    with _eval_mode(model):
        for _ in range(cfg.max_new_tokens):
            out = model(torch.tensor([ids[-model.block_size:]], device=device), output_hidden_states=True)
            logits = out.logits[:, -1].float()
            logits[:, V:] = float("-inf")                                 # (1, V_padded): never a padded id
            h_last = out.hidden_states[-1][:, -1]                         # (1, C)
            nll, cands = _top_candidates(logits, cfg.candidates)
            window = ids[-cfg.repeat_window:] if cfg.repeat_window else []
            ctx = torch.tensor(ids[-model.block_size:], device=device).repeat(len(cands), 1)
            x = torch.cat([ctx, torch.tensor(cands, device=device)[:, None]], dim=1)[:, -model.block_size:]
            h_cand = model(x, output_hidden_states=True, **cand_kw).hidden_states[-1][:, -1]  # (c, C)
            turn = 1.0 - F.cosine_similarity(h_last.float(), h_cand.float(), dim=-1)
            energy = [n + cfg.repeat_penalty * (c in window) + cfg.momentum_weight * t
                      for n, c, t in zip(nll, cands, turn.tolist())]
            ids.append(cands[min(range(len(cands)), key=energy.__getitem__)])
            if _stops(tokenizer, cfg, ids[-1]):
                break
    return continuation_text(tokenizer, ids[start:], cfg.stop_at_eos)
