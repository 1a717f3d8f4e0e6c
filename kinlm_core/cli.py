"""The `kinlm` command line. Torch is imported only by commands that train, evaluate or
generate, so `--help`, `validate`, `schema`, `plugins` and `list` start fast."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import click

from . import __version__

# exit codes (README "Exit codes", docs/specs.md)
EXIT_OK = 0  # finished (or nothing left to do)
EXIT_ERROR = 1  # an unexpected error: a bug, with its traceback
EXIT_BAD_INPUT = 2  # bad input: spec, arguments, run directory in use or not empty
EXIT_STOPPED = 3  # the run stopped itself before train.max_steps (its result.json says why)
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGINT with its checkpoint saved: continue with --resume
EXIT_INTERRUPTED = 130  # Ctrl-C before training started (nothing to resume)


class UserError(click.ClickException):
    """One line on stderr, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None):
        click.echo(self.message, err=True)


def _fail(lines) -> None:
    raise UserError("\n".join(lines) if isinstance(lines, list) else str(lines))


def _manager():
    """The plugin manager; warns once (stderr) about component names it ignored or disabled."""
    from .plugins import get_manager

    m = get_manager()
    if not m.warned:
        m.warned = True
        for line in m.warnings():
            click.echo(f"kinlm: warning: {line}", err=True)
    return m


def _blame(e: BaseException):
    """The plugin whose code raised ``e`` (plugins.Blame), or None (the core's own code, or no
    plugin loaded yet)."""
    from . import plugins

    try:
        return plugins.get_manager().blame(e) if plugins.loaded() else None
    except Exception:  # noqa: BLE001 - never hide the original error behind this one
        return None


def _parse_kv(items, what) -> dict:
    """``KEY=VALUE`` items (``--opt``) -> {KEY: VALUE parsed as JSON when it parses, else the text},
    through the depth-limited loader that refuses non-finite numbers (``userjson.value``)."""
    from .errors import SpecError
    from .spec import _shown
    from .userjson import value

    out = {}
    for item in items:
        if "=" not in item:
            _fail(f"{what} {_shown(item)!r}: expected key=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = value(v, f"{what} {_shown(item)}", (k,))
        except SpecError as e:
            _fail(e.problems)
    return out


def _env_overrides() -> list[str]:
    """Overrides from $KINLM_SET (shell words, each PATH=VALUE), applied after --set: a way for
    tests and CI to shrink every run without editing commands (e.g. the README tour test)."""
    words = shlex.split(os.environ.get("KINLM_SET", ""))
    if words:
        click.echo(f"kinlm: KINLM_SET applies {' '.join(words)}", err=True)
    return words


def _load(path, overrides):
    from .spec import SpecError, load_spec

    try:
        return load_spec(path, [*overrides, *_env_overrides()], _manager())
    except SpecError as e:
        _fail(e.problems)


def _origin(spec_path, overrides):
    """Who set a JSON path of the spec loaded from ``spec_path`` with ``overrides`` (and $KINLM_SET):
    the ``--set`` that set it, else the spec file. Puts a data file's error where it can be fixed."""
    from .spec import _blame as where_set

    sets = [*overrides, *shlex.split(os.environ.get("KINLM_SET", ""))]
    return lambda path: where_set(path, str(spec_path), sets)


def _engine_call(fn, *args, _set_by=None, **kwargs):
    """Run engine code, turning expected failures into one-line errors: a run that stopped itself
    (a full disk, a non-finite loss) exits 3, bad input 2. ``_set_by``: JSON path -> where it was set
    (:func:`_origin`), put in front of a data file's error.

    kinlm's own errors for bad input (SpecError, RunError, CheckpointError) are bad input wherever
    they are raised; a plugin raising one is named. A ValueError or FileNotFoundError is bad input
    only when kinlm's own code raised it (or a data source's ``check_available``, whose contract it
    is); from anywhere else in a plugin it is that plugin's bug, which ``main`` reports (exit 1)."""
    from .engine.checkpoint import CheckpointError
    from .engine.train import RunError
    from .errors import DataError, RunStopped
    from .spec import SpecError

    try:
        return fn(*args, **kwargs)
    except RunStopped as e:
        click.echo(f"kinlm: {e}", err=True)
        sys.exit(EXIT_STOPPED)
    except DataError as e:
        _fail(f"{_set_by(e.path) if _set_by else 'kinlm'}: {e}")
    except (RunError, CheckpointError, SpecError, ValueError, FileNotFoundError) as e:
        blame = _blame(e)
        lines = e.problems if isinstance(e, SpecError) else [f"kinlm: {e}"]
        if blame is None:
            _fail(lines)
        in_check = any(f.f_code.co_name == "check_available" for f, _ in traceback.walk_tb(e.__traceback__))
        if isinstance(e, (RunError, CheckpointError, SpecError)) or in_check:
            _fail([f"{line} (from plugin {blame.dist.name} {blame.dist.version})" for line in lines])
        raise


def _check_run_dir(path, cmd: str) -> None:
    """Fail at once (before torch and the data) when ``path`` is no run directory: it does not
    exist (with nearby names), or holds no spec.json."""
    from .rundir import check_run_dir

    problem = check_run_dir(path)
    if problem:
        _fail(f"kinlm {cmd}: {problem}")


def _check_resumable(spec, run_dir, spec_path) -> None:
    """Fail at once when the spec differs from the run's saved spec in a field a resume cannot
    change, saying to start a new run instead."""
    from .spec import RESUMABLE_FIELDS, diff_keys, dump

    try:
        old = json.loads((Path(run_dir) / "spec.json").read_text())
    except (OSError, ValueError):
        return  # the engine says what is wrong with it
    diffs = [k for k in diff_keys(old, dump(spec))
             if not any(k == f or k.startswith(f + ".") or k.startswith(f + "[") for f in RESUMABLE_FIELDS)]
    if diffs:
        shown = ", ".join(diffs[:6]) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        _fail(f"kinlm run: --resume {run_dir}: the spec differs from the run's saved spec in {shown}; a resume "
              f"continues the same run, so start a new run for the changed spec: kinlm run {spec_path} "
              f"(without --resume)")


def _threads(n) -> None:
    """Set torch's intra-op threads: --threads N, else $OMP_NUM_THREADS (which torch reads too), else
    torch's default of one per core. Several processes sharing the cores each want a share of them."""
    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if not env.isdigit() or int(env) < 1:
            return
        n = int(env)
    import torch

    torch.set_num_threads(n)


strict_checkpoint_option = click.option(
    "--strict-checkpoint", is_flag=True,
    help="refuse a damaged newest checkpoint (exit 2) instead of falling back to the newest intact one")


weights_option = click.option(
    "--weights", type=click.Choice(["last", "best"]), default="last", show_default=True,
    help="last: the newest checkpoint (else final/); best: RUN/best, the best evaluation's weights (train.keep_best)")


def _warn(msg: str) -> None:
    click.echo(f"kinlm: warning: {msg}", err=True)


set_option = click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
                          help="override a spec field, e.g. --set train.max_steps=10 (repeatable; VALUE is JSON or a string)")


