"""The one sampler every generator reuses (public API; imports torch).

Two layers:

- token choice: :func:`filter_logits` (temperature, top-k, top-p), :func:`apply_repetition_penalty`,
  :func:`choose` / :func:`pick` (greedy at temperature 0, else a draw from a seeded generator);
- incremental logits: :class:`Decoder` gives next-token logits for a batch of contexts, through the
  model's decoding protocol ``model.decode(input_ids, state=None) -> (logits, state)`` when it has one
  (a KV cache, a recurrent state: one new token per step), and by re-running the context otherwise.

Context limit: a model with an int ``block_size`` never sees more than its last ``block_size`` tokens.
When a decoding model's state is full, the decoder prefills the last ``block_size`` tokens again, so
its logits are exactly those of the re-running path. ``block_size = None`` means no limit: never cropped.

:func:`generate_ids` / :func:`generate_texts` are the `sample` generator: several samples of one
prompt in one batch (``num_samples``), each from its own row of one seeded generator. A generator
that steers the model passes its keyword arguments through (``model_kwargs``: they reach every
``forward`` / ``decode`` call).

Static decoding: a model with ``decode_step(input_ids (B, 1), pos, state) -> logits (B, V)`` (``pos`` a
0-dim long tensor on the device, ``state`` the one its ``decode`` prefilled, written in place; the
`gpt` baseline has it) is decoded by :func:`generate_ids` without a host sync per token: the position
lives on the device, the repetition penalty reads a (B, V) mask of the tokens seen instead of the
generated ids, and the end-of-text test is read every :data:`EOS_CHECK_EVERY` tokens (the result is cut
where the last row ended, as if read every token). Every step has the same shapes, so
``compile_step=True`` compiles it once (``torch.compile``). Same tokens as the growing-cache path
(tested); ``static=False`` forces that path.

End of text: like transformers' ``generate``, a row is finished when it generates the tokenizer's
``eos_id`` (``stop_at_eos``, the default); the text ends there. With ``stop_at_eos=False`` generation
goes on past it and :func:`continuation_text` shows every boundary as :data:`END_OF_TEXT`.
"""

from __future__ import annotations

import weakref

import torch

EOS_CHECK_EVERY = 16
"""Static decoding reads the rows' end-of-text flags on the host once per this many tokens."""


