"""The built-in objectives at run time, and the helpers every objective shares (public API; imports torch).

An objective turns examples into a batch dict (``collate``) and a batch into a loss with the counts
evaluation needs (``loss``). Shapes: B batch, T input length, T' target length, V vocabulary.

    causal_lm        input_ids = x[:, :-1], labels = x[:, 1:]              loss = mean CE over labels != -100
    span_corruption  input  = text with each noise span replaced by one sentinel, then EOS
                     labels = for each span: its sentinel, the span's tokens; then EOS
                     decoder_input_ids = labels shifted right (start: the pad id, as T5)

Any seq2seq objective (span_corruption here, vt_t5's hybrid_tasks) pads its (source, target) rows
with ``seq2seq_batch`` and scores them with ``seq2seq_loss``; an objective's own per-batch scalars go
in ``LossResult.metrics``, never into the model's output.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F

from .api import IGNORE_INDEX, LossResult, Objective, Tokenizer

# --- shared helpers --------------------------------------------------------------------------------

_NOT_MODEL_INPUTS = {"labels", "target_bytes"}
_FORWARD_KEYS: dict[type, frozenset | None] = {}


def model_inputs(model, batch: dict) -> dict:
    """The batch keys that ``model.forward`` names in its signature (all of them if it takes **kwargs), or
    that the model declares in a ``forward_keys`` attribute (a :class:`kinlm_core.wrapper.ModelWrapper`,
    whose forward takes ``**batch``, declares its inner model's keys)."""
    fwd = model  # the model itself, under DDP (.module) and torch.compile (._orig_mod) wrappers
    while isinstance(inner := getattr(fwd, "_orig_mod", getattr(fwd, "module", None)), torch.nn.Module):
        fwd = inner
    cls = type(fwd)
    if cls not in _FORWARD_KEYS:
        params = inspect.signature(fwd.forward).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        _FORWARD_KEYS[cls] = None if takes_any else frozenset(params)
    names = getattr(fwd, "forward_keys", None) or _FORWARD_KEYS[cls]  # a ModelWrapper declares its keys
    return {k: v for k, v in batch.items()
            if k not in _NOT_MODEL_INPUTS and (names is None or k in names)}


def call_model(model, batch: dict, output_hidden_states: bool = False):
    """``model(**keys it accepts)``; asks for hidden states only when needed."""
    kw = model_inputs(model, batch)
    if output_hidden_states:
        kw["output_hidden_states"] = True
    return model(**kw)


CE_CHUNK_ELEMENTS = 1 << 25
"""Logit elements (rows x V) that :func:`token_nll` turns into float32 at once: 128 MB of float32."""


def _rows_nll(logits, labels):
    """Summed float32 cross-entropy of logit rows (n, V) against labels (n,), ignoring -100."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


def _chunks_nll(logits, labels, chunk: int):
    """:func:`_rows_nll` summed over chunks of ``chunk`` rows (no float32 copy beyond one chunk)."""
    return sum(_rows_nll(logits[a:a + chunk], labels[a:a + chunk]) for a in range(0, logits.size(0), chunk))


class _ChunkedNLL(torch.autograd.Function):
    """Summed cross-entropy of logits (N, V) in any dtype, in float32 one chunk of rows at a time.

    ``F.cross_entropy(logits.float())`` keeps a float32 copy of the logits and saves float32
    log-probabilities for the backward: for a 124M model at batch 16 x 1024 in bf16, 3.3 GB each
    beside the 1.6 GB of bf16 logits. Here no float32 tensor larger than one chunk exists: the
    forward sums the chunks' losses, the backward recomputes each chunk's log-softmax from the saved
    logits and writes its gradient, cast to the logits' dtype, into one tensor of their shape. Each
    row's gradient is computed by the same float32 operations as the unchunked path's; the loss is a
    sum of per-chunk sums (one chunk: the same sum)."""

    @staticmethod
    def forward(ctx, logits, labels, chunk: int):
        ctx.save_for_backward(logits, labels)
        ctx.chunk = chunk
        return _chunks_nll(logits, labels, chunk)

    @staticmethod
    def backward(ctx, grad_total):
        logits, labels = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for a in range(0, logits.size(0), ctx.chunk):
            with torch.enable_grad():
                rows = logits[a:a + ctx.chunk].detach().float().requires_grad_()
                (g,) = torch.autograd.grad(_rows_nll(rows, labels[a:a + ctx.chunk]), rows, grad_total)
            grad[a:a + ctx.chunk] = g                                    # cast to the logits' dtype
        return grad, None, None


def token_nll(logits, labels, chunk_elements: int | None = None):
    """Summed cross-entropy (nats) of logits (B, T, V) against labels (B, T), ignoring -100.

    Computed in float32 without materialising float32 logits: rows go through in chunks of
    ``chunk_elements`` logits (default :data:`CE_CHUNK_ELEMENTS`), and the backward recomputes each
    chunk's softmax instead of keeping float32 log-probabilities (:class:`_ChunkedNLL`). Float32
    logits that fit in one chunk take ``F.cross_entropy`` directly: there is no copy to avoid, and
    the recomputation would cost time for a memory saving of one (N, V) float32 tensor."""
    flat, target = logits.reshape(-1, logits.size(-1)), labels.reshape(-1)  # (B T, V), (B T,)
    chunk = max(1, (chunk_elements or CE_CHUNK_ELEMENTS) // flat.size(1))           # rows a chunk
    if flat.dtype == torch.float32 and flat.size(0) <= chunk:
        return _rows_nll(flat, target)  # nothing to save: no copy to avoid, one chunk (every CPU spec)
    if not (torch.is_grad_enabled() and flat.requires_grad):
        return _chunks_nll(flat, target, chunk)
    return _ChunkedNLL.apply(flat, target, chunk)


def scored(model_out, labels, n_targets=None) -> LossResult:
    """LossResult of a model output against labels aligned with its logits."""
    if n_targets is None:
        n_targets = int((labels != IGNORE_INDEX).sum())
    if model_out.loss is not None:  # a model that computes its own loss (mean over targets)
        nats = model_out.loss.detach() * n_targets
        return LossResult(loss=model_out.loss, nats=nats, targets=n_targets, output=model_out)
    total = token_nll(model_out.logits, labels)
    return LossResult(loss=total / max(n_targets, 1), nats=total.detach(), targets=n_targets, output=model_out)


def pad_id_of(tokenizer: Tokenizer) -> int:
    for i in (tokenizer.pad_id, tokenizer.eos_id):
        if i is not None:
            return int(i)
    return 0


def pad_rows(rows: list, value: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D integer sequences to one length: (ids (B, L), mask (B, L) with 1 on real tokens)."""
    L = length or max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), L), value, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        n = min(len(r), L)
        ids[i, :n] = torch.as_tensor(np.asarray(r[:n], dtype=np.int64))
        mask[i, :n] = 1
    return ids, mask


