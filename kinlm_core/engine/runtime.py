"""Where a run executes: device, ranks, the cache folder, environment capture, memory."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__
from ..plugins import get_manager


from ..errors import RunError  # noqa: E402,F401 - raised here, public in kinlm_core


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
        "threads": torch.get_num_threads(),
        "plugins": {p.name: p.version for p in get_manager().plugins() if p.error is None},
        "argv": sys.argv,
    }


def resolve_precision(requested: str, device) -> tuple[str, str | None]:
    """(the precision a run trains in, a line to say or None). ``auto``: bf16 on a GPU that supports
    it, else fp32; on a GPU without bf16 the line says that ``fp16`` is available."""
    if requested != "auto":
        return requested, None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", None
        return "fp32", (f"train.precision auto: {torch.cuda.get_device_name(device)} has no bf16, training in fp32; "
                        f'train.precision "fp16" trains in float16 with a GradScaler (about twice as fast there)')
    return "fp32", None


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class CompiledOrEager(torch.nn.Module):
    """``torch.compile(model)`` that falls back to the eager model when compiling fails.

    torch.compile compiles lazily, at the first call (and again for a new shape), so a model that
    cannot compile fails there. When a compiled call raises, the same call is run eagerly: if that
    works the failure was the compiler's, one line says so and every later call is eager; if the
    eager call fails too, its error is raised (it is the model's). The compiled backward is built
    (and can fail) apart from the forward, so the first call with gradients runs the compiled model
    once more for a trial backward (``torch.autograd.grad``, leaving ``.grad`` alone; the random
    state is rewound, so the real call draws the same dropout masks).
    ``_orig_mod`` is the model, as on torch's own compiled wrapper, so callers that read the
    forward signature find the model's.
    """

    def __init__(self, model: torch.nn.Module, compiled, log=None):
        super().__init__()
        self._orig_mod = model
        self._compiled = [compiled]  # a list: not a second registered copy of the model
        self._log = log
        self._backward_checked = False

    @property
    def is_compiled(self) -> bool:
        return bool(self._compiled)

    def forward(self, *args, **kwargs):
        if self._compiled:
            rng = _rng_states()  # the eager re-run draws the same dropout masks as the failed call
            try:
                if not self._backward_checked and torch.is_grad_enabled():
                    # a call of its own: inductor's backward may run once only (donated buffers)
                    _trial_backward(self._compiled[0](*args, **kwargs),
                                    [p for p in self._orig_mod.parameters() if p.requires_grad])
                    self._backward_checked = True
                    _set_rng_states(rng)  # the real call draws what the trial drew
                return self._compiled[0](*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - decided below by the eager call
                _set_rng_states(rng)
                out = self._orig_mod(*args, **kwargs)
                self._compiled.clear()
                _fallback_note(self._orig_mod, e, self._log)
                return out
        return self._orig_mod(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._orig_mod, name)


def _rng_states() -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)


def _set_rng_states(states: tuple) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state_all(states[1])


def _float_tensors(x):
    """The floating-point tensors in a model output (dataclass, dict, tuple or list of them)."""
    if torch.is_tensor(x):
        return [x] if x.is_floating_point() else []
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = [getattr(x, f.name) for f in dataclasses.fields(x)]
    elif isinstance(x, dict):
        x = list(x.values())
    elif not isinstance(x, (list, tuple)):
        return []
    return [t for v in x for t in _float_tensors(v)]


def _trial_backward(out, params) -> None:
    """Run the (compiled) backward of ``out`` once; gradients go nowhere (``.grad`` is untouched)."""
    ts = [t for t in _float_tensors(out) if t.requires_grad]
    if ts and params:
        torch.autograd.grad(sum(t.float().sum() for t in ts), params, allow_unused=True)


def _fallback_note(model, err: BaseException, log) -> None:
    root = err  # torch wraps the compiler's own error (BackendCompilerFailed from RuntimeError ...)
    while isinstance(inner := root.__cause__ or getattr(root, "inner_exception", None), BaseException) \
            and inner is not root:
        root = inner
    first = (str(root).strip().splitlines() or [""])[0][:200]
    what = f"{type(err).__name__}: " + (f"{type(root).__name__}: " if root is not err else "") + first
    msg = f"train.compile: {type(model).__name__} cannot be compiled ({what}); training eagerly instead"
    if log is not None:
        log(msg)
    else:
        logging.getLogger("kinlm.compile").warning(msg)


def compile_model(model: torch.nn.Module, enabled: bool = True, log=None, **compile_kwargs) -> torch.nn.Module:
    """The model to train: ``model`` itself when ``enabled`` is False, else a :class:`CompiledOrEager`
    (torch.compile with a one-line fallback to eager). ``log(msg)`` also receives the fallback line."""
    if not enabled:
        return model
    try:
        compiled = torch.compile(model, **compile_kwargs)
    except Exception as e:  # noqa: BLE001 - e.g. a Python version torch.compile does not support
        _fallback_note(model, e, log)
        return model
    return CompiledOrEager(model, compiled, log)
