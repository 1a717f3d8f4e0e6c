"""Post-training INT8 dynamic quantisation of the Linear layers, measured on CPU.

    python -m kinlm_context_vector.quantize RUN_DIR [--out DIR] [--split validation] [--batches 20]

Loads the run (``kinlm_core.load_run``) on the CPU, applies
``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)`` (weights stored as
int8 with a per-tensor scale, activations quantised on the fly; the embedding stays fp32), and
reports the size of both state dicts as saved by ``torch.save`` and the loss / perplexity of both
models on the same packed rows of a split (the first ``batches`` x ``batch_size`` rows). The int8
state dict is written to ``DIR/model_int8.pt`` (default ``RUN_DIR/int8``) with ``report.json``.
The quantised model runs the eager loop (``loop="auto"`` picks it for quantised Linears).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import warnings
from pathlib import Path


def quantize(model):
    """An int8 dynamic-quantised copy of ``model`` (its Linear layers), for CPU inference."""
    import copy

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.x marks the torch.ao quantisation API deprecated
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().eval(), {torch.nn.Linear},
                                                       dtype=torch.qint8)


def serialize(model) -> bytes:
    """``torch.save(model.state_dict())`` as bytes (what a checkpoint file holds)."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), buf)
    return buf.getvalue()


def eval_rows(model, rows, batch_size: int = 32, vocab_size: int | None = None) -> float:
    """Mean next-token loss (nats) of ``model`` over packed rows (N, T+1)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    nats, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            x = torch.from_numpy(np.asarray(rows[i:i + batch_size], dtype=np.int64))
            logits = model(x[:, :-1]).logits
            logits = logits[..., :vocab_size] if vocab_size else logits
            nats += F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum").item()
            n += x[:, 1:].numel()
    return nats / n


def report(model, rows, batch_size: int = 32, vocab_size: int | None = None) -> tuple[dict, object]:
    """Sizes and losses of the fp32 model and its int8 copy: ({...}, the int8 model)."""
    model = model.cpu().eval()
    q = quantize(model)
    fp32, int8 = eval_rows(model, rows, batch_size, vocab_size), eval_rows(q, rows, batch_size, vocab_size)
    res = {"fp32_bytes": len(serialize(model)), "int8_bytes": len(serialize(q)), "fp32_loss": fp32, "int8_loss": int8,
           "fp32_ppl": math.exp(fp32), "int8_ppl": math.exp(int8), "rows": len(rows)}
    res["size_ratio"] = res["int8_bytes"] / res["fp32_bytes"]
    res["ppl_change_pct"] = 100 * (res["int8_ppl"] / res["fp32_ppl"] - 1)
    return res, q


def main(argv=None) -> int:
    from .score import user_error

    p = argparse.ArgumentParser(prog="python -m kinlm_context_vector.quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a kinlm run directory (its last checkpoint is loaded)")
    p.add_argument("--out", type=Path, default=None, help="where model_int8.pt and report.json go (default RUN_DIR/int8)")
    p.add_argument("--split", default="validation", choices=["validation", "test"], help="split the losses are measured on")
    p.add_argument("--batches", type=int, default=20, help="batches of packed rows evaluated")
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch")
    a = p.parse_args(argv)
    if a.batches < 1 or a.batch_size < 1:
        p.error("--batches and --batch-size must be >= 1")
    try:
        from kinlm_core import load_run

        run = load_run(a.run_dir, device="cpu")
        rows = run.data.blocks(a.split)[: a.batches * a.batch_size]
        if len(rows) == 0:
            raise ValueError(f"{a.run_dir}: the {a.split} split has no rows to evaluate")
        res, q = report(run.model, rows, a.batch_size, run.tokenizer.vocab_size)
        out = a.out or a.run_dir / "int8"
        out.mkdir(parents=True, exist_ok=True)
        (out / "model_int8.pt").write_bytes(serialize(q))
        res["split"] = a.split
        (out / "report.json").write_text(json.dumps(res, indent=1) + "\n")
    except Exception as e:  # noqa: BLE001 - expected failures become one line; others re-raise
        msg = user_error(e)
        if msg is None:
            raise
        print(f"kinlm_context_vector.quantize: {msg}", file=sys.stderr)
        return 2
    print(f"checkpoint fp32 {res['fp32_bytes'] / 1e6:.2f} MB -> int8 {res['int8_bytes'] / 1e6:.2f} MB "
          f"({res['size_ratio']:.2f}x) | {a.split} ppl fp32 {res['fp32_ppl']:.3f} -> int8 {res['int8_ppl']:.3f} "
          f"({res['ppl_change_pct']:+.2f}%) on {res['rows']} rows | written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