def document_ids(input_ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """(B, T) index of the document each position belongs to: the number of EOS tokens strictly
    before it (an EOS belongs to the document it ends)."""
    if eos_id is None:
        return torch.zeros_like(input_ids)
    is_eos = (input_ids == eos_id).long()
    return is_eos.cumsum(1) - is_eos


def seq2seq_batch(sources: list, targets: list, pad_id: int, target_bytes: float) -> dict:
    """A T5-style batch from (source ids, target ids) rows, each already ending with its EOS:

        input_ids (B, T)  attention_mask (B, T)          sources, right-padded with pad_id
        labels (B, T')    decoder_attention_mask (B, T') targets, -100 on padding
        decoder_input_ids (B, T')                        labels shifted right, starting with pad_id (T5)
        target_bytes ()                                  UTF-8 bytes the scored targets cover (float64)
    """
    ids, mask = pad_rows(sources, pad_id)                              # (B, T)
    labels, dmask = pad_rows(targets, pad_id)                          # (B, T')
    labels = labels.masked_fill(dmask == 0, IGNORE_INDEX)
    dec = torch.full_like(labels, pad_id)                              # (B, T')
    dec[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec, "decoder_attention_mask": dmask,
            "labels": labels, "target_bytes": torch.tensor(float(target_bytes), dtype=torch.float64)}


def seq2seq_loss(model, batch: dict, output_hidden_states: bool = False, name: str = "this objective") -> LossResult:
    """Mean cross-entropy over a :func:`seq2seq_batch`'s labels; bits per byte over its target bytes.
    Refuses a model whose forward does not take ``decoder_input_ids`` (``name`` says whose batch it is)."""
    if "decoder_input_ids" not in model_inputs(model, batch):
        raise ValueError(f"{name} needs a seq2seq model (its forward must take decoder_input_ids), "
                         f"e.g. a T5 config; got {type(getattr(model, 'module', model)).__name__}")
    r = scored(call_model(model, batch, output_hidden_states), batch["labels"])
    r.bytes = float(batch["target_bytes"])
    return r


# --- causal_lm -------------------------------------------------------------------------------------


class CausalLM(Objective):
    """Next-token prediction on packed rows (B, T+1) or on padded documents."""

    def __init__(self, tokenizer: Tokenizer):
        self.eos, self.pad = tokenizer.eos_id, pad_id_of(tokenizer)

    def collate(self, examples, rng=None) -> dict:
        if isinstance(examples, np.ndarray) and examples.ndim == 2:  # packed rows: no padding
            rows = torch.from_numpy(examples.astype(np.int64))
            x = rows[:, :-1]
            return {"input_ids": x, "labels": rows[:, 1:], "document_ids": document_ids(x, self.eos)}
        ids, mask = pad_rows(list(examples), self.pad)
        real = mask[:, 1:]  # a document of n tokens gives n-1 inputs, each with its next token as label
        labels = ids[:, 1:].masked_fill(real == 0, IGNORE_INDEX)
        x = ids[:, :-1].masked_fill(real == 0, self.pad)
        return {"input_ids": x, "labels": labels, "attention_mask": real, "document_ids": document_ids(x, self.eos)}

    def loss(self, model, batch: dict, output_hidden_states: bool = False) -> LossResult:
        out = call_model(model, batch, output_hidden_states)
        n = batch["labels"].numel() if "attention_mask" not in batch else None
        return scored(out, batch["labels"], n)


# --- span_corruption -------------------------------------------------------------------------------


class SentinelTokenizer(Tokenizer):
    """A tokenizer with ``n`` sentinel ids (``<extra_id_i>`` = base vocab + i) and, when the base has
    none, a padding id after them. Encoding is the base tokenizer's; decoding shows sentinels by name."""

    def __init__(self, base: Tokenizer, n: int):
        self.base, self.n = base, n
        V = base.vocab_size
        self.sentinel_ids = tuple(range(V, V + n))
        self.pad_id = base.pad_id if base.pad_id is not None else V + n
        self.vocab_size = V + n + (base.pad_id is None)
        self.eos_id, self.bos_id = base.eos_id, base.bos_id
        self.fingerprint = f"{base.fingerprint}+sentinels{n}"

    def encode(self, text):
        return self.base.encode(text)

    def encode_batch(self, texts):
        return self.base.encode_batch(texts)

    def decode(self, ids) -> str:
        out, run, V = [], [], self.base.vocab_size
        for i in ids:
            i = int(i)
            if i < V:
                run.append(i)
                continue
            if run:
                out.append(self.base.decode(run))
                run = []
            out.append(f"<extra_id_{i - V}>" if i < V + self.n else "<pad>")
        if run:
            out.append(self.base.decode(run))
        return "".join(out)

    def token_bytes(self) -> list[int]:
        return list(self.base.token_bytes()) + [0] * (self.vocab_size - self.base.vocab_size)


def with_sentinels(tokenizer: Tokenizer, n: int) -> Tokenizer:
    """The tokenizer with at least ``n`` sentinel ids (unchanged if it has them already)."""
    if len(tokenizer.sentinel_ids) >= n:
        return tokenizer
    return SentinelTokenizer(tokenizer, n)


def _random_segmentation(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split n_items into n_segments non-empty runs uniformly at random; the run lengths."""
    cuts = np.zeros(n_items - 1, dtype=bool)
    cuts[:n_segments - 1] = True
    rng.shuffle(cuts)
    return np.bincount(np.concatenate([[0], np.cumsum(cuts)]), minlength=n_segments)


def noise_mask(length: int, density: float, mean_span: float, rng: np.random.Generator) -> np.ndarray:
    """T5's random spans (the algorithm of its original implementation): round(length * density)
    noise tokens in round(noise / mean_span) spans, span and gap lengths drawn by random
    segmentation, the text starting with a gap. Returns a bool mask (length,)."""
    n_noise = min(max(int(round(length * density)), 1), length - 1)
    n_spans = max(int(round(n_noise / mean_span)), 1)
    n_spans = min(n_spans, n_noise, length - n_noise)
    noise = _random_segmentation(n_noise, n_spans, rng)
    keep = _random_segmentation(length - n_noise, n_spans, rng)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for k, z in zip(keep, noise):
        pos += k
        mask[pos:pos + z] = True
        pos += z
    return mask


class SpanCorruption(Objective):
    """T5 span corruption over examples; eval's bits per byte: target nats over the bytes of the spans."""

    def __init__(self, tokenizer: Tokenizer, density: float, mean_span: float):
        if not tokenizer.sentinel_ids:
            raise ValueError("span_corruption needs a tokenizer with sentinel ids (extend_tokenizer adds them)")
        self.tok, self.density, self.mean_span = tokenizer, density, mean_span
        self.sentinels = np.asarray(tokenizer.sentinel_ids, dtype=np.int64)
        self.pad, self.eos = pad_id_of(tokenizer), tokenizer.eos_id
        self.nbytes = np.asarray(tokenizer.token_bytes(), dtype=np.float64)

    def corrupt(self, tokens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """(input ids, target ids, bytes of the masked tokens) for one example."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) < 2:
            raise ValueError("span_corruption needs examples of at least 2 tokens")
        mask = noise_mask(len(tokens), self.density, self.mean_span, rng)
        starts = mask & ~np.concatenate([[False], mask[:-1]])
        n_spans = int(starts.sum())
        if n_spans > len(self.sentinels):
            raise ValueError(f"an example has {n_spans} noise spans but only {len(self.sentinels)} sentinels: "
                             f"raise objective.n_sentinels or lower train.block_size")
        span_no = np.cumsum(starts) - 1
        keep = ~mask | starts  # a span's first position becomes its sentinel in the input
        inp = np.where(starts, self.sentinels[np.maximum(span_no, 0)], tokens)[keep]
        tgt = []
        for j in range(n_spans):
            tgt.append([self.sentinels[j]])
            tgt.append(tokens[mask & (span_no == j)])
        tgt = np.concatenate(tgt) if tgt else np.zeros(0, np.int64)
        if self.eos is not None:
            inp, tgt = np.append(inp, self.eos), np.append(tgt, self.eos)
        return inp, tgt, float(self.nbytes[tokens[mask]].sum())

    def collate(self, examples, rng) -> dict:
        rng = rng if rng is not None else np.random.default_rng(0)
        triples = [self.corrupt(e, rng) for e in examples]
        return seq2seq_batch([t[0] for t in triples], [t[1] for t in triples], self.pad,
                             sum(t[2] for t in triples))

    def loss(self, model, batch: dict, output_hidden_states: bool = False) -> LossResult:
        return seq2seq_loss(model, batch, output_hidden_states, "span_corruption")


