"""Where a run's numbers go: metrics.jsonl (one JSON object a line) and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _record(line: str) -> dict:
    """One metrics.jsonl line; a line cut short by a kill reads as step infinity (dropped on resume)."""
    try:
        return json.loads(line)
    except ValueError:
        return {"step": math.inf}


class RunLogger:
    """Writes scalars to ``metrics.jsonl`` and to TensorBoard under ``tb/``.

    On resume, ``purge_step`` makes TensorBoard drop events written after the checkpoint, and
    metrics.jsonl is rewritten (atomically) to the lines with ``step < purge_step`` so curves never
    double back; ``redo_eval_at`` also drops that step's eval and analysis lines (an evaluation a
    signal stopped, which the resumed run does again).
    """

    def __init__(self, run_dir: Path, purge_step: int | None = None, redo_eval_at: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        from .checkpoint import atomic_write_text

        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        if purge_step is not None and self.path.exists():
            def kept(rec: dict) -> bool:
                redone = rec["step"] == redo_eval_at and any(k.startswith(("eval/", "analysis/")) for k in rec)
                return rec["step"] < purge_step and not redone

            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and kept(_record(ln))]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        self._fh = open(self.path, "a")
        self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)

    def log(self, metrics: dict, step: int) -> None:
        clean = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}
        self._fh.write(json.dumps({"step": step, **clean}, allow_nan=True) + "\n")
        self._fh.flush()
        for k, v in clean.items():
            if isinstance(v, float) and math.isfinite(v):
                self.tb.add_scalar(k, v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.tb.add_text(tag, text, step)

    def image(self, tag: str, png: Path, step: int) -> None:
        import matplotlib.image as mpimg

        self.tb.add_image(tag, mpimg.imread(str(png))[..., :3], step, dataformats="HWC")

    def hparams(self, hparams: dict, metrics: dict) -> None:
        """Final hparams + metrics, written into the run's own event directory (not a sub-run)."""
        from torch.utils.tensorboard.summary import hparams as hp

        exp, ssi, sei = hp(hparams, metrics)
        for s in (exp, ssi, sei):
            self.tb.file_writer.add_summary(s)
        for k, v in metrics.items():
            self.tb.add_scalar(k, v)

    def close(self) -> None:
        self._fh.close()
        self.tb.flush()
        self.tb.close()
