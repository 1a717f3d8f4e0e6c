"""Checkpoints: atomic directories of safetensors weights + a weights-only torch state file.

Layout: ``checkpoints/step_0000500/{model.safetensors, state.pt}``. A checkpoint is written into
``checkpoints/.tmp-step_0000500`` and renamed when complete, so a killed run never leaves a
half-written checkpoint under a final name. Loading never unpickles code (safetensors and
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model


from ..errors import CheckpointError  # noqa: E402,F401 - raised here, public in kinlm_core


def save(ckpt_root: Path, step: int, model, state: dict, keep: int = 2) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f".tmp-step_{step:07d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(ckpt_root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(ckpt_root: Path) -> Path | None:
    found = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir()) if ckpt_root.exists() else []
    return found[-1] if found else None


def load_state(path: Path, map_location="cpu") -> dict:
    """The training state of a checkpoint (step, phase, optimizer, RNG, ...), without the weights."""
    state_file = path / "state.pt"
    if not state_file.exists():
        raise CheckpointError(f"{state_file}: missing; the checkpoint is incomplete")
    try:
        return torch.load(state_file, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoding problem means a corrupt file
        raise CheckpointError(f"{state_file}: corrupt or truncated checkpoint ({type(e).__name__}: {str(e)[:120]})") from None


def load_weights(path: Path, model, map_location="cpu") -> None:
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{weights}: missing; the checkpoint is incomplete")
    try:
        load_model(model, str(weights), device=str(map_location))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{weights}: corrupt or truncated checkpoint ({type(e).__name__}: {str(e)[:120]})") from None


def load(path: Path, model, map_location="cpu") -> dict:
    """Weights into ``model``; returns the training state."""
    check_complete(path)
    load_weights(path, model, map_location)
    return load_state(path, map_location)


def check_complete(path: Path) -> None:
    for f in (path / "model.safetensors", path / "state.pt"):
        if not f.exists():
            raise CheckpointError(f"{f}: missing; the checkpoint is incomplete")
