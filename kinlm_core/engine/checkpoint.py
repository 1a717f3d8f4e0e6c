"""Checkpoints, and every file the engine writes whole: one module, so each guarantee lives in one place.

Layout: ``checkpoints/step_0000500/{model.safetensors, state.pt, manifest.json}``.

- **Atomic.** A checkpoint is written into ``checkpoints/.tmp-step_0000500`` and renamed when
  complete, so a killed run never leaves a half-written checkpoint under a final name. Small files
  (result.json, env.json, spec.json, metrics.json) go through :func:`atomic_write_text`: a temporary
  file, fsync, rename; never truncated in place.
- **Checksummed.** ``manifest.json`` records the size and sha256 of every other file; it is written
  last, after their fsync. :func:`verify` checks it and names the damaged file. Checkpoints written
  before manifests existed load unchecked (their truncation is still caught when decoding).
- **Fallback.** :func:`newest_intact` is the newest checkpoint that verifies; the damaged newer ones
  are reported (or, ``strict``, refused).
- **Disk space.** :func:`save` first checks that the free space holds another checkpoint the size of
  the last one; it raises :class:`CheckpointWriteError` (and removes its temporary folder) when it
  will not fit or any write fails, leaving the earlier checkpoints as they were.

Loading never unpickles code (safetensors and ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from ..errors import CheckpointError  # noqa: F401 - raised here, public in kinlm_core

MANIFEST = "manifest.json"
FORMAT = 1  # manifest.json's "format"


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (the disk is full, or a write failed); the earlier ones are kept."""


# ---- small files ---------------------------------------------------------------------------------------
def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it, fsynced and renamed: readers see the
    old content or the new, never a truncated file. On failure the temporary file is removed and the
    OSError raised; ``path`` is unchanged."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- writing --------------------------------------------------------------------------------------------
def size_of(path: Path) -> int:
    """Bytes in the files of a checkpoint folder."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def check_free_space(ckpt_root: Path, model) -> None:
    """Raise :class:`CheckpointWriteError` when the free space under ``ckpt_root`` cannot hold another
    checkpoint the size of the last one (with none yet: 3x the model's weights, as for AdamW's state)."""
    last = latest(ckpt_root)
    if last is not None:
        need, what = size_of(last), f"the last checkpoint ({last.name})"
    else:
        need = 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())
        what = "a checkpoint (estimated: 3x the weights)"
    free = shutil.disk_usage(ckpt_root).free
    if free < need:
        kept = f"the last checkpoint {last} is kept" if last is not None else "no checkpoint was written"
        raise CheckpointWriteError(f"{ckpt_root}: disk full: {_mb(free)} free, {what} takes {_mb(need)}; "
                                   f"stopped before writing the next one ({kept})")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _write(tmp: Path, step: int, model, state: dict) -> None:
    """Weights, training state and (last, after their fsync) the manifest into the fresh folder ``tmp``."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    files = {}
    for f in sorted(tmp.iterdir()):  # make the bytes durable before the manifest vouches for them
        _fsync_file(f)
        files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256(f)}
    atomic_write_text(tmp / MANIFEST, json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1) + "\n")
    _fsync_dir(tmp)


