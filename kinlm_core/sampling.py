"""Sampling helpers shared by generators (public API; imports torch)."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """(B, V) logits -> (B, V) logits with temperature applied and tokens outside top-k / top-p at -inf."""
    logits = logits / max(temperature, 1e-8)
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def apply_repetition_penalty(logits: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style: divide positive (multiply negative) logits of tokens already in ``ids`` (B, T)."""
    if penalty == 1.0:
        return logits
    prev = torch.gather(logits, -1, ids)
    return logits.scatter(-1, ids, torch.where(prev > 0, prev / penalty, prev * penalty))


def pick(logits: torch.Tensor, opts, gen: torch.Generator) -> torch.Tensor:
    """Choose the next token (B, 1) from (B, V) logits with the generator options."""
    if opts.temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits.float(), opts.temperature, opts.top_k, opts.top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=gen)


@torch.no_grad()
def generate_ids(model, ids: torch.Tensor, opts, forward=None) -> torch.Tensor:
    """Append ``opts.max_new_tokens`` tokens to ids (1, T); ``forward(ids) -> logits (1, T, V)``
    defaults to the model's. Uses its own seeded generator, never the global RNG."""
    gen = torch.Generator(device=ids.device).manual_seed(opts.seed if opts.seed is not None else 0)
    forward = forward or (lambda x: model(x).logits)
    block = getattr(model, "block_size", None)
    penalty = getattr(opts, "repetition_penalty", 1.0)
    start = ids.size(1)
    for _ in range(opts.max_new_tokens):
        ctx = ids if block is None else ids[:, -block:]
        logits = forward(ctx)[:, -1, :]
        logits = apply_repetition_penalty(logits, ids[:, start:], penalty) if ids.size(1) > start else logits
        ids = torch.cat([ids, pick(logits, opts, gen)], dim=1)
    return ids


def prompt_ids(tokenizer, prompt: str, device) -> torch.Tensor:
    ids = tokenizer.encode(prompt) or ([tokenizer.eos_id] if tokenizer.eos_id is not None else [0])
    return torch.tensor([ids], dtype=torch.long, device=device)


def generate_text(model, tokenizer, prompt: str, opts, forward=None) -> str:
    device = next(model.parameters()).device
    ids = prompt_ids(tokenizer, prompt, device)
    base = forward or (lambda x: model(x).logits)
    out = generate_ids(model, ids, opts, lambda x: base(x)[..., : tokenizer.vocab_size])  # never a padding id
    return tokenizer.decode(out[0, ids.size(1):].tolist())