class _Group(click.Group):
    """Reports an unexpected exception raised in a plugin's code (a model, a hook, a component)
    as that plugin's bug: the traceback, then one line naming the distribution (and the hook), exit 1.
    A :class:`PluginFault` (a broken contract, e.g. a model's output shape) is one line, exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # noqa: BLE001
            from .plugins import PluginFault  # imported only now: fast commands never load the plugins

            if isinstance(e, PluginFault):
                click.echo(f"kinlm: {e}", err=True)
                ctx.exit(EXIT_ERROR)
            blame = _blame(e)
            if blame is None:
                raise  # the core's own bug: Python's traceback, exit 1
            traceback.print_exc()
            click.echo(f"kinlm: {type(e).__name__} raised in {blame}: a bug in {blame.dist.name}; report it to "
                       f"its authors, or run without it: KINLM_DISABLE_PLUGINS={blame.dist.name}", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kinlm")
def main():
    """kinlm: a lab for physics-inspired small language models.

    Every method is a plugin, every experiment a JSON spec. Start with
    `kinlm run specs/quickstart.json`, then `kinlm tensorboard runs/`.
    """


# --- plugins and components ----------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
@click.option("--check", is_flag=True, help="exit 1 when a plugin failed to load or a component name is "
              "ignored or disabled (a clash)")
@click.option("-v", "--verbose", is_flag=True, help="show the traceback of each plugin that failed to load")
def plugins(as_json, check, verbose):
    """List installed plugin distributions, their versions and components, and each one's problems:
    a plugin that failed to load (ERROR), a component name it clashes on (WARNING). Plugins turned
    off by $KINLM_DISABLE_PLUGINS are listed as such."""
    from .plugins import get_manager

    m = get_manager()
    infos = [p.as_dict() for p in m.plugins()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
    else:
        for p in infos:
            click.echo(f"{p['name']} {p['version']}" + (f"  ERROR: {p['error']}" if p["error"] else ""))
            for kind, names in p["components"].items():
                click.echo(f"  {kind}: {', '.join(names)}")
            for w in p["warnings"]:
                click.echo(f"  WARNING: {w}")
            if p["error"] and verbose and p["traceback"]:
                click.echo("    " + p["traceback"].rstrip().replace("\n", "\n    "))
        for dist in m.turned_off:
            click.echo(f"{dist}  (turned off by KINLM_DISABLE_PLUGINS)")
        if any(p["error"] for p in infos) and not (verbose or m.trace):
            click.echo("(kinlm plugins -v shows why each plugin failed to load)", err=True)
    if check and any(p["error"] or p["warnings"] for p in infos):
        sys.exit(EXIT_ERROR)


def _kind_aliases() -> dict:
    """Every way a user may name a kind: its name, its spec key, its hook's plural (models, curricula)."""
    from .api import COMPONENT_KINDS

    out = {}
    for k in COMPONENT_KINDS:
        out.update({k.name: k.name, k.field: k.name, k.hook.removeprefix("kinlm_register_"): k.name})
    return out


@main.command("list")
@click.argument("kind", required=False)
def list_(kind):
    """Show components with their config fields, types, defaults and docs.

    KIND is one of the component kinds: model, objective, regularizer, curriculum, data_source,
    tokenizer, analyzer, generator (plurals, spec keys and dashes accepted)."""
    from .api import KINDS

    m = _manager()
    kinds = KINDS
    if kind:
        k = kind.lower().replace("-", "_")
        k = _kind_aliases().get(k, k)
        if k not in KINDS:
            _fail(f"kinlm list: unknown kind '{kind}'; one of: {', '.join(KINDS)}")
        kinds = (k,)
    reg = m.registry()
    for k in kinds:
        click.echo(click.style(f"[{k}]", bold=True))
        for name, r in sorted(reg[k].items()):
            cls = r.config
            click.echo(f"  {name}  ({r.dist})  {cls.summary()}")
            for fname, f in cls.model_fields.items():
                if fname == "type":
                    continue
                ann = f.annotation.__name__ if isinstance(f.annotation, type) else str(f.annotation).replace("typing.", "")
                default = "required" if f.is_required() else json.dumps(f.get_default(call_default_factory=True), default=str)
                click.echo(f"      {fname}: {ann} = {default}  {f.description or ''}")


@main.command()
@click.argument("specs", nargs=-1, required=True)
@set_option
def validate(specs, overrides):
    """Check specs and claim files without running anything (all problems of every file, exit 2 if
    any). A JSON object with the key "claim" is a claim: its schema and every arm's spec (with the
    arm's overrides) are checked."""
    from . import claims as cl
    from .spec import SpecError, load_spec
    from .userjson import read as read_json_file

    m = _manager()
    problems = []
    overrides = [*overrides, *_env_overrides()]
    for path in specs:
        try:
            is_claim = cl.is_claim(read_json_file(path))
        except SpecError as e:  # not JSON (too deep, invalid, ...): one line, the next file goes on
            problems += e.problems
            continue
        if is_claim:
            try:
                inst = cl.Installed(cl.load_claim(path), Path(path), "")
            except cl.ClaimError as e:
                problems += e.problems
                continue
            more = cl.check(inst, m)
            problems += more
            if not more:
                click.echo(f"ok: {path} (claim {inst.claim.id})")
            continue
        try:
            load_spec(path, overrides, m)
            click.echo(f"ok: {path}")
        except SpecError as e:
            problems += e.problems
    if problems:
        _fail(problems)


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="write to FILE instead of stdout")
def schema(output):
    """Print the JSON Schema of a spec (covers every installed component)."""
    from .spec import json_schema

    text = json.dumps(json_schema(_manager()), indent=2)
    if output:
        Path(output).write_text(text + "\n")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)


def _pip(args, verbose: bool, doing: str, done: str) -> None:
    """pip in this interpreter: quiet (one line before, one after) unless -v, then pip's own output.
    On failure pip's last lines are shown and its exit status kept."""
    cmd = [sys.executable, "-m", "pip", *args]
    if verbose:
        rc = subprocess.run(cmd).returncode
    else:
        click.echo(f"kinlm: {doing} (pip; -v shows its output)", err=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        rc = proc.returncode
        if rc:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
            click.echo("\n".join([f"kinlm: pip failed (exit {rc}); its last lines:", *tail]), err=True)
    if rc:
        raise SystemExit(rc)
    click.echo(f"kinlm: {done}", err=True)


verbose_option = click.option("-v", "--verbose", is_flag=True, help="show pip's output")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                              help="CPU threads for torch (default: $OMP_NUM_THREADS, else one per core); give "
                              "each of several processes sharing the cores its share")


@main.command()
@click.argument("packages", nargs=-1, required=True)
@click.option("-U", "--upgrade", is_flag=True, help="upgrade if already installed")
@click.option("-e", "--editable", is_flag=True, help="install a local folder in editable mode")
@verbose_option
def install(packages, upgrade, editable, verbose):
    """Install plugins into the interpreter that runs kinlm (pip underneath; quiet unless -v)."""
    args = ["install"] + (["--upgrade"] if upgrade else [])
    for p in packages:
        args += ["-e", p] if editable else [p]
    names = " ".join(packages)
    before = _plugin_versions()
    _pip(args, verbose, f"installing {names}", f"installed {names}; `kinlm plugins` lists what it provides")
    broken = _broken_new_plugins(before)
    for p in broken:
        problem = f"fails to load: {p['error']}" if p["error"] else "; ".join(p["warnings"])
        click.echo(f"kinlm install: {p['name']} {p['version']} is installed but {problem} (`kinlm plugins -v` "
                   f"shows {'its traceback' if p['error'] else 'every plugin'})", err=True)
    if broken:
        sys.exit(EXIT_ERROR)


