"""``kinlm sweep``: many runs of one or more specs, one run directory per point.

Points = specs x the cartesian product of the ``--set-grid`` values x seeds; seed ``k`` of a spec
is the spec's own ``seed + k``. Point ``P`` writes ``OUT/<spec name>/<key=value,...>/seed_<seed>``
(no grid level without a grid). Every point is validated before anything runs. Each point trains
in its own ``kinlm run`` subprocess, so one failing point is recorded and the sweep goes on.

Re-running the same command continues a sweep: a finished (or stopped) point is skipped, a point
with a checkpoint is resumed (``--resume``), a point directory without a checkpoint is cleared and
started again. ``OUT/sweep.json`` lists the points and is rewritten after each one. The child's
output goes to ``OUT/logs/<same path>.log`` (the run directory must start empty).

Threads: points that run at once on one machine share its cores: unless ``OMP_NUM_THREADS`` is
set, each point gets ``OMP_NUM_THREADS = cores // (points at once x processes per point)`` (at
least 1), so two points on two cores do not each start two threads and oversubscribe them.

Launchers: ``local`` (the default) runs each point as a subprocess here. ``submitit`` submits each
point as a job through submitit (SLURM where ``sbatch`` exists, else submitit's local executor) with
the same skip, resume and status bookkeeping; the job runs the same ``kinlm run`` command, forwards
SLURM's SIGTERM (and submitit's pre-timeout SIGUSR2) to it so it saves a checkpoint, and returns
its exit code.

Torch-free: the device count is asked of torch only for ``--parallel auto``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import rundir, userjson
from .errors import SpecError

EXIT_PREEMPTED = 75


class SweepError(Exception):
    """Bad input: one line naming the point."""


@dataclass
class Point:
    spec: str  # the spec file
    name: str  # the spec's name
    seed: int
    grid: list[str]  # the --set-grid items of this point, KEY=VALUE
    overrides: list[str]  # every --set given to `kinlm run` (sets, grid items, seed)
    run_dir: str
    log: str
    status: str = "pending"
    seconds: float | None = None
    devices: str | None = field(default=None, repr=False)
    threads: str | None = field(default=None, repr=False)  # OMP_NUM_THREADS of its process

    def label(self) -> str:
        return " ".join([self.name, *self.grid, f"seed_{self.seed}"])


def safe(text: str) -> str:
    """A file-system-safe folder name."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)[:200] or "_"


def parse_grid(items) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2`` items -> [(KEY, [V1, V2])]; a JSON list value ``KEY=[1,[2,3]]`` is taken whole."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values:
            raise SweepError(f"kinlm sweep: --set-grid {item!r}: expected KEY=V1,V2,...")
        try:
            parsed = userjson.value(values, f"kinlm sweep: --set-grid {key.strip()}", (key.strip(),))
        except SpecError as e:
            raise SweepError(e.problems[0]) from None
        if isinstance(parsed, list):
            vals = [json.dumps(v) if not isinstance(v, str) else v for v in parsed]
        else:
            vals = values.split(",")
        grid.append((key.strip(), vals))
    return grid