# --- choosing a token ---------------------------------------------------------------------------


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """(B, V) logits -> (B, V) logits / temperature, tokens outside top-k / top-p at -inf.

    top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p``: a token is
    dropped when the mass of the tokens ranked above it already exceeds ``top_p`` (so the token that
    crosses the threshold is kept, and the most likely token always is)."""
    logits = logits / max(temperature, 1e-8)
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def apply_repetition_penalty(logits: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style, per row: divide positive (multiply negative) logits (B, V) of tokens in ``ids`` (B, T)."""
    if penalty == 1.0 or ids.numel() == 0:
        return logits
    prev = torch.gather(logits, -1, ids)
    return logits.scatter(-1, ids, torch.where(prev > 0, prev / penalty, prev * penalty))


def choose(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token (B, 1) from (B, V) logits: argmax at temperature 0, else a draw after :func:`filter_logits`."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits.float(), temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def pick(logits: torch.Tensor, opts, gen: torch.Generator | None) -> torch.Tensor:
    """:func:`choose` with a generator config's ``temperature``, ``top_k``, ``top_p``."""
    return choose(logits, opts.temperature, opts.top_k, opts.top_p, gen)


# --- incremental logits -------------------------------------------------------------------------


class Decoder:
    """Next-token logits for a batch of growing contexts.

    ``prefill(ids (B, T)) -> (B, V)`` starts (or restarts) the contexts; ``step(tokens (B, 1)) -> (B, V)``
    appends one token per row. ``ids`` is the whole context so far (B, T_total). Uses
    ``model.decode`` when the model has it and ``forward`` is not given; otherwise re-runs
    ``forward(context) -> logits (B, T, V)`` (default: ``model(context, **model_kwargs).logits``)
    on the context cropped to ``block_size``. ``model_kwargs`` go to ``decode`` / ``forward`` alike
    (e.g. a steering vector). Logits are float32, cut to ``vocab_size`` columns when given (a padded
    vocabulary never proposes padding ids).
    """

    def __init__(self, model, forward=None, vocab_size: int | None = None, **model_kwargs):
        self.model, self.kwargs, self.vocab_size = model, model_kwargs, vocab_size
        self.block = getattr(model, "block_size", None)
        self.stateful = forward is None and callable(getattr(model, "decode", None))
        self.forward = forward or (lambda x: model(x, **model_kwargs).logits)
        self.ids: torch.Tensor | None = None
        self.state = None
        self.in_state = 0  # tokens the state holds

    def _last(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits[:, -1]
        return (logits if self.vocab_size is None else logits[:, : self.vocab_size]).float()

    def _crop(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if self.block is None else ids[:, -self.block:]

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        self.ids = ids
        ctx = self._crop(ids)
        if not self.stateful:
            return self._last(self.forward(ctx))
        logits, self.state = self.model.decode(ctx, None, **self.kwargs)
        self.in_state = ctx.size(1)
        return self._last(logits)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, tokens], dim=1)
        if not self.stateful:
            return self._last(self.forward(self._crop(self.ids)))
        if self.block is not None and self.in_state + tokens.size(1) > self.block:
            return self.prefill(self.ids)  # the state is full: start again from the last block_size tokens
        logits, self.state = self.model.decode(tokens, self.state, **self.kwargs)
        self.in_state += tokens.size(1)
        return self._last(logits)


# --- the `sample` generator ---------------------------------------------------------------------


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


END_OF_TEXT = "<|endoftext|>"
"""Shown where a continuation ends one text and begins the next (generation past the end-of-text id;
GPT-2's own spelling of that token)."""


def can_decode_static(model, forward=None, model_kwargs: dict | None = None) -> bool:
    """True when :func:`generate_ids` decodes ``model`` with its static ``decode_step``: it has one, its
    ``decode`` and an int ``block_size``, no steering keywords are given, and ``decode_step`` comes from
    the class that defines ``decode`` (a subclass that changes ``decode`` does not inherit a step that
    would not match it)."""
    if forward is not None or model_kwargs or not isinstance(getattr(model, "block_size", None), int):
        return False
    if not (callable(getattr(model, "decode_step", None)) and callable(getattr(model, "decode", None))):
        return False

    def owner(name):
        return next((c for c in type(model).__mro__ if name in vars(c)), None)

    return owner("decode_step") is owner("decode")


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its compiled decode_step


def _step_fn(model, compile_step: bool):
    if not compile_step:
        return model.decode_step
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(model.decode_step, dynamic=False)
    return _COMPILED[model]


def _generate_static(model, ids, opts, vocab_size, eos_id, gen, penalty, compile_step) -> torch.Tensor:
    """:func:`generate_ids` through ``model.decode_step``: no host read per token (see the module doc)."""
    B, T = ids.shape
    n = opts.max_new_tokens
    out = torch.empty(B, T + n, dtype=ids.dtype, device=ids.device)
    out[:, :T] = ids
    dec = Decoder(model, None, vocab_size)
    logits = dec.prefill(ids)
    step = _step_fn(model, compile_step)
    pos = torch.tensor(dec.in_state, dtype=torch.long, device=ids.device)
    seen = torch.zeros(B, logits.size(-1), dtype=torch.bool, device=ids.device) if penalty != 1.0 else None
    done = torch.zeros(B, 1, dtype=torch.bool, device=ids.device)
    ended_at = torch.full((B,), n, dtype=torch.long, device=ids.device)  # the step of each row's end-of-text
    for i in range(n):
        if seen is not None and i:
            logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
        tok = pick(logits, opts, gen)                                     # (B, 1)
        if eos_id is not None:
            tok = tok.masked_fill(done, eos_id)
            new = (tok == eos_id) & ~done
            ended_at = torch.where(new.view(-1), i, ended_at)
            done |= new
        out[:, T + i:T + i + 1] = tok
        if seen is not None:
            seen.scatter_(1, tok, True)
        if eos_id is not None and ((i + 1) % EOS_CHECK_EVERY == 0 or i + 1 == n) and bool(done.all()):
            return out[:, :T + int(ended_at.max()) + 1]
        if i + 1 < n:
            if dec.in_state >= dec.block:  # the cache is full: prefill the last block_size tokens again
                logits = dec.prefill(out[:, :T + i + 1])
                pos.fill_(dec.in_state)
            else:
                logits = step(tok, pos, dec.state)
                logits = (logits if vocab_size is None else logits[:, :vocab_size]).float()
                pos += 1
                dec.in_state += 1
    return out


@torch.inference_mode()
def generate_ids(model, ids: torch.Tensor, opts, forward=None, vocab_size: int | None = None,
                 eos_id: int | None = None, model_kwargs: dict | None = None, static: bool | None = None,
                 compile_step: bool = False) -> torch.Tensor:
    """Append up to ``opts.max_new_tokens`` tokens to each row of ids (B, T) -> (B, T + n).

    ``opts``: a generator config (temperature, top_k, top_p, seed, optionally repetition_penalty,
    which counts the tokens each row generated). One ``torch.Generator`` seeded with ``opts.seed``
    (never the global RNG) draws every row. ``forward`` forces the re-running path (see :class:`Decoder`);
    ``model_kwargs`` go to every model call (e.g. a steering vector).

    ``eos_id``: a row that generates it is finished: the rows go on together (each draw as without
    stopping), a finished row's later positions hold ``eos_id``, and generation ends when every row
    is finished, so n may be below ``max_new_tokens``. None: always ``max_new_tokens``.

    ``static`` (None: whenever :func:`can_decode_static`) decodes through the model's ``decode_step``
    (module doc); ``compile_step`` compiles that step. ``static=False``: the growing-cache path.
    """
    was_training = model.training
    model.eval()
    try:
        gen = torch.Generator(device=ids.device).manual_seed(opts.seed if opts.seed is not None else 0)
        penalty = getattr(opts, "repetition_penalty", 1.0)
        if static is None:
            static = can_decode_static(model, forward, model_kwargs)
        if static:
            return _generate_static(model, ids, opts, vocab_size, eos_id, gen, penalty, compile_step)
        B, T = ids.shape
        out = torch.empty(B, T + opts.max_new_tokens, dtype=ids.dtype, device=ids.device)
        out[:, :T] = ids
        done = torch.zeros(B, 1, dtype=torch.bool, device=ids.device)
        dec = Decoder(model, forward, vocab_size, **(model_kwargs or {}))
        logits = dec.prefill(ids)
        for i in range(opts.max_new_tokens):
            if penalty != 1.0 and i:
                logits = apply_repetition_penalty(logits, out[:, T:T + i], penalty)
            tok = pick(logits, opts, gen)                                 # (B, 1)
            if eos_id is not None:
                tok = tok.masked_fill(done, eos_id)
                done |= tok == eos_id
            out[:, T + i:T + i + 1] = tok
            if eos_id is not None and bool(done.all()):
                return out[:, :T + i + 1]
            if i + 1 < opts.max_new_tokens:
                logits = dec.step(tok)
        return out
    finally:
        model.train(was_training)


def prompt_ids(tokenizer, prompt: str, device, num_samples: int = 1) -> torch.Tensor:
    """(num_samples, T) prompt ids; an empty prompt starts from the end-of-text id (or 0)."""
    ids = tokenizer.encode(prompt) or ([tokenizer.eos_id] if tokenizer.eos_id is not None else [0])
    return torch.tensor([ids], dtype=torch.long, device=device).expand(num_samples, -1).contiguous()


def continuation_text(tokenizer, ids, stop_at_eos: bool = True) -> str:
    """The text of generated ids: up to the first end-of-text id when ``stop_at_eos``; otherwise
    every text decoded on its own and the boundaries shown as :data:`END_OF_TEXT` (a tokenizer's
    decode drops the special id, which would glue the texts together)."""
    ids = [int(i) for i in ids]
    eos = tokenizer.eos_id
    if eos is None or eos not in ids:
        return tokenizer.decode(ids)
    pieces, cur = [], []
    for i in ids:
        if i == eos:
            pieces.append(cur)
            cur = []
        else:
            cur.append(i)
    pieces.append(cur)
    if stop_at_eos:
        return tokenizer.decode(pieces[0])
    return END_OF_TEXT.join(tokenizer.decode(p) for p in pieces)


def generate_texts(model, tokenizer, prompt: str, opts, forward=None, model_kwargs: dict | None = None) -> list[str]:
    """``opts.num_samples`` (default 1) continuations of ``prompt``, generated as one batch, each
    ending at the end-of-text token unless ``opts.stop_at_eos`` is false (see :func:`continuation_text`)."""
    stop = getattr(opts, "stop_at_eos", True)
    ids = prompt_ids(tokenizer, prompt, _model_device(model), getattr(opts, "num_samples", 1))
    out = generate_ids(model, ids, opts, forward, vocab_size=tokenizer.vocab_size,
                       eos_id=tokenizer.eos_id if stop else None, model_kwargs=model_kwargs)
    return [continuation_text(tokenizer, row[ids.size(1):].tolist(), stop) for row in out]


def generate_text(model, tokenizer, prompt: str, opts, forward=None, model_kwargs: dict | None = None) -> str:
    """The first continuation of :func:`generate_texts`."""
    return generate_texts(model, tokenizer, prompt, opts, forward, model_kwargs)[0]