def _plugin_versions() -> set:
    """(distribution, version) of every installed `kinlm` entry point, without importing any."""
    import importlib.metadata as md

    return {(ep.dist.name, ep.dist.version) for ep in md.entry_points(group="kinlm") if ep.dist}


def _broken_new_plugins(before: set) -> list[dict]:
    """The plugins new or changed since ``before`` that fail to load or clash on a component name,
    as `kinlm plugins --json` gives them. Loaded in a fresh process: one this process started
    would miss what pip just set up (an editable install's .pth file, say)."""
    proc = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "plugins", "--json"], capture_output=True,
                          text=True)
    try:
        infos = json.loads(proc.stdout)
    except ValueError:
        return [{"name": "kinlm", "version": __version__, "warnings": [],
                 "error": f"`kinlm plugins` failed after the install: {proc.stderr.strip()[-300:]}"}]
    return [p for p in infos if (p["name"], p["version"]) not in before and (p["error"] or p["warnings"])]


@main.command()
@click.argument("packages", nargs=-1, required=True)
@verbose_option
def uninstall(packages, verbose):
    """Uninstall plugins from the interpreter that runs kinlm (quiet unless -v)."""
    names = " ".join(packages)
    _pip(["uninstall", "-y", *packages], verbose, f"uninstalling {names}", f"uninstalled {names}")


# --- running ----------------------------------------------------------------------------------


@main.command()
@click.argument("spec_path", metavar="SPEC")
@set_option
@click.option("--run-dir", type=click.Path(file_okay=False), help="where the run writes (default runs/NAME-TIME)")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="continue the run in this directory (e.g. runs/NAME@latest)")
@click.option("--extend", is_flag=True, help="with --resume and a larger train.max_steps: train a run on past its "
              "schedule (the added steps run at the schedule's final learning rate)")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a terminal)")
@strict_checkpoint_option
@threads_option
def run(spec_path, overrides, run_dir, resume_dir, extend, progress, strict_checkpoint, threads):
    """Train (and evaluate, sample, analyze) as a spec says.

    A new run writes runs/NAME-TIME/ and points runs/NAME@latest at it. Exit status: 0 finished
    (or nothing left to do), 2 bad input or the run directory is in use, 3 the run stopped itself
    (its result.json says why), 75 stopped by SIGTERM/SIGINT with a checkpoint saved (continue
    with --resume), 1 an unexpected error. A full disk stops the run with exit 3, its last
    checkpoint kept; --resume skips damaged checkpoints (warning) unless --strict-checkpoint."""
    import errno

    from . import rundir

    spec = _load(spec_path, overrides)
    if extend and not resume_dir:
        _fail("kinlm run: --extend needs --resume RUN (the run to train further)")
    if resume_dir:
        if run_dir and rundir.resolve(run_dir) != rundir.resolve(resume_dir):
            _fail("kinlm run: give either --run-dir or --resume, not both")
        _check_run_dir(resume_dir, "run: --resume")
        run_dir = rundir.resolve(resume_dir)
        _check_resumable(spec, run_dir, spec_path)
        done = rundir.read_result(run_dir)
        if (done and done.get("status") == "finished" and not rundir.is_locked(run_dir)
                and (spec.train.max_steps <= done.get("step", 0) or done.get("early_stopped")
                     or done.get("curriculum_done"))):
            click.echo(f"kinlm run: {run_dir} finished at step {done['step']}; nothing to do (to train further: "
                       f"--set train.max_steps=N with N > {done['step']} and --extend)", err=True)
            click.echo(json.dumps({"run_dir": str(run_dir), **done}))
            return
    elif run_dir is None:
        run_dir = Path("runs") / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(run_dir)
    _threads(threads)
    from .engine.train import distributed_env
    from .engine.train import run as run_engine

    def train():
        return _engine_call(run_engine, spec, run_dir, resume=bool(resume_dir), progress=progress,
                            log=lambda msg: click.echo(msg, err=True), extend=extend,
                            strict_checkpoint=strict_checkpoint, _set_by=_origin(spec_path, overrides))

    main_rank = distributed_env()[0] == 0
    try:
        if not main_rank:  # rank 0 holds the lock for the whole job
            result = train()
        else:
            problem = None if resume_dir else rundir.check_new(run_dir)
            if problem:  # refused before the lock: nothing is written into someone else's folder
                _fail(f"kinlm run: {problem}")
            created = not run_dir.exists()
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                _fail(f"kinlm run: {run_dir}: cannot create the run directory ({e.strerror})")
            with rundir.locked(run_dir):
                with nullcontext() if resume_dir else rundir.new_run(run_dir, spec.name, created):
                    result = train()
    except rundir.RunDirBusy as e:
        _fail(f"kinlm run: {e}")
    except KeyboardInterrupt:
        click.echo("kinlm run: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as e:  # e.g. the lock or spec.json on a full disk, before training started
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        click.echo(f"kinlm run: {run_dir}: disk full ({e.strerror}); nothing was changed", err=True)
        sys.exit(EXIT_STOPPED)
    status = str(result.get("status", ""))
    if main_rank:  # rank 0 alone reports
        for line in _outputs(run_dir, spec.name):
            click.echo(line, err=True)
        click.echo(json.dumps({"run_dir": str(run_dir), **result}))
    if status.startswith("preempted"):
        sys.exit(EXIT_PREEMPTED)
    if not status.startswith("finished"):
        sys.exit(EXIT_STOPPED)


def _outputs(run_dir: Path, name: str) -> list[str]:
    """Where a run's readable outputs are (after it ends)."""
    lines = []
    if (run_dir / "samples.md").exists():
        lines.append(f"samples: {run_dir / 'samples.md'}")
    figures = sorted((run_dir / "analysis").rglob("*.png")) if (run_dir / "analysis").is_dir() else []
    if figures:
        lines.append(f"figures: {len(figures)} PNG under {run_dir / 'analysis'}/, latest {figures[-1]}")
    if (run_dir / "final").is_dir():
        lines.append(f"model: {run_dir / 'final'}/")
    lines.append(f"curves: kinlm tensorboard {run_dir}")
    link = run_dir.parent / f"{name}@latest"
    if link.is_symlink() and Path(os.readlink(link)).name == run_dir.name:
        lines.append(f"latest run of {name}: {link}")
    return lines


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--prompt", required=True, help="text to continue")
@click.option("--generator", default="sample", show_default=True, help="generator component (see kinlm list generator)")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="generator option, e.g. --opt temperature=0.7")
@click.option("--device", default="auto", show_default=True)
@strict_checkpoint_option
@weights_option
@threads_option
def generate(run_dir, prompt, generator, opts, device, strict_checkpoint, weights, threads):
    """Continue a prompt with a trained run's model (`--opt num_samples=N`: N samples in one batch).

    `sample` ends a continuation at the end-of-text token (as transformers' generate does); with
    `--opt stop_at_eos=false` (the default of generators whose source goes on) generation continues
    past it and prints each document boundary as <|endoftext|>."""
    from pydantic import ValidationError

    from .plugins import RegistryError

    m = _manager()
    try:
        cls = m.get("generator", generator)
    except RegistryError as e:
        _fail(f"kinlm generate: --generator: {e}")
    try:
        cfg = cls(prompt=prompt, **_parse_kv(opts, "kinlm generate: --opt"))
    except ValidationError as e:
        _fail([f"kinlm generate: --opt {'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors()])
    _check_run_dir(run_dir, "generate")
    _threads(threads)
    from .engine.load import load_run

    loaded = _engine_call(load_run, Path(run_dir), device, strict=strict_checkpoint, warn=_warn, weights=weights)
    if cfg.seed is None:
        cfg = cfg.model_copy(update={"seed": loaded.spec.seed})
    if hasattr(cfg, "generate_many"):  # several samples of the prompt in one batch (--opt num_samples=N)
        texts = _engine_call(cfg.generate_many, loaded.model, loaded.tokenizer)
        click.echo("\n-----\n".join(prompt + t for t in texts))
    else:
        click.echo(prompt + _engine_call(cfg.generate, loaded.model, loaded.tokenizer))


@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["validation", "test"]), default="test", show_default=True)
@click.option("--batches", type=int, default=None, help="limit the number of batches (default: the whole split)")
@click.option("--blimp", is_flag=True, help="score BLiMP instead (accuracy overall, per field, per paradigm)")
@click.option("--blimp-paradigms", metavar="A,B,...", help="with --blimp: only these paradigms (default: all 67)")
@click.option("--blimp-max-pairs", type=click.IntRange(min=1), metavar="N",
              help="with --blimp: the first N pairs of each paradigm (default: all 1,000)")
