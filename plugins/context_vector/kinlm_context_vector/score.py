"""Streaming scoring: perplexity and bits per byte of a text file of any length in O(1) memory.

    python -m kinlm_context_vector.score RUN_DIR FILE [--chunk 1024] [--device cpu]

The run is loaded with ``kinlm_core.load_run``. The file is read a block of lines at a time,
tokenized per block, and fed to the model's decoding protocol (``decode(ids, state)``) in chunks of
``--chunk`` tokens, carrying only the state (for context_vector: the (1, d_c) context) and the last
logit row from chunk to chunk. Memory is that of one chunk, whatever the file's length. The file is
one document: the context starts from zero at its first token, which is not scored; every later
token is. Bits per byte divide the summed nats by ln 2 and the file's UTF-8 bytes. Tokenizing per
block of lines equals tokenizing the whole file for the word tokenizer; a subword tokenizer may
split differently at block boundaries (a block is about 64 KB).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

BLOCK_BYTES = 1 << 16


def read_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """Blocks of whole lines (about block_bytes each) of a UTF-8 text file."""
    with open(path, encoding="utf-8") as f:
        lines, size = [], 0
        for line in f:
            lines.append(line)
            size += len(line)
            if size >= block_bytes:
                yield "".join(lines)
                lines, size = [], 0
        if lines:
            yield "".join(lines)


def stream_nll(model, pieces: Iterable[list[int]], chunk: int = 1024, vocab_size: int | None = None) -> dict:
    """Summed next-token loss (nats) over a stream of token-id lists, fed through
    ``model.decode`` ``chunk`` tokens at a time. Returns {"nats", "tokens", "peak_state_numel"}."""
    import torch
    import torch.nn.functional as F

    if not hasattr(model, "decode"):
        raise ValueError(f"{type(model).__name__} has no decode(ids, state): streaming scoring needs the decoding protocol")
    device = next(model.parameters()).device
    state, last, nats, tokens, state_numel = None, None, 0.0, 0, 0

    def feed(ids: list[int]):
        nonlocal state, last, nats, tokens, state_numel
        x = torch.tensor([ids], dtype=torch.long, device=device)
        logits, state = model.decode(x, state)
        logits = logits[0, :, :vocab_size].float() if vocab_size else logits[0].float()   # (T, V)
        preds = logits[:-1] if last is None else torch.cat([last, logits[:-1]])
        targets = x[0, 1:] if last is None else x[0]
        if targets.numel():
            nats += F.cross_entropy(preds, targets, reduction="sum").item()
            tokens += targets.numel()
        last = logits[-1:]
        state_numel = max(state_numel, sum(t.numel() for t in _tensors(state)))

    buf: list[int] = []
    with torch.no_grad():
        for piece in pieces:
            buf.extend(piece)
            while len(buf) >= chunk:
                feed(buf[:chunk])
                buf = buf[chunk:]
        if buf:
            feed(buf)
    return {"nats": nats, "tokens": tokens, "peak_state_numel": state_numel}


def _tensors(state):
    import torch

    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        state = list(state.values())
    if isinstance(state, (list, tuple)):
        return [t for s in state for t in _tensors(s)]
    return []


def score_file(model, tokenizer, path: Path, chunk: int = 1024) -> dict:
    """Loss, perplexity, bits per byte, tokens/s and peak RSS of scoring a file in streaming."""
    t0 = time.perf_counter()
    out = stream_nll(model, (tokenizer.encode(b) for b in read_blocks(path)), chunk, tokenizer.vocab_size)
    dt = time.perf_counter() - t0
    n_bytes = Path(path).stat().st_size
    if out["tokens"] == 0:
        raise ValueError(f"{path}: fewer than 2 tokens, nothing to score")
    loss = out["nats"] / out["tokens"]
    return {"tokens": out["tokens"], "bytes": n_bytes, "loss": loss, "ppl": math.exp(loss),
            "bpb": out["nats"] / math.log(2) / n_bytes, "tokens_per_s": out["tokens"] / dt,
            "state_numel": out["peak_state_numel"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def user_error(e: BaseException) -> str | None:
    """The one-line message of an expected failure (bad run directory, bad file), else None."""
    if type(e).__name__ == "SpecError" and getattr(e, "problems", None):
        return "; ".join(e.problems)
    if isinstance(e, (ValueError, OSError, UnicodeDecodeError)) or type(e).__name__ in ("RunError", "CheckpointError"):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kinlm_context_vector.score", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a kinlm run directory (its last checkpoint is loaded)")
    p.add_argument("file", type=Path, help="UTF-8 text file to score (any length)")
    p.add_argument("--chunk", type=int, default=1024, help="tokens fed to the model per call (memory ~ chunk)")
    p.add_argument("--device", default="cpu", help='"cpu", "cuda", "auto"')
    a = p.parse_args(argv)
    if a.chunk < 1:
        p.error(f"--chunk must be >= 1 (got {a.chunk})")
    try:
        if not a.file.is_file():
            raise ValueError(f"{a.file}: no such file")
        from kinlm_core import load_run

        run = load_run(a.run_dir, device=a.device)
        res = score_file(run.model, run.tokenizer, a.file, a.chunk)
    except Exception as e:  # noqa: BLE001 - expected failures become one line; others re-raise
        msg = user_error(e)
        if msg is None:
            raise
        print(f"kinlm_context_vector.score: {msg}", file=sys.stderr)
        return 2
    print(f"{a.file}: {res['tokens']} tokens scored, {res['bytes']} bytes | loss {res['loss']:.4f} "
          f"ppl {res['ppl']:.2f} bpb {res['bpb']:.4f} | {res['tokens_per_s']:.0f} tok/s, "
          f"state {res['state_numel']} numbers, peak RSS {res['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
