"""Synthetic diagnostic tasks over integer token ids: the ``synthetic`` data source, the ``ids``
tokenizer that passes ids through, and the ``supervised`` objective that scores only the answers.

How the ids reach the model (the data/tokenizer/objective contract, unchanged):

    synthetic source  one document per example, as text: its T input ids, then its T label ids
                      (the label of input position t; V, one past the task's vocabulary, where
                      nothing is scored), whitespace-separated
    ids tokenizer     "17 3 ..." -> [17, 3, ...]: the ids themselves; vocabulary = largest id in the
                      training documents + 1, and that largest id (V) is the padding id
    supervised        example (2T ids) -> input_ids = ex[:T], labels = ex[T:] with the padding id
                      replaced by -100; loss and accuracy over the labels that remain

So the packing cache stores the tasks like any corpus (keyed on the source's config), and any
kinlm model trains on them unchanged. ``train.block_size`` must hold a whole document:
at least 2 x seq_len - 1 (the specs use 2 x seq_len); the objective says so when it does not.

The tasks (definitions and their sources in docs/diagnostics.md):

    associative_recall  Zoology's multi-query associative recall (MQAR, Arora et al. 2023)
    noisy_recall        MAD's in-context recall with noise pairs (Poli et al. 2024)
    fuzzy_recall        MAD's fuzzy in-context recall (keys and values of 1..k tokens)
    selective_copy      MAD's selective copying
    compression         MAD's compression (read out through the ``compression_readout`` wrapper)
    memorization        MAD's memorization of a fixed key-value map

Torch-free: numpy only, imported inside the methods.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar, Iterable, Iterator, Literal

from pydantic import Field, model_validator

from kinlm_core.api import (IGNORE_INDEX, SPLITS, DataSourceConfig, LossResult, ModelConfig, Objective,
                            ObjectiveConfig, Tokenizer, TokenizerConfig)
from kinlm_core.nested import NestedConfig

TASKS = ("associative_recall", "noisy_recall", "fuzzy_recall", "selective_copy", "compression", "memorization")
IGNORE = -1  # an unscored label inside the generators (written as the task's vocabulary size V)

# the anchors' baseline settings per task (MAD: configs/tasks/*.yml; Zoology: multiquery_ar defaults)
ANCHOR = {
    "associative_recall": dict(vocab_size=8192, seq_len=64, num_kv_pairs=4, n_train=100_000),
    "noisy_recall": dict(vocab_size=32, seq_len=128, noise_vocab_size=16, frac_noise=0.2, n_train=12_800),
    "fuzzy_recall": dict(vocab_size=16, seq_len=128, k_motif_size=3, v_motif_size=3, n_train=12_800),
    "selective_copy": dict(vocab_size=16, seq_len=256, num_tokens_to_copy=16, n_train=12_800),
    "compression": dict(vocab_size=16, seq_len=32, n_train=12_800),
    "memorization": dict(vocab_size=256, seq_len=32, n_train=256),
}
_KNOBS = ("vocab_size", "seq_len", "num_kv_pairs", "noise_vocab_size", "frac_noise", "k_motif_size", "v_motif_size",
          "num_tokens_to_copy", "n_train")
_DEFAULT_KNOB = dict(num_kv_pairs=4, noise_vocab_size=0, frac_noise=0.0, k_motif_size=1, v_motif_size=1,
                     num_tokens_to_copy=16)


# --- the generators: one example -> (inputs (T,), labels (T,)), labels IGNORE where unscored -------------


def _mqar(rng, V: int, T: int, P: int, power_a: float, random_fill: bool):
    """Zoology's MQAR. Keys from [1, V/2), values from [V/2, V), P distinct of each; the first 2P
    positions hold k_1 v_1 ... k_P v_P. Every key is queried once in the rest of the sequence, at an
    even offset 2g from its start, the gaps g drawn without replacement with p(g) ~ a (g+1)^(a-1)
    (a = power_a; short gaps likely, as repeated bigrams in text). The label at a query's position is
    its value (the model answers right after reading the key). Every other position holds 0, or a
    random id from [0, V) with ``random_fill``."""
    import numpy as np

    half = V // 2
    keys = rng.choice(np.arange(1, half), size=P, replace=False)
    values = rng.choice(np.arange(half, V), size=P, replace=False)
    space = (T - 2 * P) // 2
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    gaps = rng.choice(space, size=P, replace=False, p=p / p.sum())
    x = np.zeros(T, np.int64)
    y = np.full(T, IGNORE, np.int64)
    x[0:2 * P:2], x[1:2 * P:2] = keys, values
    pos = 2 * P + 2 * gaps
    x[pos], y[pos] = keys, values
    if random_fill:
        fill = x == 0
        x[fill] = rng.integers(0, V, size=int(fill.sum()))
    return x, y


def _last(seq: list, tgt: list, T: int, pad: int):
    """The last T+1 tokens of a generated sequence (left-padded with ``pad``), shifted: inputs are
    tokens 0..T-1, the label of position t is the target of token t+1."""
    import numpy as np

    seq, tgt = np.asarray(seq, np.int64), np.asarray(tgt, np.int64)
    if len(seq) < T + 1:
        n = T + 1 - len(seq)
        seq, tgt = np.concatenate([np.full(n, pad), seq]), np.concatenate([np.full(n, IGNORE), tgt])
    seq, tgt = seq[-(T + 1):], tgt[-(T + 1):]
    return seq[:-1], tgt[1:]


def _noisy_recall(rng, V: int, T: int, noise_vocab: int, frac_noise: float):
    """MAD's in-context recall (multi-query) with noise. Vocabulary: keys [0, n/2), values [n/2, n)
    with n = V - noise_vocab, noise [n, V). A sequence of two-token motifs: with probability
    frac_noise two noise tokens, else a random key and its value (fixed within the sequence: a value
    per key is drawn for the sequence). A value is scored when its key appeared before. The last
    motif repeats a key that appeared, and its value is scored. MAD's sequence of T tokens gets one
    leading filler token (V - 1) so that its T inputs and T shifted labels are all kept."""
    import numpy as np

    n = V - noise_vocab
    half = n // 2
    m = T // 2 - 1                                         # motifs before the probe (T tokens in all)
    table = rng.integers(half, n, size=half)               # each key's value in this sequence
    keys = rng.integers(0, half, size=m)
    noise = rng.random(m) < frac_noise if frac_noise > 0 else np.zeros(m, bool)
    noise[rng.integers(m)] = False                         # at least one key-value pair before the probe
    seq = np.stack([keys, table[keys]], 1)                 # (m, 2)
    seq[noise] = rng.integers(n, V, size=(int(noise.sum()), 2))
    tgt = np.full((m, 2), IGNORE, np.int64)
    seen = set()
    for i in np.flatnonzero(~noise):
        k = int(keys[i])
        if k in seen:
            tgt[i, 1] = seq[i, 1]
        seen.add(k)
    probe = int(rng.choice(sorted(seen)))
    seq = np.concatenate([seq.reshape(-1), [probe, table[probe]]])
    tgt = np.concatenate([tgt.reshape(-1), [IGNORE, table[probe]]])
    return _last(seq, tgt, T, pad=V - 1)  # one leading filler token makes the T+1 a shift needs


def _fuzzy_recall(rng, V: int, T: int, kmax: int, vmax: int, test: bool):
    """MAD's fuzzy in-context recall (multi-query). Keys and values are motifs: ordered tuples of
    1..kmax distinct key tokens ([0, n/2)) or 1..vmax distinct value tokens ([n/2, n)), n = V - 1,
    pad = V - 1. Key-value motif pairs follow each other (a key's value fixed within the sequence); a
    value's tokens are scored when its key appeared before. A probe pair is placed at a random point and
    repeated at the end (its value scored). Evaluation instances use keys of exactly kmax tokens, as
    MAD's test set. The sequence is left-padded to T+1."""
    import numpy as np

    n = V - 1
    half = n // 2

    def motif(lo, hi, size):  # `size` distinct ids from [lo, hi), in order (a permutation's prefix)
        while True:
            t = rng.integers(lo, hi, size=size)
            if len(set(t.tolist())) == size:
                return tuple(t.tolist())

    def key_size():
        return kmax if test else int(rng.integers(1, kmax + 1))

    k_probe = motif(0, half, key_size())
    v_probe = motif(half, n, int(rng.integers(1, vmax + 1)))
    probe_len = len(k_probe) + len(v_probe)
    probe_at = int(rng.integers(max(1, T - 2 * probe_len)))
    seq, tgt, kv, added = [], [], {}, False
    while len(seq) < T - probe_len - (kmax + vmax):
        if len(seq) >= probe_at and not added:
            k, v, added = k_probe, v_probe, True
        else:
            k = motif(0, half, key_size())
            v = v_probe if k == k_probe else motif(half, n, int(rng.integers(1, vmax + 1)))
            added = added or k == k_probe
        seen = k in kv
        v = kv.setdefault(k, v)
        seq += list(k) + list(v)
        tgt += [IGNORE] * len(k) + (list(v) if seen else [IGNORE] * len(v))
    kv.setdefault(k_probe, v_probe)
    seq += list(k_probe) + list(kv[k_probe])
    tgt += [IGNORE] * len(k_probe) + list(kv[k_probe])
    return _last(seq, tgt, T, pad=V - 1)


def _selective_copy(rng, V: int, T: int, n_copy: int):
    """MAD's selective copying. Vocabulary [0, V-2), blank V-2, copy token V-1. The n tokens to copy
    with T - 2n - 1 blanks inserted among them (each before a random one of them), then the copy
    token, then n blanks; the label of the i-th trailing blank is the i-th token to copy."""
    import numpy as np

    blank, copy = V - 2, V - 1
    tokens = rng.integers(0, V - 2, size=n_copy)
    n_blank = T - 2 * n_copy - 1
    before = np.bincount(rng.integers(0, n_copy, size=n_blank), minlength=n_copy)  # blanks before token i
    head = np.concatenate([np.concatenate([np.full(b, blank), [t]]) for b, t in zip(before, tokens)])
    x = np.concatenate([head, [copy], np.full(n_copy, blank)]).astype(np.int64)
    y = np.concatenate([np.full(T - n_copy, IGNORE), tokens]).astype(np.int64)
    return x, y


def _compression(rng, V: int, T: int):
    """MAD's compression: T-1 random ids from [0, V-1), then the compression token V-1; the labels
    are the sequence itself (an auto-encoder reconstructs it from its state at the last token), but
    for the compression token's own position (always V-1: MAD scores it, kinlm leaves it out, so that
    every document holds the unscored marker V)."""
    import numpy as np

    x = np.concatenate([rng.integers(0, V - 1, size=T - 1), [V - 1]]).astype(np.int64)
    y = x.copy()
    y[-1] = IGNORE
    return x, y


def _kv_map(V: int, seed: int):
    """MAD's fixed memorization map: keys [0, n/2) paired with a permutation of the values [n/2, n),
    n = V - 1 (V-1 is the insert token); drawn once from ``seed``, the same for every instance."""
    import numpy as np

    n = V - 1
    rng = np.random.default_rng([seed, 7])
    keys = rng.permutation(np.arange(n // 2))
    values = rng.permutation(np.arange(n // 2, n))
    m = min(len(keys), len(values))
    return keys[:m], values[:m]


def _memorization(rng, V: int, T: int, kv):
    """MAD's memorization: T/2 pairs (key, insert token V-1); the label at each insert token is the
    key's value in the fixed map (facts learnt in the weights, nothing to recall from the context)."""
    import numpy as np

    keys, values = kv
    idx = rng.integers(0, len(keys), size=T // 2)
    x = np.stack([keys[idx], np.full(T // 2, V - 1)], 1).reshape(-1)
    y = np.stack([np.full(T // 2, IGNORE), values[idx]], 1).reshape(-1)
    return x.astype(np.int64), y.astype(np.int64)


# --- the data source ---------------------------------------------------------------------------------


class SyntheticConfig(DataSourceConfig):
    """Synthetic diagnostic tasks (Zoology's MQAR and five of MAD's): generated from ``seed``, one document per
    example (its T input ids, then its T label ids), train/validation/test instances disjoint.
    Use with ``{"type": "ids"}`` as tokenizer and ``{"type": "supervised"}`` as objective, and
    ``train.block_size`` = 2 x seq_len. Knobs left at None take the anchor's baseline for the task
    (docs/diagnostics.md)."""

    type: Literal["synthetic"] = "synthetic"
    task: Literal[TASKS] = Field("associative_recall", description="which task: " + ", ".join(TASKS))
    vocab_size: int | None = Field(None, ge=8, description="task vocabulary V, special tokens included (None: the "
                                   "anchor's: MQAR 8192, memorization 256, noisy recall 32, others 16)")
    seq_len: int | None = Field(None, ge=8, description="T, input tokens per example (None: the anchor's: MQAR 64, "
                                "compression and memorization 32, selective copy 256, recall tasks 128)")
    num_kv_pairs: int | None = Field(None, ge=1, description="associative_recall: key-value pairs per example "
                                     "(Zoology sweeps 4..64; needs 4 x pairs <= seq_len; None: 4)")
    power_a: float = Field(0.01, gt=0, le=1, description="associative_recall: power-law exponent of the query "
                           "gaps (Zoology 0.01; 1 = uniform)")
    random_fill: bool = Field(True, description="associative_recall: fill non-query positions with random ids "
                              "(Zoology's random_non_queries), else 0")
    noise_vocab_size: int | None = Field(None, ge=0, description="noisy_recall: ids reserved for noise, part of "
                                         "vocab_size (None: 16)")
    frac_noise: float | None = Field(None, ge=0, lt=1, description="noisy_recall: probability that a motif is "
                                     "noise (MAD 0.2; sweeps 0.4..0.8)")
    k_motif_size: int | None = Field(None, ge=1, description="fuzzy_recall: longest key, in tokens (None: 3)")
    v_motif_size: int | None = Field(None, ge=1, description="fuzzy_recall: longest value, in tokens (None: 3)")
    num_tokens_to_copy: int | None = Field(None, ge=1, description="selective_copy: tokens to copy (None: 16; "
                                           "needs 2 x n + 1 < seq_len)")
    n_train: int | None = Field(None, ge=1, description="training examples, a fixed set seen for many epochs "
                                "(None: the anchor's, MAD 12,800, memorization 256, Zoology 100,000)")
    n_validation: int = Field(500, ge=2, description="validation examples (eval/accuracy is measured on them)")
    n_test: int = Field(1000, ge=2, description="test examples")
    train_targets: Literal["anchor", "answers", "all"] = Field(
        "anchor", description="what training scores: answers (Zoology: the answer positions only), all "
                              "(every next token, as MAD trains its recall tasks), or anchor (the task's source: "
                              "all for noisy_recall and fuzzy_recall, answers otherwise). Evaluation always "
                              "scores the answers")
    seed: int = Field(0, description="seed of the instances (the spec's seed orders and initialises; this one "
                      "draws the task, so seeds of a sweep share one data set)")

    @model_validator(mode="after")
    def _check(self):
        k = self.knobs()
        V, T = k["vocab_size"], k["seq_len"]
        problems = []
        if self.task == "associative_recall":
            if T % 2:
                problems.append(f"seq_len must be even for associative_recall (got {T})")
            if 4 * k["num_kv_pairs"] > T:
                problems.append(f"associative_recall needs 4 x num_kv_pairs <= seq_len "
                                f"(got {k['num_kv_pairs']} pairs, seq_len {T})")
            if V // 2 - 1 < k["num_kv_pairs"]:
                problems.append(f"vocab_size {V} has {V // 2 - 1} keys, fewer than num_kv_pairs {k['num_kv_pairs']}")
        if self.task == "noisy_recall" and V - k["noise_vocab_size"] < 4:
            problems.append(f"noisy_recall needs vocab_size - noise_vocab_size >= 4 (got {V} - {k['noise_vocab_size']})")
        if self.task == "noisy_recall" and k["frac_noise"] > 0 and k["noise_vocab_size"] < 1:
            problems.append("noisy_recall with frac_noise > 0 needs noise_vocab_size >= 1")
        if self.task == "fuzzy_recall" and ((V - 1) // 2 < k["k_motif_size"] or (V - 1) - (V - 1) // 2 < k["v_motif_size"]):
            problems.append(f"fuzzy_recall: vocab_size {V} has too few key or value tokens for motifs of "
                            f"{k['k_motif_size']} and {k['v_motif_size']}")
        if self.task == "fuzzy_recall" and T < 4 * (k["k_motif_size"] + k["v_motif_size"]):
            problems.append(f"fuzzy_recall needs seq_len >= 4 x (k_motif_size + v_motif_size) (got {T})")
        if self.task == "selective_copy" and not 2 * k["num_tokens_to_copy"] + 1 < T:
            problems.append(f"selective_copy needs 2 x num_tokens_to_copy + 1 < seq_len "
                            f"(got {k['num_tokens_to_copy']} tokens, seq_len {T})")
        if self.task == "memorization" and T % 2:
            problems.append(f"seq_len must be even for memorization (got {T})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def knobs(self) -> dict:
        """The task's difficulty settings, None fields replaced by the anchor's baseline."""
        base = {**_DEFAULT_KNOB, **ANCHOR[self.task]}
        if self.task == "noisy_recall":
            base.setdefault("noise_vocab_size", 16)
        out = {k: getattr(self, k) if getattr(self, k) is not None else base.get(k) for k in _KNOBS}
        return out

    def scores_all_in_train(self) -> bool:
        if self.train_targets == "anchor":
            return self.task in ("noisy_recall", "fuzzy_recall")
        return self.train_targets == "all"

    def examples(self, split: str):
        """(inputs (N, T), labels (N, T)) int64 arrays of a split, labels -1 where unscored. Each split
        has its own random stream; an example whose inputs equal one of an earlier split's (train, then
        validation, then test) is drawn again, so the splits are disjoint."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        return _generate(self.model_dump_json(), split)

    def documents(self, split: str) -> Iterator[str]:
        import numpy as np

        V = self.knobs()["vocab_size"]
        x, y = self.examples(split)
        if split == "train" and self.scores_all_in_train():
            y = _next_tokens(x, y)
        y = np.where(y == IGNORE, V, y)
        for xi, yi in zip(x, y):
            yield " ".join(map(str, xi.tolist())) + " " + " ".join(map(str, yi.tolist()))

    def fingerprint(self) -> str:
        # the generators' version is part of the key: bump it when an instance's definition changes
        return hashlib.sha256(("synthetic-v3|" + self.model_dump_json()).encode()).hexdigest()


def _next_tokens(x, y):
    """MAD's training targets for its recall tasks: every position's next input token, and the
    sequence's final answer at the last position. Position 0 (a filler or padding token, followed by
    a random key nothing can predict) is left unscored, so every training document holds the unscored
    marker V and the ``ids`` tokenizer finds the whole vocabulary in the training documents."""
    out = y.copy()
    out[:, :-1] = x[:, 1:]
    out[:, 0] = IGNORE
    return out


_CACHE: dict[tuple[str, str], tuple] = {}


def _generate(cfg_json: str, split: str):
    """The examples of every split up to ``split`` (memoised: splits are drawn in order so that later
    ones can skip the earlier ones' inputs)."""
    import numpy as np

    if (cfg_json, split) in _CACHE:
        return _CACHE[(cfg_json, split)]
    cfg = SyntheticConfig.model_validate_json(cfg_json)
    k = cfg.knobs()
    V, T = k["vocab_size"], k["seq_len"]
    kv = _kv_map(V, cfg.seed) if cfg.task == "memorization" else None
    seen: set[bytes] = set()
    for i, s in enumerate(SPLITS):
        if (cfg_json, s) in _CACHE:  # drawn before: only its inputs are needed, to keep later splits apart
            if s != "test":
                seen.update(x.astype(np.int32).tobytes() for x in _CACHE[(cfg_json, s)][0])
            continue
        n = {"train": k["n_train"], "validation": cfg.n_validation, "test": cfg.n_test}[s]
        rng = np.random.default_rng([cfg.seed, TASKS.index(cfg.task), i])
        xs, ys, tries = [], [], 0
        while len(xs) < n:
            tries += 1
            if tries > 20 * n + 1000:
                raise ValueError(f"synthetic {cfg.task}: cannot draw {n} {s} examples unlike the earlier splits' "
                                 f"(the task has too few distinct instances): lower n_{s} or make the task larger")
            if cfg.task == "associative_recall":
                x, y = _mqar(rng, V, T, k["num_kv_pairs"], cfg.power_a, cfg.random_fill)
            elif cfg.task == "noisy_recall":
                x, y = _noisy_recall(rng, V, T, k["noise_vocab_size"], k["frac_noise"])
            elif cfg.task == "fuzzy_recall":
                x, y = _fuzzy_recall(rng, V, T, k["k_motif_size"], k["v_motif_size"], test=s != "train")
            elif cfg.task == "selective_copy":
                x, y = _selective_copy(rng, V, T, k["num_tokens_to_copy"])
            elif cfg.task == "compression":
                x, y = _compression(rng, V, T)
            else:
                x, y = _memorization(rng, V, T, kv)
            key = x.astype(np.int32).tobytes()
            if s != "train" and key in seen:
                continue
            if s != "test":
                seen.add(key)
            xs.append(x)
            ys.append(y)
        _CACHE[(cfg_json, s)] = (np.stack(xs), np.stack(ys))
        if s == split:
            break
    if len(_CACHE) > 12:  # a process (a sweep's point, a test) uses a few configs; keep memory bounded
        for key in list(_CACHE)[:-6]:
            _CACHE.pop(key)
    return _CACHE[(cfg_json, split)]


# --- the ids tokenizer -------------------------------------------------------------------------------


class IdsTokenizer(Tokenizer):
    """Whitespace-separated decimal ids -> the ids; ``pad_id`` (when set) marks unscored labels."""

    def __init__(self, vocab_size: int, pad_id: int | None):
        self.vocab_size, self.pad_id, self.eos_id = vocab_size, pad_id, None
        self.fingerprint = f"ids-{vocab_size}-{pad_id}"

    def encode(self, text: str) -> list[int]:
        ids = [int(t) for t in text.split()]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids tokenizer: id {bad[0]} is outside the vocabulary [0, {self.vocab_size}); "
                             f"raise tokenizer.vocab_size")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def token_bytes(self) -> list[int]:
        return [0] * self.vocab_size  # ids are not text: bits per byte means nothing here


class IdsConfig(TokenizerConfig):
    """Token ids written as decimal numbers, passed through unchanged (pre-tokenized data, the synthetic
    tasks). The vocabulary is ``vocab_size`` or one more than the largest id of the training documents;
    the largest id is the padding id (``pad: "last"``), which the synthetic tasks write where a label is
    not scored."""

    type: Literal["ids"] = "ids"
    vocab_size: int | None = Field(None, ge=1, description="vocabulary size (None: largest id in the training "
                                   "documents + 1)")
    pad: Literal["last", "none"] = Field("last", description='"last": the largest id is the padding id (the '
                                         'synthetic tasks mark unscored labels with it); "none": no padding id')

    def build(self, train_texts, cache_dir) -> Tokenizer:
        V = self.vocab_size
        if V is None:
            V = 1 + max((max(map(int, t.split()), default=-1) for t in train_texts()), default=-1)
            if V < 1:
                raise ValueError("ids tokenizer: the training documents hold no ids")
        return IdsTokenizer(V, V - 1 if self.pad == "last" else None)


# --- the supervised objective ------------------------------------------------------------------------


class SupervisedConfig(ObjectiveConfig):
    """Sequences with their own labels: each example is one document holding T input ids and then the
    T labels aligned with them (the tokenizer's padding id = not scored, -100 in the batch). Loss and
    ``accuracy`` (argmax = label) count the scored labels only; ``eval/accuracy`` is reported."""

    type: Literal["supervised"] = "supervised"
    bpb = False

    def unit(self) -> str:
        return "documents"

    def build(self, tokenizer: Tokenizer):
        return Supervised(tokenizer)


class Supervised(Objective):
    """The runtime of ``supervised`` (torch imported when a batch is made)."""

    def __init__(self, tokenizer: Tokenizer):
        self.pad = tokenizer.pad_id

    def collate(self, examples, rng=None) -> dict:
        import numpy as np
        import torch

        rows = [np.asarray(e, dtype=np.int64) for e in examples]
        n = len(rows[0])
        if n % 2 or any(len(r) != n for r in rows):
            raise ValueError(f"supervised: an example of {n} ids is not one document of T inputs then T labels: "
                             f"set train.block_size to at least 2 x seq_len - 1 (the specs use 2 x seq_len)")
        ex = torch.from_numpy(np.stack(rows))                     # (B, 2T)
        T = n // 2
        labels = ex[:, T:].clone()                                 # (B, T)
        if self.pad is not None:
            labels[labels == self.pad] = IGNORE_INDEX
        return {"input_ids": ex[:, :T].contiguous(), "labels": labels}

    def loss(self, model, batch: dict, output_hidden_states: bool = False) -> LossResult:
        from kinlm_core.objectives import call_model, scored

        r = scored(call_model(model, batch, output_hidden_states), batch["labels"])
        r.metrics["accuracy"] = answer_accuracy(r.output.logits, batch["labels"])
        return r


def answer_accuracy(logits, labels) -> float:
    """Share of the scored labels (!= -100) whose argmax logit is the label (0.0 when none is scored)."""
    keep = labels != IGNORE_INDEX
    n = int(keep.sum())
    if n == 0:
        return 0.0
    return float((logits.detach().argmax(-1)[keep] == labels[keep]).sum()) / n


# --- the compression read-out ------------------------------------------------------------------------


class CompressionReadoutConfig(ModelConfig):
    """MAD's compression read-out around any kinlm model: the inner model's last hidden state at the
    last position (the compression token) is the only thing a small MLP decoder sees when it rebuilds
    every token of the sequence (kinlm_core/builtins/readout.py; docs/diagnostics.md)."""

    type: Literal["compression_readout"] = "compression_readout"
    inner: NestedConfig("model", exclude=("compression_readout",), owner="a compression_readout") = Field(
        ..., description='the encoder, any kinlm model, e.g. {"type": "gpt", "n_layer": 2, "d_model": 64}')
    max_len: int = Field(1024, ge=2, description="longest sequence the decoder's position codes cover")

    def build(self, vocab_size: int):
        from kinlm_core.builtins.readout import CompressionReadout

        return CompressionReadout(self.inner.build(vocab_size), vocab_size, self.max_len)


class ConvAttentionConfig(ModelConfig):
    """Zoology's attention baseline for the synthetic tasks: per block a gated short causal convolution
    then causal attention, no position embeddings (kinlm_core/builtins/conv_attention.py)."""

    type: Literal["conv_attention"] = "conv_attention"
    provides: ClassVar[dict[str, str]] = {
        "hidden_states": "E[x], the block outputs and LN_f of the last",
        "input_embeddings": "E, the token table (no positions)",
        "blocks": "the conv + attention blocks (`blocks`)"}
    d_model: int = Field(64, ge=2, description="width C (Zoology sweeps 64 and 128 for attention)")
    n_layer: int = Field(2, ge=1, description="blocks (Zoology: 2)")
    n_head: int = Field(1, ge=1, description="attention heads (Zoology's attention: 1)")
    conv_kernel: int = Field(3, ge=1, description="kernel of the short causal convolution (Zoology: 3)")
    block_size: int = Field(1024, ge=2, description="longest context generators crop to (no position table)")

    @model_validator(mode="after")
    def _heads(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        return self

    def build(self, vocab_size: int):
        from kinlm_core.builtins.conv_attention import ConvAttentionLM

        return ConvAttentionLM(vocab_size, self.d_model, self.n_layer, self.n_head, self.conv_kernel, self.block_size)


DATA_SOURCES = [SyntheticConfig]
MODELS = [CompressionReadoutConfig, ConvAttentionConfig]
TOKENIZERS = [IdsConfig]
OBJECTIVES = [SupervisedConfig]