@click.option("--untrained", is_flag=True, help="the run's step-0 weights (built from its seed) instead of its trained ones")
@click.option("--ngram", type=click.IntRange(1, 2), metavar="ORDER",
              help="a count n-gram (1: unigram, 2: bigram) fitted on the run's training split instead of its model")
@click.option("--ngram-k", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="with --ngram: add-k smoothing")
@click.option("--lm-eval", "lm_eval_tasks", metavar="TASK[,TASK...]",
              help="score with lm-evaluation-harness (its hf model on the run's transformers export) instead; "
                   "kinlm's BLiMP paradigms are the tasks kinlm_blimp_<paradigm> and the group kinlm_blimp")
@click.option("--lm-eval-include", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="with --lm-eval: a folder of your own task YAMLs")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="with --lm-eval: the first N documents of each task")
@click.option("--device", default="auto", show_default=True)
@strict_checkpoint_option
@weights_option
@threads_option
def eval_(run_dir, split, batches, blimp, blimp_paradigms, blimp_max_pairs, untrained, ngram, ngram_k, lm_eval_tasks,
          lm_eval_include, limit, device, strict_checkpoint, weights, threads):
    """Evaluate a run's model on a split: loss, perplexity, bits per byte.

    With --blimp: BLiMP minimal pairs scored as lm-evaluation-harness does; prints a JSON object
    with blimp/overall, blimp/<field> and blimp/<paradigm> (accuracies in [0, 1]) and writes
    RUN/analysis/blimp/step_N/ (metrics.json, blimp.png), where `kinlm compare` finds it.

    Controls, evaluated the same way (the run's data, tokenizer, objective, batches): --untrained
    scores the run's own step-0 weights; --ngram ORDER a count unigram or add-k bigram fitted on
    the run's training split (kinlm_core.ngram).

    With --lm-eval: lm-evaluation-harness (pip install 'kinlm-core[lmeval]') on the model exported to a
    temporary transformers folder; prints the harness's table and writes its JSON to
    RUN/analysis/lm_eval/step_N/results.json (tasks of earlier calls at that step are kept)."""
    from .engine.checkpoint import atomic_write_text
    from .engine.evaluate import evaluate
    from .engine.load import load_run

    if (blimp_paradigms or blimp_max_pairs) and not blimp:
        _fail("kinlm eval: --blimp-paradigms and --blimp-max-pairs go with --blimp")
    if ngram and (untrained or blimp):
        _fail("kinlm eval: --ngram goes with neither --untrained nor --blimp")
    if untrained and blimp:  # it would write the step-0 scores among the run's own analyses
        _fail("kinlm eval: --untrained goes with a split's loss, not --blimp")
    paradigms = [p.strip() for p in blimp_paradigms.split(",") if p.strip()] if blimp_paradigms else None
    if paradigms:
        from .blimp import unknown_paradigms

        bad = unknown_paradigms(paradigms)
        if bad:
            _fail([f"kinlm eval: --blimp-paradigms: {b}" for b in bad])
    if (lm_eval_include or limit) and not lm_eval_tasks:
        _fail("kinlm eval: --lm-eval-include and --limit go with --lm-eval")
    if lm_eval_tasks and blimp:
        _fail("kinlm eval: --blimp and --lm-eval are two different evaluations; give one")
    if lm_eval_tasks:
        from .lmeval import available

        missing = available()
        if missing:
            _fail(f"kinlm eval --lm-eval: {missing}")
    _check_run_dir(run_dir, "eval")
    _threads(threads)
    if ngram:
        click.echo(json.dumps({"split": split, **_engine_call(_eval_ngram, Path(run_dir), ngram, ngram_k, split,
                                                              batches)}))
        return
    if untrained and weights == "best":
        _fail("kinlm eval: --untrained and --weights best are two different models; give one")
    loaded = _engine_call(load_run, Path(run_dir), device, strict=strict_checkpoint, warn=_warn, untrained=untrained,
                          weights=weights)
    if lm_eval_tasks:
        _lm_eval(loaded, Path(run_dir), [t.strip() for t in lm_eval_tasks.split(",") if t.strip()],
                 lm_eval_include, limit)
        return
    if blimp:
        from .builtins.analyzers import BlimpConfig

        out = Path(run_dir) / "analysis" / "blimp" / f"step_{loaded.step or 0:07d}"
        out.mkdir(parents=True, exist_ok=True)
        metrics = _engine_call(BlimpConfig(paradigms=paradigms, max_pairs=blimp_max_pairs).analyze,
                               loaded.model, loaded.tokenizer, [], out)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        click.echo(f"kinlm eval: BLiMP {metrics['overall']:.4f} on {metrics['pairs']} pairs; {out}/", err=True)
        click.echo(json.dumps({"step": loaded.step, **{k if k in ("pairs", "ties", "truncated") else f"blimp/{k}": v
                                                      for k, v in metrics.items()}}))
        return
    dev = next(loaded.model.parameters()).device
    obj = loaded.spec.objective
    r = evaluate(loaded.model, obj.build(loaded.tokenizer), loaded.data, split, obj.unit(), loaded.spec.train.eval_batch_size,
                 batches, dev, obj.bpb, seed=loaded.spec.seed)
    r["objective"] = obj.type
    click.echo(json.dumps({"split": split, "step": loaded.step, **({"weights": "best"} if weights == "best" else {}),
                           **r, **({"untrained": True} if untrained else {})}))


