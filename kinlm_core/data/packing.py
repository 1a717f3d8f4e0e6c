"""Tokenize a data source once, pack it into fixed-length training rows, cache them, and sample batches.

Numpy only (no torch). ``prepare_data`` writes, per split, three memory-mapped ``.npy`` files:
``<split>.tokens.npy`` (the whole token stream: every document followed by EOS),
``<split>.offsets.npy`` (document d is ``tokens[offsets[d]:offsets[d+1]]``, its EOS included) and
``<split>.npy``, an ``(N, block_size + 1)`` array of packed rows: row r = tokens[r*B : r*B + B + 1],
so inputs are ``row[:-1]`` and next-token targets ``row[1:]``. Objectives take examples either as
packed rows (``blocks``) or per document (``examples(split, "documents")``: each document, cut into
chunks of at most block_size+1 tokens that never cross a document boundary). ``BlockSampler`` yields
the example indices of each batch: deterministic, resumable, sharded across ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from kinlm_core.api import SPLITS, DataSourceConfig, Tokenizer, TokenizerConfig

FORMAT = "kinlm-blocks-v2"
_CHUNK_CHARS = 1 << 20  # tokenize in batches of about 1M characters


@dataclass
class Prepared:
    """Packed, cached token rows of each split plus the tokenizer that made them.

    ``blocks(split)``: read-only memory-mapped (N, block_size+1) array. ``bytes_per_token[split]``:
    UTF-8 bytes of the split's text per token (loss in nats / ln 2 / bytes_per_token = bits per byte).
    ``cache_hit``: True when nothing had to be tokenized. ``cache_dir``: folder of the .npy files.
    ``tokens(split)``: the split's whole token stream (1-D). ``documents(split)``: one 1-D array per
    document (EOS included). ``examples(split, unit)`` / ``example(split, unit, i)``: what an objective
    trains on (see the module docstring).
    """

    tokenizer: Tokenizer
    block_size: int
    cache_dir: Path
    cache_hit: bool
    bytes_per_token: dict[str, float] = field(default_factory=dict)
    n_tokens: dict[str, int] = field(default_factory=dict)
    _arrays: dict = field(default_factory=dict, repr=False)

    def blocks(self, split: str) -> np.ndarray:
        if split not in self.n_tokens:
            raise ValueError(f"split {split!r} was not prepared; prepared: {', '.join(self.n_tokens)}")
        if split not in self._arrays:
            self._arrays[split] = np.load(self.cache_dir / f"{split}.npy", mmap_mode="r")
        return self._arrays[split]

    def _load(self, split: str, what: str) -> np.ndarray:
        key = f"{split}.{what}"
        if key not in self._arrays:
            self.blocks(split)  # checks the split was prepared
            self._arrays[key] = np.load(self.cache_dir / f"{key}.npy", mmap_mode="r")
        return self._arrays[key]

    def tokens(self, split: str) -> np.ndarray:
        return self._load(split, "tokens")

    def documents(self, split: str) -> list[np.ndarray]:
        toks, off = self.tokens(split), self._load(split, "offsets")
        return [toks[off[d]:off[d + 1]] for d in range(len(off) - 1)]

    def examples(self, split: str, unit: str) -> np.ndarray:
        """``blocks``: the packed rows. ``documents``: an (N, 2) array of (start, length) into
        ``tokens(split)``: documents cut into chunks of at most block_size+1 tokens (chunks overlap by
        one token, so every token after a document's first is a target once); chunks under 2 tokens
        are dropped."""
        if unit == "blocks":
            return self.blocks(split)
        if unit != "documents":
            raise ValueError(f"unknown example unit {unit!r}: use blocks or documents")
        key = f"{split}.doc_examples"
        if key not in self._arrays:
            off = np.asarray(self._load(split, "offsets"), dtype=np.int64)
            L, out = self.block_size + 1, []
            for a, b in zip(off[:-1], off[1:]):
                starts = np.arange(a, max(a + 1, b - 1), self.block_size, dtype=np.int64)
                lens = np.minimum(L, b - starts)
                out.append(np.stack([starts, lens], 1)[lens >= 2])
            self._arrays[key] = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
        return self._arrays[key]

    def example(self, split: str, unit: str, i) -> np.ndarray:
        if unit == "blocks":
            return self.blocks(split)[i]
        start, length = self.examples(split, unit)[i]
        return self.tokens(split)[start:start + length]

    def batch_examples(self, split: str, unit: str, idx: np.ndarray):
        """The examples at indices ``idx``: a 2-D array of rows (blocks) or a list of 1-D arrays."""
        if unit == "blocks":
            return self.blocks(split)[np.sort(idx)]
        return [self.example(split, unit, i) for i in idx]


def _sha(*parts) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def _chunks(docs: Iterable[str]) -> Iterable[list[str]]:
    """Group documents into lists of about ``_CHUNK_CHARS`` characters (for ``encode_batch``)."""
    buf, n = [], 0
    for d in docs:
        buf.append(d)
        n += len(d)
        if n >= _CHUNK_CHARS:
            yield buf
            buf, n = [], 0
    if buf:
        yield buf


def _progress(split: str):
    """A tqdm bar (documents) when stderr is a terminal, else a no-op object."""
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            return tqdm(desc=f"tokenizing {split}", unit=" docs", unit_scale=True, leave=False)
        except ImportError:
            pass

    class _Null:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Null()


def _tokenize_split(docs: Iterable[str], tok: Tokenizer, dtype, tmp_bin: Path, split: str,
                    lengths: list) -> tuple[int, int, int]:
    """Stream the split's tokens (EOS after every document) into a raw file, append each document's
    length to ``lengths``; return (docs, tokens, bytes)."""
    eos = tok.eos_id
    n_docs = n_tok = n_bytes = 0
    bar = _progress(split)
    try:
        with open(tmp_bin, "wb") as out:
            for chunk in _chunks(docs):
                ids = tok.encode_batch(chunk)
                parts = []
                for d, t in zip(chunk, ids):
                    parts.append(np.asarray(t, dtype=dtype))
                    if eos is not None:
                        parts.append(np.array([eos], dtype=dtype))
                    lengths.append(len(t) + (eos is not None))
                    n_bytes += len(d.encode("utf-8"))
                arr = np.concatenate(parts) if parts else np.zeros(0, dtype)
                arr.tofile(out)
                n_docs += len(chunk)
                n_tok += len(arr)
                bar.update(len(chunk))
    finally:
        bar.close()
    return n_docs, n_tok, n_bytes


_WORKER_TOK: Tokenizer | None = None  # the tokenizer in a prepare worker (inherited through fork)


def _encode_shard(task) -> tuple[int, int, int]:
    """Prepare worker: encode one chunk of documents (EOS after each) and write it as shard ``i`` of
    ``parts`` (an .npz of tokens, per-document lengths and the chunk's UTF-8 bytes, renamed into place
    when complete). Returns (i, documents, tokens)."""
    i, chunk, parts, dtype = task
    eos = _WORKER_TOK.eos_id
    ids = _WORKER_TOK.encode_batch(chunk)
    tokens = [np.asarray(t, dtype=dtype) for t in ids]
    if eos is not None:
        tokens = [np.append(t, np.asarray(eos, dtype=dtype)) for t in tokens]
    arr = np.concatenate(tokens) if tokens else np.zeros(0, dtype)
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    n_bytes = sum(len(d.encode("utf-8")) for d in chunk)
    tmp = parts / f".{i:07d}.{os.getpid()}.tmp.npz"
    np.savez(tmp, tokens=arr, lengths=lengths, bytes=np.int64(n_bytes))
    os.replace(tmp, parts / f"{i:07d}.npz")
    return i, len(chunk), len(arr)


def _tokenize_split_parallel(docs: Iterable[str], tok: Tokenizer, dtype, tmp_bin: Path, split: str,
                             lengths: list, workers: int, parts: Path) -> tuple[int, int, int]:
    """:func:`_tokenize_split` with ``workers`` processes: the documents are cut into the same chunks,
    each chunk becomes a shard file under ``parts`` (skipped when already there: an interrupted prepare
    resumes), then the shards are joined in order into the raw token file. Same tokens as the serial path."""
    global _WORKER_TOK
    import multiprocessing as mp

    parts.mkdir(parents=True, exist_ok=True)
    done = {int(f.stem) for f in parts.glob("[0-9]*.npz")}
    tasks = ((i, c, parts, dtype) for i, c in enumerate(_chunks(docs)) if i not in done)
    _WORKER_TOK = tok
    bar = _progress(split)
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            for _, n, _ in pool.imap_unordered(_encode_shard, tasks):
                bar.update(n)
    finally:
        _WORKER_TOK = None
        bar.close()
    n_docs = n_tok = n_bytes = 0
    with open(tmp_bin, "wb") as out:
        for f in sorted(parts.glob("[0-9]*.npz")):
            with np.load(f) as z:
                z["tokens"].astype(dtype, copy=False).tofile(out)
                lengths.extend(z["lengths"].tolist())
                n_docs += len(z["lengths"])
                n_tok += len(z["tokens"])
                n_bytes += int(z["bytes"])
    return n_docs, n_tok, n_bytes


def _save_npy(arr: np.ndarray, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, dest)


def _copy_stream(tmp_bin: Path, n_tok: int, dtype, dest: Path) -> None:
    """The raw token file as a memory-mappable .npy, copied in chunks (never whole in memory)."""
    src = np.memmap(tmp_bin, dtype=dtype, mode="r", shape=(n_tok,))
    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_tok,))
    for i in range(0, n_tok, 64 << 20):
        out[i:i + (64 << 20)] = src[i:i + (64 << 20)]
    out.flush()
    del out, src
    os.replace(tmp, dest)


def _pack(tmp_bin: Path, n_tok: int, dtype, block_size: int, dest: Path) -> int:
    """Cut the raw token file into rows of block_size+1 (stride block_size); write ``dest`` atomically."""
    n_rows = (n_tok - 1) // block_size
    tokens = np.memmap(tmp_bin, dtype=dtype, mode="r", shape=(n_tok,))
    rows = np.lib.stride_tricks.as_strided(tokens, shape=(n_rows, block_size + 1),
                                           strides=(block_size * tokens.itemsize, tokens.itemsize), writeable=False)
    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_rows, block_size + 1))
    step = max(1, (64 << 20) // (block_size + 1))  # ~64M tokens per copy
    for i in range(0, n_rows, step):
        out[i:i + step] = rows[i:i + step]
    out.flush()
    del out, rows, tokens
    os.replace(tmp, dest)
    return n_rows


def prepare_data(data_cfg: DataSourceConfig, tok_cfg: TokenizerConfig, block_size: int, cache_dir,
                 splits: Iterable[str] = SPLITS, log: Callable[[str], None] | None = None,
                 workers: int = 1) -> Prepared:
    """Build the tokenizer, tokenize each split once and pack it into cached rows of block_size+1 tokens.

    The cache folder is ``cache_dir/<hash of (data fingerprint, tokenizer fingerprint, block_size)>/``
    with ``<split>.npy`` and ``meta.json``; a second call with the same inputs loads it without
    tokenizing (``cache_hit=True``). Learning tokenizers cache their vocabulary under
    ``cache_dir/tokenizers/<data hash>/``. Raises ValueError when a split has fewer than block_size+1 tokens.

    ``workers`` > 1 tokenizes with that many processes (``kinlm data prepare --workers N``; Linux fork):
    same files, same tokens; chunks of about 1M characters become shard files under
    ``.<split>.parts/`` first, so an interrupted prepare resumes where it stopped.
    """
    log = log or logging.getLogger("kinlm.data").info
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    splits = list(splits)
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"unknown split {s!r}: use any of {', '.join(SPLITS)}")
    cache_root = Path(cache_dir).expanduser()
    data_fp = data_cfg.fingerprint()
    tok = tok_cfg.build(lambda: data_cfg.documents("train"), cache_root / "tokenizers" / _sha(data_fp)[:16])
    key = _sha(FORMAT, data_fp, tok.fingerprint, block_size)[:16]
    out_dir = cache_root / key
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"splits": {}}
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    todo = [s for s in splits if s not in meta["splits"]
            or not all((out_dir / f"{s}{x}.npy").exists() for x in ("", ".tokens", ".offsets"))]
    for split in todo:
        t0 = time.time()
        tmp_bin = out_dir / f".{split}.{os.getpid()}.bin"
        try:
            lengths: list[int] = []
            if workers > 1:
                n_docs, n_tok, n_bytes = _tokenize_split_parallel(data_cfg.documents(split), tok, dtype, tmp_bin,
                                                                  split, lengths, workers, out_dir / f".{split}.parts")
            else:
                n_docs, n_tok, n_bytes = _tokenize_split(data_cfg.documents(split), tok, dtype, tmp_bin, split,
                                                         lengths)
            if n_tok < block_size + 1:
                raise ValueError(f"{split} split has {n_tok} tokens ({n_docs} documents), fewer than one row of "
                                 f"block_size+1={block_size + 1}: lower block_size or add data")
            _save_npy(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]), out_dir / f"{split}.offsets.npy")
            _copy_stream(tmp_bin, n_tok, dtype, out_dir / f"{split}.tokens.npy")
            n_rows = _pack(tmp_bin, n_tok, dtype, block_size, out_dir / f"{split}.npy")
        finally:
            tmp_bin.unlink(missing_ok=True)
        if workers > 1:  # the split is complete: its shards are no longer needed
            import shutil

            shutil.rmtree(out_dir / f".{split}.parts", ignore_errors=True)
        meta["splits"][split] = {"docs": n_docs, "tokens": n_tok, "bytes": n_bytes, "rows": n_rows}
        log(f"data: {split}: {n_docs:,} docs, {n_tok:,} tokens, {n_rows:,} rows of {block_size + 1} "
            f"({time.time() - t0:.1f}s)")
    if todo:
        meta.update(format=FORMAT, block_size=block_size, vocab_size=tok.vocab_size, dtype=np.dtype(dtype).name,
                    tokenizer=tok.fingerprint)
        tmp = meta_path.with_name(f".meta.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, meta_path)
    else:
        log(f"data: cache hit {out_dir}")
    info = {s: meta["splits"][s] for s in splits}
    return Prepared(tokenizer=tok, block_size=block_size, cache_dir=out_dir, cache_hit=not todo,
                    bytes_per_token={s: m["bytes"] / m["tokens"] for s, m in info.items()},
                    n_tokens={s: m["tokens"] for s, m in info.items()})


class BlockSampler:
    """Deterministic, resumable, rank-sharded batches of row indices.

    The index stream is the concatenation of per-epoch permutations of ``range(n_blocks)`` (epoch e is
    permuted with seed ``seed + e``). Global batch g is the stream slice [g*batch_size, (g+1)*batch_size);
    rank r takes batches r, r+world_size, r+2*world_size, ... so ranks never share rows within an epoch.
    A slice that crosses an epoch end continues in the next permutation (this is also how
    n_blocks < batch_size works: wrap-around). ``state_dict()`` / ``load_state_dict()`` carry the
    position, so a resumed run gets exactly the same next batches.

    Elastic resume: the position is saved as ``consumed``, the number of stream examples all ranks
    together have taken (ranks move in lockstep, so this is ``position * world_size * batch_size``).
    A run resumed on another number of ranks starts its batches at that point of the same stream:
    rank r of W takes global batches r, r+W, ... counted from ``consumed``, so no example of an epoch
    is seen twice and none is skipped, whatever the world size before and after.
    """

    def __init__(self, n_blocks: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if n_blocks < 1 or batch_size < 1:
            raise ValueError(f"BlockSampler needs n_blocks >= 1 and batch_size >= 1, got {n_blocks}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.n_blocks, self.batch_size, self.seed = n_blocks, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle = shuffle  # False: every epoch in data order
        self.position = 0  # batches this rank has taken since `base`
        self.base = 0  # stream examples taken by every rank before this run (a resumed one)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = (np.random.default_rng(self.seed + epoch).permutation(self.n_blocks) if self.shuffle
                                  else np.arange(self.n_blocks))
        return self._perms[epoch]

    def _start(self) -> int:
        return self.base + (self.position * self.world_size + self.rank) * self.batch_size

    @property
    def consumed(self) -> int:
        """Stream examples taken by all ranks together so far (the elastic resume point)."""
        return self.base + self.position * self.world_size * self.batch_size

    @property
    def epoch(self) -> int:
        """Epoch of the next batch's first row."""
        return self._start() // self.n_blocks

    @property
    def batches_per_epoch(self) -> float:
        """Batches per epoch for this rank (fractional when the epoch does not divide evenly)."""
        return self.n_blocks / (self.batch_size * self.world_size)

    def next_indices(self) -> np.ndarray:
        start = self._start()
        out = np.empty(self.batch_size, dtype=np.int64)
        filled = 0
        while filled < self.batch_size:
            epoch, off = divmod(start + filled, self.n_blocks)
            take = min(self.batch_size - filled, self.n_blocks - off)
            out[filled:filled + take] = self._perm(epoch)[off:off + take]
            filled += take
        self.position += 1
        return out

    def state_dict(self) -> dict:
        """``consumed`` is what a resume reads; ``position`` and ``world_size`` are kept for reading."""
        return {"epoch": self.epoch, "consumed": self.consumed, "position": self.position, "seed": self.seed,
                "n_blocks": self.n_blocks, "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (saved on any number of ranks) at the same point of the stream."""
        for k in ("seed", "n_blocks", "batch_size"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"sampler state was saved with {k}={state[k]}, this run has {getattr(self, k)}: "
                                 f"resume with the same data, batch size and seed, or start fresh")
        if "consumed" in state:
            consumed = int(state["consumed"])
        else:  # written before `consumed` was saved: position counted on the saving run's ranks
            consumed = int(state["position"]) * int(state.get("world_size", 1)) * int(state.get("batch_size",
                                                                                                self.batch_size))
        self.base, self.position = consumed, 0
