"""Count n-gram language models: the control every language-modelling claim is read against.

A unigram (order 1) or bigram (order 2) with add-k smoothing, **fitted by counting** the training
split's token stream (``data.tokens("train")``: every document of the split in order, EOS tokens
included, as the run's own tokenizer made it; a bigram's pairs run across document boundaries as
that stream does), and evaluated exactly as kinlm evaluates a model: :class:`NGramLM` is a torch
module whose ``forward`` returns :class:`~kinlm_core.api.ModelOutput` logits (normalised
log-probabilities), so :func:`kinlm_core.engine.evaluate.evaluate` scores it with the run's own
objective, batches and split (loss in nats per target token, perplexity, bits per byte).

With V the vocabulary, N the stream's length and c(.) counts in the stream:

- unigram: P(w) = (c(w) + k) / (N + k V), whatever came before;
- bigram: P(w | u) = (c(u w) + k) / (c(u) + k V), with c(u) = the pairs that start with u (a token
  seen only at the stream's end, or never, gets the uniform 1 / V).

``k`` must be > 0 (an unseen token would have probability 0). The default 0.01 is the add-k the
issue that asked for these controls measured (an add-0.01 bigram on Tiny Shakespeare BPE 2,048);
``kinlm eval RUN --ngram 2 --ngram-k K`` evaluates another. The bigram table is dense (V x V
float32: 16 MB at V = 2,048)."""

from __future__ import annotations

import numpy as np
import torch

from .api import ModelOutput

DEFAULT_K = 0.01
MAX_BIGRAM_VOCAB = 16384  # a dense V x V table above this would need over 1 GB


def ngram_log_probs(tokens, vocab_size: int, order: int, k: float = DEFAULT_K) -> torch.Tensor:
    """The add-k log-probabilities counted from a 1-D token stream: (V,) for order 1, (V, V) for
    order 2 (row u: log P(. | u))."""
    if order not in (1, 2):
        raise ValueError(f"n-gram order must be 1 or 2, got {order}")
    if not k > 0:
        raise ValueError(f"n-gram add-k must be > 0, got {k}")
    toks = np.asarray(tokens, dtype=np.int64)
    V = int(vocab_size)
    if toks.size and (toks.min() < 0 or toks.max() >= V):
        raise ValueError(f"token ids outside the vocabulary of {V}")
    if order == 1:
        counts = np.bincount(toks, minlength=V).astype(np.float64)
        return torch.from_numpy(np.log((counts + k) / (counts.sum() + k * V))).float()
    if V > MAX_BIGRAM_VOCAB:
        raise ValueError(f"a bigram over a vocabulary of {V} needs a dense {V} x {V} table; at most "
                         f"{MAX_BIGRAM_VOCAB} is supported")
    pairs = np.bincount(toks[:-1] * V + toks[1:], minlength=V * V).astype(np.float64).reshape(V, V)
    rows = pairs.sum(axis=1, keepdims=True)
    return torch.from_numpy(np.log((pairs + k) / (rows + k * V))).float()


class NGramLM(torch.nn.Module):
    """A fitted count model behind kinlm's model interface: ``forward(input_ids)`` -> logits
    (B, T, V), position t holding log P(token t+1 | token t) (bigram) or log P(token) (unigram)."""

    def __init__(self, log_probs: torch.Tensor, order: int, k: float):
        super().__init__()
        self.order, self.k = order, k
        self.vocab_size = int(log_probs.shape[-1])
        self.register_buffer("log_probs", log_probs)

    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False) -> ModelOutput:
        if self.order == 1:
            B, T = input_ids.shape
            return ModelOutput(logits=self.log_probs.expand(B, T, self.vocab_size))
        return ModelOutput(logits=self.log_probs[input_ids])

    def describe(self) -> str:
        return f"{'unigram' if self.order == 1 else 'bigram'} (add-{self.k:g})"


def fit_ngram(data, order: int, k: float = DEFAULT_K) -> NGramLM:
    """Count an n-gram on ``data``'s training split (a prepared data source: its tokenizer's
    vocabulary, ``tokens("train")``)."""
    return NGramLM(ngram_log_probs(data.tokens("train"), data.tokenizer.vocab_size, order, k), order, k)


def evaluate_ngram(spec, data, order: int, k: float, split: str, batches: int | None, device="cpu") -> dict:
    """A count n-gram fitted on ``data``'s training split, evaluated on ``split`` with the run's
    objective (a causal LM's), batch size and seed, as ``kinlm eval`` evaluates the run's model."""
    from .engine.evaluate import evaluate

    obj = spec.objective
    if obj.type != "causal_lm":
        raise ValueError(f"an n-gram control predicts the next token; this run's objective is {obj.type!r}, "
                         "not causal_lm")
    model = fit_ngram(data, order, k).to(device)
    r = evaluate(model, obj.build(data.tokenizer), data, split, obj.unit(), spec.train.batch_size, batches,
                 torch.device(device), obj.bpb, seed=spec.seed)
    return {**r, "model": model.describe(), "order": order, "k": k}