def _eval_ngram(run_dir: Path, order: int, k: float, split: str, batches) -> dict:
    """`kinlm eval RUN --ngram ORDER`: the run's data and tokenizer, no weights needed."""
    from .engine.load import run_spec_and_data
    from .engine.train import RunError
    from .ngram import evaluate_ngram

    spec, data = run_spec_and_data(run_dir)
    try:
        r = evaluate_ngram(spec, data, order, k, split, batches)
    except ValueError as e:
        raise RunError(f"kinlm eval {run_dir} --ngram {order}: {e}") from None
    return {**r, "objective": spec.objective.type}


def _lm_eval(loaded, run_dir: Path, tasks: list[str], include, limit) -> None:
    """`kinlm eval --lm-eval`: export to a temporary folder, run the harness, print and keep its results."""
    import tempfile

    from . import lmeval
    from .engine.checkpoint import atomic_write_text
    from .engine.export import export_final

    dev = str(next(loaded.model.parameters()).device)
    with tempfile.TemporaryDirectory(prefix="kinlm-export-") as tmp:
        what = _engine_call(export_final, loaded.model, loaded.spec, loaded.tokenizer, Path(tmp))
        if not (Path(tmp) / "config.json").exists():
            _fail(f"kinlm eval --lm-eval: the {loaded.spec.model.type!r} model has no transformers export ({what})")
        try:
            result = lmeval.evaluate(Path(tmp), tasks, Path(include) if include else None, limit, dev)
        except ValueError as e:
            _fail(f"kinlm eval --lm-eval: {e}")
    click.echo(lmeval.table(result))
    out = run_dir / "analysis" / "lm_eval" / f"step_{loaded.step or 0:07d}"
    out.mkdir(parents=True, exist_ok=True)
    file = out / "results.json"
    try:
        old = json.loads(file.read_text())
    except (OSError, ValueError):
        old = {}
    if isinstance(old, dict):  # an earlier call's tasks stay; this call's replace theirs
        for key in ("results", "groups", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
            if isinstance(old.get(key), dict) and isinstance(result.get(key), dict):
                result[key] = {**old[key], **result[key]}
    result["kinlm"] = {"run": str(run_dir), "step": loaded.step, "limit": limit}
    atomic_write_text(file, lmeval.to_json(result))
    click.echo(f"kinlm eval: lm-eval results in {file}", err=True)


@main.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--hf-model", "hf_models", multiple=True, type=click.Path(file_okay=False),
              help="a pretrained transformers model folder on disk: a causal LM or an encoder (repeatable)")
@click.option("--exclude-special-tokens", is_flag=True,
              help="feed --hf-model's special tokens ([CLS], [SEP], BOS) but leave their positions out of the metrics")
@click.option("--analyzer", required=True, help="analyzer component (see kinlm list analyzer)")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="analyzer option")
@click.option("--texts", type=click.Path(dir_okay=False, exists=True), help="one text per line (default: validation text)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder (metrics.json, PNGs)")
@click.option("--device", default="auto", show_default=True)
@weights_option
@threads_option
def analyze(run_dirs, hf_models, exclude_special_tokens, analyzer, opts, texts, out, device, weights, threads):
    """Run an analyzer on runs' models and/or transformers model folders.

    One model: the analyzer's analyze(). Several: its analyze_many(), which compares them
    (difference plots) or, by default, analyzes each into OUT/<name>/."""
    from .api import ANALYZER_TEXTS

    from pydantic import ValidationError

    from .plugins import RegistryError

    if not run_dirs and not hf_models:
        _fail("kinlm analyze: give RUN_DIR(s) and/or --hf-model FOLDER(s)")
    m = _manager()
    try:
        cfg = m.get("analyzer", analyzer)(**_parse_kv(opts, "kinlm analyze: --opt"))
    except RegistryError as e:
        _fail(f"kinlm analyze: --analyzer: {e}")
    except ValidationError as e:
        _fail([f"kinlm analyze: --opt {'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors()])
    for d in run_dirs:
        _check_run_dir(d, "analyze")
    _threads(threads)
    from .engine import load

    models, lines = {}, None

    def add(name, pair):
        key, i = name, 2
        while key in models:
            key, i = f"{name}-{i}", i + 1
        models[key] = pair

    for d in run_dirs:
        loaded = _engine_call(load.load_run, Path(d), device, warn=_warn, weights=weights)
        add(Path(d).name, (loaded.model, loaded.tokenizer))
        if lines is None:
            lines = [loaded.tokenizer.decode(r[:-1].tolist()) for r in loaded.data.blocks("validation")[:ANALYZER_TEXTS]]
    for folder in hf_models:
        add(Path(folder).name, _engine_call(load.load_hf_model, Path(folder), device,
                                            special_tokens=not exclude_special_tokens))
    if texts:
        lines = [ln for ln in Path(texts).read_text().splitlines() if ln.strip()]
    if not lines:
        lines = ["The history of the city begins with a small settlement on the river.",
                 "She opened the letter and read it twice before she understood.",
                 "In mathematics, a group is a set with an operation that combines two elements."]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(models) == 1:
        model, tok = next(iter(models.values()))
        metrics = _engine_call(cfg.analyze, model, tok, lines, out)
    else:
        metrics = _engine_call(cfg.analyze_many, models, lines, out)
    from .engine.checkpoint import atomic_write_text

    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    click.echo(json.dumps(metrics))


@main.command()
@click.argument("source", metavar="SPEC|RUN")
@set_option
@click.option("--vocab-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="build the model for N token ids instead of building the spec's tokenizer (faster)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON object: totals and every tensor")
def params(source, overrides, vocab_size, as_json):
    """Show a spec's (or a run's) model as a table of its parameters: names (the names a curriculum's
    `trainable` prefixes match), shapes and counts; total, embedding and non-embedding parameters;
    which tensors are tied (one tensor under two names: freezing one freezes the other)."""
    from .rundir import check_run_dir, resolve

    path = Path(source)
    if path.is_dir():
        problem = check_run_dir(path)
        if problem:
            _fail(f"kinlm params: {problem}")
        path = resolve(path) / "spec.json"
    spec = _load(path, overrides)
    import torch

    from .engine.train import run_tokenizer, schedule
    from .params import count_parameters, table

    if vocab_size is None:
        from .data import prepare_data
        from .engine.train import cache_dir

        data = _engine_call(prepare_data, spec.data, spec.tokenizer, spec.train.block_size, cache_dir() / "data",
                            splits=["train"], log=None, _set_by=_origin(path, overrides))
        vocab_size = run_tokenizer(spec, data.tokenizer, schedule(spec)).vocab_size
    torch.manual_seed(spec.seed)
    try:
        with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
            model = spec.model.build(vocab_size)
    except Exception:  # noqa: BLE001 - a model whose constructor reads values: build it for real
        model = _engine_call(spec.model.build, vocab_size)
    counts = count_parameters(model)
    if as_json:
        click.echo(json.dumps({"spec": str(path), "model": spec.model.type, "vocab_size": vocab_size,
                               **counts.as_dict()}, indent=2))
        return
    click.echo(f"{spec.name}: model {spec.model.type}, {vocab_size:,} token ids ({path})\n")
    click.echo(table(counts), nl=False)


@main.group()
def data():
    """Data of a spec, prepared ahead of a run."""


@data.command("prepare")
@click.argument("spec_path", metavar="SPEC")
@set_option
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="tokenizer processes (chunks of about 1M characters each)")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "validation", "test"]),
              help="only this split (repeatable; default: all three)")
