"""Run directories outside the engine: the lock that keeps two processes out of one run, the
``NAME@latest`` link that names the latest run of a spec, and reading a run's status.

- **Lock.** ``kinlm run`` holds ``fcntl.flock`` on ``RUN/.lock`` while it trains or resumes. The
  kernel drops the lock when the process ends however it ends (even ``kill -9``), so a crashed
  run never leaves it stuck; the file itself stays and is ignored by everything else.
- **Latest.** A new run started by ``kinlm run`` points ``<parent>/<spec name>@latest`` (a
  relative symlink next to the run directory) at itself, so ``runs/quickstart@latest`` is always
  the quickstart's newest run. The name does not match ``runs/quickstart-*``; ``kinlm compare``
  counts a run reached twice (link and directory) once.
- **Status.** ``finished``, ``preempted``, ``running`` (its lock is held), ``stopped`` (the
  engine stopped it, e.g. a non-finite loss) or ``failed`` (no process holds it and it has no
  result, or a "finished" one short of ``train.max_steps`` without an early stop: it crashed or
  was killed).

Torch-free; POSIX only (``fcntl``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"
LATEST_SUFFIX = "@latest"


class RunDirBusy(Exception):
    """Another process holds the run directory's lock."""


def _try_flock(fd: int, how: int, tries: int = 5, wait_s: float = 0.05) -> bool:
    # a few quick tries: a `kinlm compare` probing the lock holds it for microseconds, a run for hours
    for i in range(tries):
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if i + 1 < tries:
            time.sleep(wait_s)
    return False


@contextmanager
def locked(run_dir: str | Path):
    """Hold the exclusive lock of ``run_dir`` (created if missing) for the ``with`` body; raise
    :class:`RunDirBusy` at once, naming the holder's pid, when another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_flock(fd, fcntl.LOCK_EX):
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise RunDirBusy(f"{run_dir}: in use by another kinlm process"
                             + (f" (pid {holder})" if holder.isdigit() else "")
                             + "; wait for it to end or choose another --run-dir")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield run_dir
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(run_dir: str | Path) -> bool:
    """True when a process holds ``run_dir``'s lock (a run in progress)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if _try_flock(fd, fcntl.LOCK_SH, tries=1):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


def latest_link(run_dir: str | Path, name: str) -> Path:
    """Point ``<parent of run_dir>/<name>@latest`` at ``run_dir`` (atomically); return the link."""
    run_dir = Path(run_dir)
    link = run_dir.parent / f"{name}{LATEST_SUFFIX}"
    tmp = run_dir.parent / f".{name}{LATEST_SUFFIX}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(run_dir.name, tmp, target_is_directory=True)
    os.replace(tmp, link)
    return link


def resolve(path: str | Path) -> Path:
    """``path`` with a ``NAME@latest`` link replaced by the run directory it points at (other
    paths unchanged), so messages and results name the real run."""
    p = Path(path)
    if p.is_symlink() and p.name.endswith(LATEST_SUFFIX):
        return p.parent / os.readlink(p)
    return p


def is_run_dir(path: str | Path) -> bool:
    """A run directory holds the spec it was started with."""
    return (Path(path) / "spec.json").is_file()


def nearby(path: str | Path, n: int = 3) -> list[str]:
    """Up to ``n`` names next to a missing ``path`` that look like it (closest first), as paths."""
    import difflib

    p = Path(path)
    parent = p.parent
    try:
        names = [q.name for q in parent.iterdir() if not q.name.startswith(".")]
    except OSError:
        return []
    close = difflib.get_close_matches(p.name, names, n=n, cutoff=0.6)
    if not close:  # runs/quickstart -> runs/quickstart-20260101-120000, runs/quickstart@latest
        close = sorted(q for q in names if q.startswith(p.name) and p.name)[:n]
    return [str(parent / c) if str(parent) != "." else c for c in close]


def did_you_mean(path: str | Path) -> str:
    """``"; did you mean a, b?"`` with :func:`nearby` names, or ``""``."""
    close = nearby(path)
    return f"; did you mean {', '.join(close)}?" if close else ""


def check_run_dir(path: str | Path) -> str | None:
    """Why ``path`` cannot be opened as a run directory (it does not exist, with nearby names; it is
    not a folder; it holds no spec.json), or None when it is one. Cheap: no torch, no data."""
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            return f"{path}: a link to {os.readlink(p)}, which does not exist"
        return f"{path}: no such run directory{did_you_mean(p)}"
    if not p.is_dir():
        return f"{path}: not a run directory (a file)"
    if not is_run_dir(p):
        inside = sorted(q.parent for q in p.glob("*/spec.json"))[:3]
        hint = f"; it holds runs, e.g. {', '.join(map(str, inside))}" if inside else ""
        return f"{path}: not a run directory (no spec.json){hint}"
    return None


def runs_under(folder: str | Path) -> list[Path]:
    """The run directories under ``folder`` (searched recursively, in sorted order), each once: not
    through a ``NAME@latest`` link (its run is listed under its own name), and not a run's own
    folders (``final/`` keeps a copy of spec.json)."""
    p = Path(folder)
    inside = sorted(q.parent for q in p.rglob("spec.json")) if p.is_dir() else []
    inside = [q for q in inside if is_run_dir(q) and not any(
        part.endswith(LATEST_SUFFIX) for part in q.relative_to(p).parts)]
    return [q for q in inside if not any(a in q.parents for a in inside)]


def read_result(run_dir: str | Path) -> dict | None:
    """The run's ``result.json`` (None if missing or unreadable)."""
    try:
        data = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def status(run_dir: str | Path, result: dict | None = None) -> str:
    """One word: finished, preempted, running, stopped or failed (see the module docstring)."""
    if is_locked(run_dir):
        return "running"
    result = read_result(run_dir) if result is None else result
    s = str((result or {}).get("status", ""))
    if s == "finished":
        return "finished" if _reached_the_end(run_dir, result) else "failed"
    if s.startswith("preempted"):
        return "preempted"
    if s.startswith("stopped"):
        return "stopped"
    return "failed"



def _reached_the_end(run_dir, result: dict) -> bool:
    """A "finished" result whose step is short of train.max_steps without an early stop (or a
    curriculum that ended) was written by a run that died of an exception."""
    try:
        max_steps = json.loads((Path(run_dir) / "spec.json").read_text())["train"]["max_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return bool(result.get("early_stopped") or result.get("curriculum_done")
                or int(result.get("step", 0)) >= int(max_steps))


@contextmanager
def new_run(run_dir: str | Path, name: str):
    """For a run starting in an empty ``run_dir`` (whose lock the caller holds): point
    ``NAME@latest`` at it. If the body fails before the run wrote anything, remove the directory
    again; if it fails before its first checkpoint (e.g. at step 0), put the link back where it was
    (the failed run's directory stays, with its result.json)."""
    run_dir = Path(run_dir)
    link = run_dir.parent / f"{name}{LATEST_SUFFIX}"
    before = os.readlink(link) if link.is_symlink() else None
    latest_link(run_dir, name)
    try:
        yield link
    except BaseException:
        if {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            try:
                run_dir.rmdir()
            except OSError:
                pass
        if not any((run_dir / "checkpoints").glob("step_*")):  # nothing to resume or evaluate
            if link.is_symlink() and os.readlink(link) == run_dir.name:
                if before is None:
                    link.unlink()
                else:
                    tmp = link.parent / f".{link.name}.{os.getpid()}"
                    os.symlink(before, tmp, target_is_directory=True)
                    os.replace(tmp, link)
        raise