def plan(specs, seeds: int, grid_items=(), sets=(), out=None, manager=None) -> tuple[Path, list[Point]]:
    """Every point, validated (each with its own overrides, $KINLM_SET last as `kinlm run` does).
    Raises :class:`SweepError` naming the first bad point."""
    from .spec import SpecError, load_spec

    if seeds < 1:
        raise SweepError(f"kinlm sweep: --seeds {seeds}: expected 1 or more")
    grid = parse_grid(grid_items)
    env_sets = shlex.split(os.environ.get("KINLM_SET", ""))
    combos = list(itertools.product(*[[f"{k}={v}" for v in vals] for k, vals in grid])) or [()]
    points: list[Point] = []
    out_dir = Path(out) if out else None
    for spec_path in specs:
        try:
            base = load_spec(spec_path, [*sets, *env_sets], manager)
        except (SpecError, OSError, ValueError) as e:
            problems = getattr(e, "problems", None) or [str(e)]
            raise SweepError(f"kinlm sweep: {spec_path}: {'; '.join(problems)}") from None
        if out_dir is None:
            out_dir = Path("runs") / f"sweep-{safe(base.name)}"
        for combo in combos:
            where = f"{spec_path}" + "".join(f" --set-grid {c}" for c in combo)
            try:
                spec = load_spec(spec_path, [*sets, *combo, *env_sets], manager)
            except SpecError as e:
                raise SweepError(f"kinlm sweep: {where}: {'; '.join(e.problems)}") from None
            for k in range(seeds):
                seed = spec.seed + k
                overrides = [*sets, *combo, f"seed={seed}"]
                try:
                    load_spec(spec_path, [*overrides, *env_sets], manager)
                except SpecError as e:
                    raise SweepError(f"kinlm sweep: {where} seed={seed}: {'; '.join(e.problems)}") from None
                rel = Path(safe(spec.name), *([safe(",".join(combo))] if combo else []), f"seed_{seed}")
                points.append(Point(spec=str(spec_path), name=spec.name, seed=seed, grid=list(combo),
                                    overrides=overrides, run_dir=str(out_dir / rel),
                                    log=str(out_dir / "logs" / rel) + ".log"))
    seen = {}
    for p in points:
        if p.run_dir in seen:
            raise SweepError(f"kinlm sweep: {p.spec} and {seen[p.run_dir]} give the same run directory "
                             f"{p.run_dir} (two specs with one name?)")
        seen[p.run_dir] = p.spec
    return out_dir, points


# --- what to do with a point ------------------------------------------------------------------


def action(p: Point) -> str:
    """``skip`` (finished or stopped), ``busy`` (another process runs it), ``resume`` (a
    checkpoint) or ``start`` (nothing there, or a directory without a checkpoint: cleared)."""
    d = Path(p.run_dir)
    if not d.exists():
        return "start"
    st = rundir.status(d)
    if st in ("finished", "stopped"):
        return "skip"
    if st == "running":
        return "busy"
    ckpts = d / "checkpoints"
    if rundir.is_run_dir(d) and ckpts.is_dir() and any(c.is_dir() for c in ckpts.glob("step_*")):
        return "resume"
    return "start"


def command(p: Point, resume: bool, nproc: int = 1) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    args = ["-m", "kinlm_core.cli", "run", p.spec, *[a for o in p.overrides for a in ("--set", o)]]
    args += ["--resume", p.run_dir] if resume else ["--run-dir", p.run_dir]
    return [*launcher, *args, "--no-progress"]