def data_prepare(spec_path, overrides, workers, splits):
    """Tokenize a spec's corpora into the data cache with N processes.

    Writes what `kinlm run` would write at its start (the cache under $KINLM_CACHE/data), so the run
    finds a cache hit and streams the prepared token files instead of tokenizing. Resumable: an
    interrupted prepare keeps its finished shards and skips them when run again."""
    from .data import prepare_data
    from .engine.train import cache_dir

    spec = _load(spec_path, overrides)
    t0 = time.time()
    data = _engine_call(prepare_data, spec.data, spec.tokenizer, spec.train.block_size, cache_dir() / "data",
                        splits=list(splits) or ["train", "validation", "test"], log=lambda m: click.echo(m, err=True),
                        workers=workers, _set_by=_origin(spec_path, overrides))
    n = sum(data.n_tokens.values())
    secs = time.time() - t0
    click.echo(json.dumps({"cache_dir": str(data.cache_dir), "cache_hit": data.cache_hit, "tokens": data.n_tokens,
                           "workers": workers, "seconds": round(secs, 2),
                           "tokens_per_s": None if data.cache_hit else round(n / max(secs, 1e-9))}))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--step", type=int, default=None, help="the checkpoint of this step (default: the last one)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="output folder (default: RUN_DIR/final, or RUN_DIR/export-step_N with --step)")
@click.option("--push-to-hub", "push_repo", metavar="REPO", default=None,
              help="then upload the folder to this hub repository (huggingface_hub; needs a login)")
@strict_checkpoint_option
@weights_option
def export(run_dir, step, out, push_repo, strict_checkpoint, weights):
    """Write a run's model where the ecosystem loads it: a transformers folder with a model card
    (README.md). A model with `hf_export` becomes a custom-code folder (load it with
    trust_remote_code=True, no kinlm needed); gpt and the transformers model plain transformers
    folders; any other model safetensors + spec.json. Prints what was written."""
    from .engine.export import export_final
    from .engine.load import load_run

    _check_run_dir(run_dir, "export")
    loaded = _engine_call(load_run, Path(run_dir), "cpu", step=step, strict=strict_checkpoint, warn=_warn,
                          weights=weights)
    if out is None:
        out = Path(run_dir) / ("final" if step is None and weights == "last" else
                               "export-best" if weights == "best" else f"export-step_{step:07d}")
    result = None  # the model card's facts: result.json, unless it describes another step than the one exported
    try:
        result = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, ValueError):
        pass
    if not isinstance(result, dict) or (loaded.step is not None and result.get("step") != loaded.step):
        result = {"step": loaded.step} if loaded.step is not None else {}
    click.echo(_engine_call(export_final, loaded.model, loaded.spec, loaded.tokenizer, Path(out),
                            run_dir=Path(run_dir), result=result))
    if push_repo:
        _push_to_hub(Path(out), push_repo)


