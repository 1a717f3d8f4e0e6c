"""Where a run executes: device, ranks, the cache folder, environment capture, memory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__
from ..plugins import get_manager


class RunError(Exception):
    """A run cannot start or go on (message is one line for the user)."""


def cache_dir() -> Path:
    return Path(os.environ.get("KINLM_CACHE", Path.home() / ".cache" / "kinlm"))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def distributed_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment, or (0, 0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def all_reduce_mean(t: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of ``t`` over ranks (``t`` itself with one rank)."""
    if world == 1:
        return t
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t / world


def bind_tokenizer(component, tokenizer) -> None:
    """Components that need tokenizer facts (special ids) define bind_tokenizer(tok)."""
    if hasattr(component, "bind_tokenizer"):
        component.bind_tokenizer(tokenizer)


def env_info(device) -> dict:
    import importlib.metadata as md

    def ver(d):
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except Exception:  # noqa: BLE001
        commit = None
    return {
        "kinlm": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": ver("transformers"), "platform": platform.platform(), "device": str(device),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "git_commit": commit,
        "plugins": {p.name: p.version for p in get_manager().plugins() if p.error is None},
        "argv": sys.argv,
    }


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