def device_groups(parallel: str | int, nproc: int = 1, device_count: int | None = None) -> list[str | None]:
    """One entry per concurrent slot: the CUDA_VISIBLE_DEVICES of that slot (None: leave it
    alone). ``parallel`` is ``auto`` (as many slots as the devices allow, 1 on CPU) or N."""
    if device_count is None:
        try:
            import torch

            device_count = torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - no torch/CUDA: CPU
            device_count = 0
    nproc = max(1, int(nproc))
    if str(parallel) == "auto":
        n = max(1, device_count // nproc) if device_count else 1
    else:
        n = int(parallel)
        if n < 1:
            raise SweepError(f"kinlm sweep: --parallel {parallel}: expected auto or a number >= 1")
    if not device_count:
        return [None] * n
    if n * nproc > device_count:
        raise SweepError(f"kinlm sweep: --parallel {n} x --nproc-per-point {nproc} needs {n * nproc} "
                         f"CUDA devices; {device_count} found")
    return [",".join(str(i * nproc + j) for j in range(nproc)) for i in range(n)]


# --- running ------------------------------------------------------------------------------------


def _write(out: Path, points: list[Point]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = [{k: v for k, v in asdict(p).items() if k not in ("devices", "threads")} for p in points]
    tmp = out / ".sweep.json.tmp"
    tmp.write_text(json.dumps({"points": data}, indent=2) + "\n")
    os.replace(tmp, out / "sweep.json")


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def point_threads(n_slots: int, nproc: int = 1, cores: int | None = None, environ=None) -> str | None:
    """OMP_NUM_THREADS for each point when ``n_slots`` points of ``nproc`` processes run at once:
    its share of the cores; None when the user set OMP_NUM_THREADS (theirs is kept) or one
    single-process point has the machine to itself."""
    environ = os.environ if environ is None else environ
    if "OMP_NUM_THREADS" in environ or n_slots * max(1, nproc) <= 1:
        return None
    return str(max(1, (cores or cpu_count()) // (n_slots * max(1, nproc))))


def point_env(p: Point) -> dict:
    """The environment variables a point's process gets on top of the sweep's."""
    env = {}
    if p.devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = p.devices
    if p.threads is not None:
        env["OMP_NUM_THREADS"] = p.threads
    return env


def _popen(p: Point, resume: bool, nproc: int):
    """Start a point's `kinlm run` in its own session (a terminal's Ctrl-C reaches the sweep
    only, which forwards it once)."""
    env = {**os.environ, **point_env(p)}
    Path(p.log).parent.mkdir(parents=True, exist_ok=True)
    log = open(p.log, "a")  # noqa: SIM115 - closed when the process ends
    log.write(f"$ {shlex.join(command(p, resume, nproc))}\n")
    log.flush()
    proc = subprocess.Popen(command(p, resume, nproc), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    proc._kinlm_log = log
    return proc


def _status_of(p: Point, rc: int) -> str:
    if rc == 0:
        return "finished"
    if rc == EXIT_PREEMPTED:
        return "preempted"
    if rc == 3:
        return "stopped"
    return f"failed (exit {rc})"


def _tail(path: str, n: int = 5) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").strip().splitlines()[-n:]
    except OSError:
        return []


def run(out: Path, points: list[Point], slots: list[str | None], nproc: int = 1, echo=print,
        launch=_popen, poll_s: float = 0.2, share_cores: bool = True) -> int:
    """Run the points, up to ``len(slots)`` at once. Returns the sweep's exit code: 0 all finished,
    75 interrupted (SIGINT/SIGTERM forwarded to the running points), 1 some point failed.
    ``share_cores``: the points run on this machine, so each gets its share of the cores."""
    total = len(points)
    stop = {"sig": None}
    running: dict[int, tuple[Point, object, float, str | None]] = {}

    def on_signal(signum, frame):
        if stop["sig"] is None:
            stop["sig"] = signum
            for p, proc, _, _ in running.values():
                try:
                    proc.send_signal(signum)
                except OSError:
                    pass

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    threads = point_threads(len(slots), nproc) if share_cores else None
    try:
        free = list(slots)
        todo = list(enumerate(points, 1))
        while todo or running:
            while todo and free and stop["sig"] is None:
                i, p = todo.pop(0)
                act = action(p)
                if act == "skip":
                    p.status = rundir.status(p.run_dir)
                    echo(f"[{i}/{total}] {p.label()} ... skip ({p.status})")
                    _write(out, points)
                    continue
                if act == "busy":
                    p.status = "busy"
                    echo(f"[{i}/{total}] {p.label()} ... skip (in use by another process)")
                    _write(out, points)
                    continue
                if act == "start" and Path(p.run_dir).exists():
                    shutil.rmtree(p.run_dir)  # no checkpoint, no result: nothing to keep
                p.devices, p.threads = free.pop(0), threads
                p.status = "running"
                echo(f"[{i}/{total}] {p.label()} ... {'resuming' if act == 'resume' else 'starting'}"
                     + (f" on CUDA_VISIBLE_DEVICES={p.devices}" if p.devices is not None else "")
                     + (f" with OMP_NUM_THREADS={p.threads}" if p.threads is not None else ""))
                running[i] = (p, launch(p, act == "resume", nproc), time.monotonic(), p.devices)
                _write(out, points)
            if stop["sig"] is not None:
                todo = []
            done = [i for i, (_, proc, _, _) in running.items() if proc.poll() is not None]
            for i in done:
                p, proc, t0, dev = running.pop(i)
                free.append(dev)
                log = getattr(proc, "_kinlm_log", None)
                if log is not None:
                    log.close()
                p.seconds = round(time.monotonic() - t0, 1)
                p.status = _status_of(p, proc.returncode)
                echo(f"[{i}/{total}] {p.label()} ... {p.status} in {p.seconds:.0f} s")
                if p.status.startswith("failed"):
                    for line in _tail(p.log):
                        echo(f"    {line}")
                    echo(f"    (log: {p.log})")
                _write(out, points)
            if running and not done:
                time.sleep(poll_s)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stop["sig"] is not None:
        echo("kinlm sweep: interrupted; the running points saved a checkpoint. "
             "Run the same command again to continue.")
        return EXIT_PREEMPTED
    counts: dict[str, int] = {}
    for p in points:
        counts[p.status.split(" ")[0]] = counts.get(p.status.split(" ")[0], 0) + 1
    echo(f"kinlm sweep: {total} points: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
         + f"; {out / 'sweep.json'}")
    echo(f"next: kinlm compare {out}  (runs that differ only in seed are grouped; each grid point is its own row)")
    return 0 if all(p.status == "finished" for p in points) else 1


# --- the submitit launcher ----------------------------------------------------------------------


def run_point_job(cmd: list[str], log: str, env: dict, cwd: str) -> int:
    """What a submitit job runs: the point's ``kinlm run`` (output appended to its log), with
    SIGTERM, SIGINT and SIGUSR2 (submitit's warning before the time limit) forwarded to it as
    SIGTERM, so it saves a checkpoint and exits 75. Returns its exit code."""
    with open(log, "a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd)

        def forward(signum, frame):
            try:
                proc.send_signal(signal.SIGTERM)
            except OSError:
                pass

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            signal.signal(sig, forward)
        return proc.wait()


class SubmititPoint:
    """A submitted point as the scheduler sees a process: ``poll()``, ``returncode``, ``send_signal``
    (cancels the job: SLURM sends it SIGTERM, which the job forwards to `kinlm run`)."""

    def __init__(self, job):
        self.job, self.returncode, self.cancelled = job, None, False

    def poll(self):
        if self.returncode is None and self.job.done():
            try:
                self.returncode = int(self.job.result())
            except Exception:  # noqa: BLE001 - the job died (killed, timed out, node failure)
                self.returncode = EXIT_PREEMPTED if self.cancelled else 1
        return self.returncode

    def send_signal(self, sig):
        self.cancelled = True
        self.job.cancel(check=False)


def submitit_cluster() -> str:
    """``slurm`` where SLURM's ``sbatch`` is on PATH, else ``local`` (submitit's local executor)."""
    return "slurm" if shutil.which("sbatch") else "local"


def submitit_launcher(out: Path, partition: str | None = None, gpus_per_point: int = 0, timeout_min: int = 240,
                      cluster: str | None = None, echo=print):
    """A ``launch`` function for :func:`run` that submits each point as one job (one node, one task;
    the job's own logs in ``OUT/submitit/``). Raises :class:`SweepError` when submitit is missing."""
    try:
        import submitit
    except ImportError:
        raise SweepError("kinlm sweep: --launcher submitit needs submitit: pip install 'kinlm-core[cluster]'") from None
    cluster = cluster or submitit_cluster()
    if gpus_per_point < 0 or timeout_min < 1:
        raise SweepError(f"kinlm sweep: --gpus-per-point {gpus_per_point} / --timeout-min {timeout_min}: "
                         f"expected 0 or more GPUs and 1 or more minutes")
    executor = submitit.AutoExecutor(folder=str(Path(out) / "submitit"), cluster=cluster)
    params = {"timeout_min": timeout_min, "nodes": 1, "tasks_per_node": 1}
    if gpus_per_point:
        params["gpus_per_node"] = gpus_per_point
    if partition:
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    echo(f"kinlm sweep: submitting points through submitit ({cluster} executor"
         + (f", partition {partition}" if partition else "") + f", {gpus_per_point} GPU(s), {timeout_min} min each)")

    def launch(p: Point, resume: bool, nproc: int):
        Path(p.log).parent.mkdir(parents=True, exist_ok=True)
        executor.update_parameters(name=f"kinlm-{safe(p.label())}"[:100])
        env = point_env(p)
        env.pop("CUDA_VISIBLE_DEVICES", None)  # the scheduler assigns the job's devices
        return SubmititPoint(executor.submit(run_point_job, command(p, resume, nproc), p.log, env, os.getcwd()))

    return launch