def save(ckpt_root: Path, step: int, model, state: dict, keep: int = 2) -> Path:
    """Write ``step_NNNNNNN`` (weights, training state, manifest) atomically and keep the last ``keep``.
    Raises :class:`CheckpointWriteError` (one line) when the disk cannot hold it or a write fails; the
    temporary folder is then removed and the earlier checkpoints are untouched."""
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f".tmp-step_{step:07d}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        check_free_space(ckpt_root, model)
        _write(tmp, step, model, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest(ckpt_root) if ckpt_root.is_dir() else None
        raise CheckpointWriteError(f"{final}: cannot write the checkpoint ({e.strerror or e}); "
                                   + (f"the last checkpoint {kept} is kept" if kept else "no checkpoint was written")
                                   ) from None
    except CheckpointWriteError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(ckpt_root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(folder: Path, step: int, model, state: dict) -> Path:
    """Write the best evaluation's weights as ``folder`` (a run's ``best/``): the checkpoint layout and
    manifest, written into ``.tmp-best`` and swapped in by renames (the previous best moves to
    ``.old-best`` for the instant between them, and :func:`best_folder` reads it there if a crash falls in
    that instant). ``state`` is small: the step, the metric and its value. Raises
    :class:`CheckpointWriteError` (one line) with the previous ``best/`` kept."""
    folder = Path(folder)
    tmp, old = folder.with_name(f".tmp-{folder.name}"), folder.with_name(f".old-{folder.name}")
    try:
        if shutil.disk_usage(folder.parent).free < 2 * sum(t.numel() * t.element_size()
                                                          for t in model.state_dict().values()):
            raise OSError(errno.ENOSPC, "disk full")
        _write(tmp, step, model, state)
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        _fsync_dir(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(f"{folder}: cannot write the best weights ({e.strerror or e}); "
                                   + ("the previous best/ is kept" if (folder.exists() or old.exists())
                                      else "none was written")) from None
    return folder


def best_folder(run_dir: Path) -> Path | None:
    """A run's ``best/`` (or, after a crash between :func:`save_best`'s two renames, ``.old-best``)."""
    for name in ("best", ".old-best"):
        if (Path(run_dir) / name / "model.safetensors").exists():
            return Path(run_dir) / name
    return None


# ---- finding and checking ---------------------------------------------------------------------------------
def all_checkpoints(ckpt_root: Path) -> list[Path]:
    """The checkpoint folders under ``ckpt_root``, oldest first."""
    ckpt_root = Path(ckpt_root)
    return sorted(p for p in ckpt_root.glob("step_*") if p.is_dir()) if ckpt_root.is_dir() else []


def latest(ckpt_root: Path) -> Path | None:
    found = all_checkpoints(ckpt_root)
    return found[-1] if found else None


def check_complete(path: Path) -> None:
    for f in (path / "model.safetensors", path / "state.pt"):
        if not f.exists():
            raise CheckpointError(f"{f}: missing; the checkpoint is incomplete")


def verify(path: Path) -> None:
    """Raise :class:`CheckpointError` naming the first damaged file of the checkpoint ``path``: missing,
    of another size, or whose sha256 differs from its manifest. A checkpoint without a manifest (written
    before kinlm had them) is decoded instead, which catches truncation but not flipped bytes."""
    path = Path(path)
    check_complete(path)
    man = path / MANIFEST
    if not man.exists():
        load_state(path)
        try:
            from safetensors.torch import load_file

            load_file(str(path / "model.safetensors"))
        except Exception as e:  # noqa: BLE001 - any decoding problem means a corrupt file
            raise CheckpointError(f"{path / 'model.safetensors'}: corrupt or truncated checkpoint "
                                  f"({type(e).__name__}: {str(e)[:120]})") from None
        return
    try:
        files = json.loads(man.read_text())["files"]
        items = [(str(name), int(rec["bytes"]), str(rec["sha256"])) for name, rec in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{man}: damaged (not a kinlm checkpoint manifest)") from None
    for name, size, digest in items:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing; the checkpoint is incomplete")
        have = f.stat().st_size
        if have != size:
            raise CheckpointError(f"{f}: damaged ({have} bytes, the manifest says {size}: truncated or overwritten)")
        if sha256(f) != digest:
            raise CheckpointError(f"{f}: damaged (its sha256 differs from the one in {MANIFEST})")


def newest_intact(ckpt_root: Path, strict: bool = False, warn=None) -> Path | None:
    """The newest checkpoint under ``ckpt_root`` that passes :func:`verify` (None when there are none).
    Newer damaged ones are skipped with one ``warn`` line naming each; ``strict`` refuses the first
    damaged one instead. Raises :class:`CheckpointError` when every checkpoint is damaged."""
    skipped = []
    for p in reversed(all_checkpoints(ckpt_root)):
        try:
            verify(p)
        except CheckpointError as e:
            if strict:
                raise CheckpointError(f"{e} (--strict-checkpoint: not falling back to an older checkpoint)") from None
            skipped.append(str(e))
            continue
        if skipped and warn is not None:
            warn(f"skipped {len(skipped)} damaged checkpoint{'s' * (len(skipped) > 1)} ({'; '.join(skipped)}); "
                 f"using {p}")
        return p
    if skipped:
        raise CheckpointError(f"{ckpt_root}: no intact checkpoint: {'; '.join(skipped)}")
    return None


# ---- loading ----------------------------------------------------------------------------------------------
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


# ---- asynchronous saving ------------------------------------------------------------------------------------
class _Weights:
    """What :func:`save` needs of a model (``state_dict()``), over a host copy of its state dict."""

    def __init__(self, state_dict: dict):
        self._sd = state_dict

    def state_dict(self) -> dict:
        return dict(self._sd)  # save_model deletes the tied duplicates from the dict it gets


class HostCopier:
    """Copies the tensors of a nested state (dicts, lists, tuples) into host buffers allocated once and
    reused by every later copy of the same shape (pinned memory when a tensor is on CUDA, so the copy
    runs asynchronously on the device's stream). Tensors that share storage (tied weights, views) share
    it in the copy too, so :func:`save` writes the same files as from the live model."""

    def __init__(self):
        self._pool: list[torch.Tensor] = []  # one uint8 buffer per distinct storage, in visiting order

    def copy(self, obj):
        """(the copy, whether any tensor came from CUDA). Non-tensor leaves are deep-copied."""
        import copy as _copy

        storages: dict = {}
        cuda = [False]

        def host_storage(t: torch.Tensor):
            key = (t.device, t.untyped_storage().data_ptr())
            if key not in storages:
                i, nbytes = len(storages), t.untyped_storage().nbytes()
                pin = t.device.type == "cuda" and torch.cuda.is_available()
                if i >= len(self._pool) or self._pool[i].numel() != nbytes or self._pool[i].is_pinned() != pin:
                    buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
                    self._pool[i:i + 1] = [buf]
                src = torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
                self._pool[i].copy_(src, non_blocking=pin)
                cuda[0] |= pin
                storages[key] = self._pool[i].untyped_storage()
            return storages[key]

        def walk(x):
            if torch.is_tensor(x):
                return torch.empty(0, dtype=x.dtype).set_(host_storage(x), x.storage_offset(), x.size(), x.stride())
            if isinstance(x, dict):
                return {k: walk(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return type(x)(walk(v) for v in x)
            return _copy.deepcopy(x)

        out = walk(obj)
        return out, cuda[0]


class AsyncSaver:
    """Checkpoints written by a background thread, so that training goes on during the write.

    :meth:`save` first waits for the previous write (one at a time; a write that failed raises its
    :class:`CheckpointWriteError` here), then copies the weights and the training state into host
    buffers (:class:`HostCopier`; on CUDA the copy is queued on the stream, before any later update of
    the weights) and starts a thread that waits for the copy and calls :func:`save`: the same files,
    manifest and atomic rename as a synchronous save. So a kill -9 at any time leaves the older
    checkpoints and at most a ``.tmp-`` folder, never a half checkpoint under a final name.
    :meth:`join` waits for the write in flight and raises its error; :meth:`poll` returns the
    ``(step, path)`` of a write that has completed since the last poll (the caller fires the
    ``kinlm_checkpoint`` hook for it on its own thread), else None."""

    def __init__(self):
        import threading

        self._threading = threading
        self._weights, self._state = HostCopier(), HostCopier()  # buffers kept from one save to the next
        self._thread = None
        self.step: int | None = None  # the step of the write in flight (or of the last one)
        self._error: BaseException | None = None
        self._done: tuple[int, Path] | None = None

    def save(self, ckpt_root: Path, step: int, model, state: dict, keep: int = 2) -> None:
        self.join()
        self.step = step
        weights, cuda_w = self._weights.copy(model.state_dict())
        host_state, cuda_s = self._state.copy(state)
        event = None
        if cuda_w or cuda_s:
            event = torch.cuda.Event()
            event.record()

        def write():
            try:
                if event is not None:
                    event.synchronize()
                self._done = (step, save(ckpt_root, step, _Weights(weights), host_state, keep))
            except BaseException as e:  # noqa: BLE001 - raised on the training thread by join()
                self._error = e

        self._thread = self._threading.Thread(target=write, name=f"kinlm-checkpoint-{step}", daemon=True)
        self._thread.start()

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def poll(self) -> tuple[int, Path] | None:
        if self.busy():
            return None
        done, self._done = self._done, None
        return done