def _push_to_hub(folder: Path, repo: str) -> None:
    """Upload an export folder to a hub model repository (created if missing)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        _fail("kinlm export --push-to-hub: huggingface_hub is not installed")
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message="kinlm export")
    except Exception as e:  # noqa: BLE001 - network, auth: one line, the folder stays written
        _fail(f"kinlm export --push-to-hub {repo}: {type(e).__name__}: {str(e)[:200]} (the export is in {folder})")
    click.echo(f"pushed {folder} to https://huggingface.co/{repo}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--port", default=6006, show_default=True, envvar="KINLM_TENSORBOARD_PORT", show_envvar=True)
def tensorboard(run_dirs, port):
    """Start TensorBoard on 127.0.0.1 over these runs (SIGTERM or Ctrl-C stops it).

    RUN_DIRS: run directories, NAME@latest links, or folders holding runs. Each run is listed once,
    under its own name (TensorBoard itself would list a run twice, once through its NAME@latest
    link); a run started later under a folder appears within seconds (TensorBoard restarts)."""
    def command():
        cmd = [sys.executable, "-m", "tensorboard.main", "--host", "127.0.0.1", "--port", str(port),
               "--logdir_spec", _logdir_spec(run_dirs)]
        return cmd

    click.echo(f"TensorBoard at http://127.0.0.1:{port}  (Ctrl-C to stop)", err=True)
    raise SystemExit(_serve(command(), refresh=command))


def _logdir_spec(paths) -> str:
    """TensorBoard's ``name:path,...`` with every run under ``paths`` once: a run directory (or a
    NAME@latest link: the run it points at) as itself, a folder as the runs under it (``folder/run``
    names), or as itself while it holds none."""
    from .rundir import is_run_dir, resolve, runs_under

    entries = []
    for d in paths:
        p = resolve(d)
        if is_run_dir(p):
            entries.append((p.name, p))
            continue
        inside = runs_under(p)
        entries += [(f"{Path(d).name}/{q.relative_to(p)}", q) for q in inside] or [(Path(d).name, Path(d))]
    seen, out = set(), []
    for name, path in entries:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(f"{name}:{path}")
    return ",".join(out)


class _Stop(Exception):
    pass


def _stop_child(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve(cmd, refresh=None, every: float = 5.0) -> int:
    """Run a server child until it ends or we get SIGTERM/SIGINT; then stop it too (never orphaned).
    With ``refresh``, every ``every`` seconds ask it for the command again and, when it changed
    (a new run to show), restart the child with it."""
    def on_signal(signum, frame):
        raise _Stop(signum)

    proc = subprocess.Popen(cmd)
    # both signals explicitly: a process started in the background inherits SIGINT as ignored
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                return proc.wait(timeout=every if refresh else None)
            except subprocess.TimeoutExpired:
                new = refresh()
                if new != cmd:
                    _stop_child(proc)
                    cmd = new
                    proc = subprocess.Popen(cmd)
    except (_Stop, KeyboardInterrupt):
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _stop_child(proc)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--group-by", "group_by", default=None, metavar="FIELD",
              help="group runs by a dotted spec path (e.g. model.type) instead of by equal specs but the seed")
@click.option("-o", "--out", "out", default=None, type=click.Path(file_okay=False),
              help="write OUT/compare.md, compare.csv, bpb_vs_tokens.png, blimp_fields.png")
@click.option("--json", "as_json", is_flag=True, help="print a JSON array of the runs, ranked, with their group")
@click.option("--fit-scaling", "scaling", default=None, metavar="FIELD",
              help="fit METRIC = a * FIELD^alpha over the runs (each seed a point) with a 95% CI for alpha: "
                   "tokens, parameters, steps, or a dotted spec path (curriculum.train_tokens); "
                   "with -o also OUT/scaling_FIELD.png and .json")
@click.option("--scaling-metric", "scaling_metric", default="eval/loss", show_default=True, metavar="KEY",
              help="the metric fitted: its last value in metrics.jsonl, else result.json's (eval/bpb, eval/ppl, ...); "
                   "exp(KEY): the exponential of KEY's (a perplexity from a loss)")
@click.option("--scaling-floor", is_flag=True, help="fit METRIC = a * FIELD^alpha + floor (floor >= 0; bootstrap CI)")
@click.option("--scaling-seed", type=int, default=0, show_default=True, help="seed of the --scaling-floor bootstrap")
@click.option("--weights", type=click.Choice(["last", "best"]), default="last", show_default=True,
              help="whose evaluation metrics: the last evaluation's, or the best one's (train.keep_best's best/)")
def compare(run_dirs, group_by, out, as_json, scaling, scaling_metric, scaling_floor, scaling_seed, weights):
    """Compare runs: one table per objective, runs that differ only in seed grouped into mean ± std,
    ranked by validation bits per byte (tokenizer-independent).

    RUN_DIRS: run directories, NAME@latest links, or folders searched for run directories (a sweep's
    output). Columns: method, n (seeds), status, params, tokens seen, wall time, tokens/s, eval loss,
    perplexity, bits per byte, BLiMP (overall, from the newest RUN/analysis/blimp/). A run reached
    twice is counted once. --fit-scaling adds a power-law fit (least squares in log space) after
    the table."""
    from .compare import CompareError, build_tables, fit_scaling, json_rows, markdown, read_rows, write_outputs

    if as_json and scaling:
        _fail("kinlm compare: --json and --fit-scaling: use -o OUT, which writes the fit to OUT/scaling_FIELD.json")
    if (scaling_metric != "eval/loss" or scaling_floor) and not scaling:
        _fail("kinlm compare: --scaling-metric and --scaling-floor need --fit-scaling FIELD")
    try:
        rows = read_rows(run_dirs, weights)
        tables = build_tables(rows, group_by)
        fit_lines, fit_files = (fit_scaling(rows, scaling, scaling_metric, scaling_floor, scaling_seed, out)
                                if scaling else ([], []))
    except CompareError as e:
        _fail(e.problems)
    if as_json:
        click.echo(json.dumps(json_rows(tables), indent=2))
        return
    if out:
        for p in [*write_outputs(tables, out), *fit_files]:
            click.echo(f"wrote {p}")
    else:
        click.echo(markdown(tables), nl=False)
    if fit_lines:
        click.echo(("" if out else "\n") + "\n".join(fit_lines))


@main.command()
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...")
@click.option("--seeds", type=int, default=1, show_default=True, help="seeds per point: the spec's seed, seed+1, ...")
@click.option("--set-grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="one run per value (repeatable: the cartesian product); values parsed like --set")
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="where the runs go (default runs/sweep-NAME)")
@click.option("--parallel", default=None, metavar="auto|N",
              help="points at once, each on its own CUDA device (auto: one per device, 1 on CPU; default 1, "
                   "with --launcher submitit every point)")
@click.option("--nproc-per-point", type=int, default=1, show_default=True,
              help="run each point under torch.distributed.run with this many processes")
@click.option("--launcher", type=click.Choice(["local", "submitit"]), default="local", show_default=True,
              help="local: subprocesses here; submitit: one job per point (SLURM where sbatch exists, else "
                   "submitit's local executor; pip install 'kinlm-core[cluster]')")
@click.option("--slurm-partition", help="submitit: the SLURM partition of each job")
@click.option("--gpus-per-point", type=int, default=0, show_default=True, help="submitit: GPUs per job")
@click.option("--timeout-min", type=int, default=240, show_default=True,
              help="submitit: time limit per job in minutes (a point that hits it is resumed by the next sweep)")
def sweep(specs, seeds, grid, overrides, out, parallel, nproc_per_point, launcher, slurm_partition, gpus_per_point,
          timeout_min):
    """Run every point of specs x grid x seeds, one run directory each (OUT/NAME/GRID/seed_S).

    Finished points are skipped and interrupted ones resumed, so running the same command again
    continues a sweep. Exit status: 0 all finished, 1 some point failed, 2 bad input (nothing
    run), 75 interrupted by SIGINT/SIGTERM (run the same command again)."""
    from . import sweep as sw

    try:
        out_dir, points = sw.plan(specs, seeds, grid, overrides, out, _manager())
        if launcher == "local":
            slots = sw.device_groups(parallel or "1", nproc_per_point)
            kw = {}
        else:  # every point at once unless --parallel N; the scheduler places them
            n = len(points) if parallel in (None, "auto") else int(parallel) if str(parallel).isdigit() else 0
            if n < 1:
                raise sw.SweepError(f"kinlm sweep: --parallel {parallel}: expected auto or a number >= 1")
            slots = [None] * n
            cluster = sw.submitit_cluster()
            kw = {"launch": sw.submitit_launcher(out_dir, slurm_partition, gpus_per_point, timeout_min, cluster,
                                                 echo=lambda m: click.echo(m)),
                  "share_cores": cluster == "local", "poll_s": 2.0 if cluster == "slurm" else 0.5}
    except sw.SweepError as e:
        _fail(str(e))
    sys.exit(sw.run(out_dir, points, slots, nproc_per_point, echo=lambda m: click.echo(m), **kw))



@main.command()
@click.option("--tier", default="cpu", show_default=True, help="cpu (2 cores, hours) or gpu (the anchors' sizes)")
@click.option("--tasks", default=None, metavar="A,B", help="comma-separated tasks (default: every registered task; "
              "with --quick: associative_recall)")
@click.option("--archs", default=None, metavar="A,B", help="comma-separated architectures (default: every "
              "registered one the tier does not skip)")
@click.option("--plan", "plan_only", is_flag=True, help="print tasks, architectures, seeds, lr grid, state sizes "
              "and the time estimate; run nothing")
@click.option("--quick", is_flag=True, help="a few-minute subset that checks the machinery (not evidence)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="where the specs and runs go (default runs/diagnostics, with --quick runs/diagnostics-quick; "
                   "a rerun skips finished points)")
@click.option("--doc", type=click.Path(dir_okay=False), default=None,
              help="the page whose results part is rewritten (default OUT/diagnostics.md; the repository's page: "
                   "docs/diagnostics.md)")
@click.option("--parallel", default="2", show_default=True, metavar="N", help="points at once (2: the CPU tier on 2 cores)")
@click.option("--no-train", is_flag=True, help="only read the runs there are and write the page")
def diagnose(tier, tasks, archs, plan_only, quick, out, doc, parallel, no_train):
    """The synthetic diagnostic suite (MQAR and MAD's tasks) over every registered architecture: each
    architecture's learning rate tuned on validation, 3+ verdict seeds scored on the test split with 95%
    intervals, MQAR's accuracy against state size. Plugins add tasks and architectures through the
    kinlm_diagnostics hook. Exit status: 0 done, 2 bad input, 75 interrupted (run it again)."""
    from pathlib import Path as _P

    from . import diagnose as _d  # noqa: F401
    from .diagnose import plan as dp
    from .diagnose import registry as dr
    from .diagnose import run as drun

    reg = dr.collect(_manager())
    for p in reg.problems:
        click.echo(f"kinlm diagnose: {p}", err=True)
    split = lambda s: [x for x in s.split(",") if x] if s else None  # noqa: E731
    try:
        sel = dp.select(reg, tier, split(tasks), split(archs), quick)
    except dp.PlanError as e:
        _fail(str(e))
    n_par = int(parallel) if str(parallel).isdigit() else 1
    if plan_only:
        click.echo(dp.plan_text(sel, max(1, n_par)))
        return
    out_dir = _P(out or ("runs/diagnostics-quick" if quick else "runs/diagnostics"))
    doc_path = _P(doc) if doc else out_dir / "diagnostics.md"
    command = " ".join(["kinlm diagnose", *([f"--tier {tier}"] if tier != "cpu" else []),
                        *([f"--tasks {tasks}"] if tasks else []), *([f"--archs {archs}"] if archs else []),
                        *(["--quick"] if quick else [])])
    try:
        drun.run_suite(sel, out_dir, doc_path, parallel, not no_train, echo=lambda m: click.echo(m), command=command)
    except drun.Interrupted:
        click.echo("kinlm diagnose: interrupted; the running points saved a checkpoint. Run the same command "
                   "again to continue.")
        sys.exit(75)
    except dp.PlanError as e:
        _fail(str(e))


# --- claims ---------------------------------------------------------------------------------------


def _select_claims(names, all_installed: bool):
    from . import claims as cl

    if not names and not all_installed:
        _fail("kinlm claims: name one or more claims (ids from `kinlm claims`, or claim files), or --all")
    try:
        return cl.select(names, _manager(), all_installed)
    except cl.ClaimError as e:
        _fail(e.problems)


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
@click.pass_context
def claims(ctx, as_json):
    """The installed claims: what each method's source claims and the experiment that tests it.

    `kinlm claims` lists them; `kinlm claims plan` prints their pre-registered designs; `kinlm claims
    run` trains what their arms miss; `kinlm claims report` prints a verdict card per claim (supported, contradicted, inconclusive, not testable)."""
    if ctx.invoked_subcommand is not None:
        return
    from . import claims as cl

    items, problems = cl.installed(_manager())
    for p in problems:
        click.echo(f"kinlm claims: {p}", err=True)
    rows = cl.listing(items)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no claims installed (a plugin registers claim files with kinlm_register_claims)")
        return
    for r in rows:
        extra = (f", lr grid {r['lr_grid']}" if r["lr_grid"] else "") + \
            (f", controls {', '.join(r['controls'])}" if r["controls"] else "") + \
            (f", checks {', '.join(r['manipulation_checks'])}" if r.get("manipulation_checks") else "")
        click.echo(f"{r['id']}  [{r['tier']}] {r['title']}\n    {r['plugin']}: {r['metric']} ({r['direction']}), "
                   f"{r['test']}, arms {', '.join(r['arms'])}, {r['seeds']} seeds{extra}")


@claims.command("run")
@click.argument("names", nargs=-1, metavar="CLAIM...")
@click.option("--all", "all_installed", is_flag=True, help="every installed claim")
@click.option("--seeds", type=click.IntRange(min=2), default=None, help="seeds per arm (default: each claim's)")
@click.option("--out", type=click.Path(file_okay=False), default="runs/claims", show_default=True,
              help="where the arms' runs go (OUT/arms/ARM/...)")
@click.option("--tier", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="gpu also runs the claims too large for the CPU budget")
@click.option("--parallel", default="1", show_default=True, metavar="auto|N", help="runs at once (as kinlm sweep)")
def claims_run(names, all_installed, seeds, out, tier, parallel):
    """Train what the claims' arms miss, through kinlm sweep (run again to continue).

    CLAIM is an installed claim's id or a claim file. With an lr grid, the registration's tuning
    seeds run at every value (OUT/arms/ARM/tuning/), the lowest validation loss picks the rate (a
    choice at the grid's edge adds a value beyond it, at most twice), and the verdict seeds run at
    it. Exit status: 0
    every arm finished, 1 some run failed, 2 bad input, 75 interrupted."""
    from . import claims as cl

    selected = _select_claims(names, all_installed)
    problems = [p for i in selected for p in cl.check(i, _manager())]
    if problems:
        _fail(problems)
    sys.exit(cl.run(selected, out, seeds, tier, parallel, echo=lambda m: click.echo(m), manager=_manager()))


@claims.command("plan")
@click.argument("names", nargs=-1, metavar="CLAIM...")
@click.option("--all", "all_installed", is_flag=True, help="every installed claim")
@click.option("--out", type=click.Path(file_okay=False), default="runs/claims", show_default=True,
              help="where earlier runs (a pilot on the verdict seeds) are: their spread estimates the power")
@click.option("--json", "as_json", is_flag=True, help="a JSON array, one object per claim")
def claims_plan(names, all_installed, out, as_json):
    """Print the estimated minutes of the selected CPU-tier claims' runs, then each claim's
    pre-registered design before anything trains: the quoted source, metric,
    direction, test, margin and its reason, family and the level after Holm in it, tuning and verdict
    seeds, the registration hash, and the power from a pilot's spread (or what a pilot must show)."""
    from . import claims as cl

    selected = _select_claims(names, all_installed)
    have, _ = cl.installed(_manager())
    page = {i.claim.id: i.claim.family() for i in [*have, *selected]}
    plans = [cl.plan(i, out, sum(f == i.claim.family() for f in page.values())) for i in selected]
    if as_json:
        click.echo(json.dumps(plans, indent=2))
    else:  # the estimate first (#30 item 7), then each claim's design
        from .claims.plan import budget_text

        click.echo("\n\n".join([budget_text(plans), *(cl.plan_text(d) for d in plans)]))


def _figures_url(figures, output) -> str:
    """The figures folder as a link prefix relative to the markdown file's folder."""
    if not figures:
        return ""
    base = Path(output).resolve().parent if output else Path.cwd()
    return Path(os.path.relpath(Path(figures).resolve(), base)).as_posix() + "/"


@claims.command("report")
@click.argument("names", nargs=-1, metavar="CLAIM...")
@click.option("--all", "all_installed", is_flag=True, help="every installed claim")
@click.option("--out", type=click.Path(file_okay=False), default="runs/claims", show_default=True,
              help="where `kinlm claims run` put the runs")
@click.option("--seeds", type=click.IntRange(min=2), default=None, help="use at most this many seeds per arm")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per claim (id, verdict, difference, ci95, p, ...)")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="write to FILE instead of stdout")
@click.option("--figures", type=click.Path(file_okay=False), default=None,
              help="also draw each claim's curves (its key against tokens seen, per arm and learning rate) into DIR")
def claims_report(names, all_installed, out, seeds, as_json, output, figures):
    """A verdict card per claim: arms, tokens, parameters, learning rate, the test the design allows,
    difference with its 95% CI, p (Holm-adjusted within each claim's family, Benjamini-Hochberg's q
    across the claims reported together), the controls beside the arms, the registration and the
    verdict. A claim whose metric is test/X, or that has an ngram control, has its runs evaluated on
    the test split here (`kinlm eval`, once; kept beside each run as eval_test.json)."""
    from . import claims as cl

    cards = cl.report(_select_claims(names, all_installed), out, seeds, figures)
    text = json.dumps([cl.json_card(c) for c in cards], indent=2) + "\n" if as_json else \
        "\n".join(cl.markdown_card(c, _figures_url(figures, output)) for c in cards)
    if output:
        Path(output).write_text(text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)

if __name__ == "__main__":  # pragma: no cover
    main()
