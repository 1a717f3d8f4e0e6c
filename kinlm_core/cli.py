"""The `kinlm` command line. Torch is imported only by commands that train, evaluate or
generate, so `--help`, `validate`, `schema`, `plugins` and `list` start fast."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from . import __version__
from .spec import SpecError


class UserError(click.ClickException):
    """One line on stderr, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None):
        click.echo(self.message, err=True)


def _fail(lines) -> None:
    raise UserError("\n".join(lines) if isinstance(lines, list) else str(lines))


def _manager():
    from .plugins import RegistryError, get_manager

    m = get_manager()
    try:
        m.registry()
    except RegistryError as e:
        _fail(f"kinlm: {e}")
    return m


def _parse_kv(items, what) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            _fail(f"{what} {item!r}: expected key=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _load(path, overrides):
    from .spec import load_spec

    try:
        return load_spec(path, overrides, _manager())
    except SpecError as e:
        _fail(e.problems)


def _engine_call(fn, *args, **kwargs):
    """Run engine code, turning expected failures into one-line errors."""
    from .engine.checkpoint import CheckpointError
    from .engine.train import RunError

    try:
        return fn(*args, **kwargs)
    except (RunError, CheckpointError, ValueError, FileNotFoundError) as e:
        _fail(f"kinlm: {e}")
    except SpecError as e:
        _fail(e.problems)


set_option = click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
                          help="override a spec field, e.g. --set train.max_steps=10 (repeatable; VALUE is JSON or a string)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kinlm")
def main():
    """kinlm: a lab for physics-inspired small language models.

    Every method is a plugin, every experiment a JSON spec. Start with
    `kinlm run specs/quickstart.json`, then `kinlm tensorboard runs/`.
    """


# --- plugins and components ----------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
def plugins(as_json):
    """List installed plugin distributions, their versions and components."""
    from .plugins import get_manager

    infos = [p.as_dict() for p in get_manager().plugins()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for p in infos:
        click.echo(f"{p['name']} {p['version']}" + (f"  ERROR: {p['error']}" if p["error"] else ""))
        for kind, names in p["components"].items():
            click.echo(f"  {kind}: {', '.join(names)}")


_KIND_ALIASES = {"models": "model", "regularizers": "regularizer", "curricula": "curriculum", "data": "data_source",
                 "data_sources": "data_source", "tokenizers": "tokenizer", "analyzers": "analyzer",
                 "generators": "generator"}


@main.command("list")
@click.argument("kind", required=False)
def list_(kind):
    """Show components with their config fields, types, defaults and docs.

    KIND is one of: model, regularizer, curriculum, data_source, tokenizer, analyzer, generator
    (plurals and dashes accepted)."""
    from .api import KINDS

    m = _manager()
    kinds = KINDS
    if kind:
        k = kind.lower().replace("-", "_")
        k = _KIND_ALIASES.get(k, k)
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
    """Check specs without running anything (all problems of every spec, exit 2 if any)."""
    from .spec import load_spec

    m = _manager()
    problems = []
    for path in specs:
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


def _pip(args) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args])
    if proc.returncode:
        raise SystemExit(proc.returncode)


@main.command()
@click.argument("packages", nargs=-1, required=True)
@click.option("-U", "--upgrade", is_flag=True, help="upgrade if already installed")
@click.option("-e", "--editable", is_flag=True, help="install a local folder in editable mode")
def install(packages, upgrade, editable):
    """Install plugins into the interpreter that runs kinlm (pip underneath)."""
    args = ["install"] + (["--upgrade"] if upgrade else [])
    for p in packages:
        args += ["-e", p] if editable else [p]
    _pip(args)


@main.command()
@click.argument("packages", nargs=-1, required=True)
def uninstall(packages):
    """Uninstall plugins from the interpreter that runs kinlm."""
    _pip(["uninstall", "-y", *packages])


# --- running ----------------------------------------------------------------------------------


@main.command()
@click.argument("spec_path", metavar="SPEC")
@set_option
@click.option("--run-dir", type=click.Path(file_okay=False), help="where the run writes (default runs/NAME-TIME)")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), help="continue the run in this directory")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a terminal)")
def run(spec_path, overrides, run_dir, resume_dir, progress):
    """Train (and evaluate, sample, analyze) as a spec says."""
    spec = _load(spec_path, overrides)
    if resume_dir:
        if run_dir and Path(run_dir) != Path(resume_dir):
            _fail("kinlm run: give either --run-dir or --resume, not both")
        run_dir = resume_dir
    elif run_dir is None:
        run_dir = Path("runs") / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    from .engine.train import distributed_env
    from .engine.train import run as run_engine

    result = _engine_call(run_engine, spec, Path(run_dir), resume=bool(resume_dir), progress=progress,
                          log=lambda msg: click.echo(msg, err=True))
    if distributed_env()[0] == 0:  # rank 0 alone reports
        click.echo(json.dumps({"run_dir": str(run_dir), **result}))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--prompt", required=True, help="text to continue")
@click.option("--generator", default="sample", show_default=True, help="generator component (see kinlm list generator)")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="generator option, e.g. --opt temperature=0.7")
@click.option("--device", default="auto", show_default=True)
def generate(run_dir, prompt, generator, opts, device):
    """Continue a prompt with a trained run's model (`--opt num_samples=N`: N samples in one batch)."""
    from pydantic import ValidationError

    from .plugins import RegistryError

    m = _manager()
    try:
        cls = m.get("generator", generator)
    except RegistryError as e:
        _fail(f"kinlm generate: --generator: {e}")
    try:
        cfg = cls(prompt=prompt, **_parse_kv(opts, "--opt"))
    except ValidationError as e:
        _fail([f"kinlm generate: --opt {'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors()])
    from .engine.load import load_run

    loaded = _engine_call(load_run, Path(run_dir), device)
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
@click.option("--device", default="auto", show_default=True)
def eval_(run_dir, split, batches, device):
    """Evaluate a run's model on a split: loss, perplexity, bits per byte."""
    from .engine.load import load_run
    from .engine.train import evaluate

    loaded = _engine_call(load_run, Path(run_dir), device)
    dev = next(loaded.model.parameters()).device
    r = evaluate(loaded.model, loaded.data.blocks(split), loaded.spec.train.batch_size, batches, dev,
                 loaded.data.bytes_per_token[split])
    click.echo(json.dumps({"split": split, "step": loaded.step, **r}))


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
def analyze(run_dirs, hf_models, exclude_special_tokens, analyzer, opts, texts, out, device):
    """Run an analyzer on runs' models and/or transformers model folders.

    One model: the analyzer's analyze(). Several: its analyze_many(), which compares them
    (difference plots) or, by default, analyzes each into OUT/<name>/."""
    from pydantic import ValidationError

    from .plugins import RegistryError

    if not run_dirs and not hf_models:
        _fail("kinlm analyze: give RUN_DIR(s) and/or --hf-model FOLDER(s)")
    m = _manager()
    try:
        cfg = m.get("analyzer", analyzer)(**_parse_kv(opts, "--opt"))
    except RegistryError as e:
        _fail(f"kinlm analyze: --analyzer: {e}")
    except ValidationError as e:
        _fail([f"kinlm analyze: --opt {'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors()])
    from .engine import load

    models, lines = {}, None

    def add(name, pair):
        key, i = name, 2
        while key in models:
            key, i = f"{name}-{i}", i + 1
        models[key] = pair

    for d in run_dirs:
        loaded = _engine_call(load.load_run, Path(d), device)
        add(Path(d).name, (loaded.model, loaded.tokenizer))
        if lines is None:
            lines = [loaded.tokenizer.decode(r[:-1].tolist()) for r in loaded.data.blocks("validation")[:8]]
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
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    click.echo(json.dumps(metrics))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--step", type=int, default=None, help="the checkpoint of this step (default: the last one)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="output folder (default: RUN_DIR/final, or RUN_DIR/export-step_N with --step)")
def export(run_dir, step, out):
    """Write a run's model where the ecosystem loads it: a transformers folder (config.json,
    safetensors, tokenizer.json) for models that map onto a transformers architecture (gpt, the
    transformers model), else safetensors + spec.json; prints what was written."""
    from .engine.export import export_final
    from .engine.load import load_run

    loaded = _engine_call(load_run, Path(run_dir), "cpu", step=step)
    if out is None:
        out = Path(run_dir) / ("final" if step is None else f"export-step_{step:07d}")
    click.echo(_engine_call(export_final, loaded.model, loaded.spec, loaded.tokenizer, Path(out)))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--port", default=6006, show_default=True)
def tensorboard(run_dirs, port):
    """Start TensorBoard on 127.0.0.1 over these runs."""
    logdir_spec = ",".join(f"{Path(d).name}:{d}" for d in run_dirs)
    cmd = [sys.executable, "-m", "tensorboard.main", "--host", "127.0.0.1", "--port", str(port),
           "--logdir_spec", logdir_spec]
    click.echo(f"TensorBoard at http://127.0.0.1:{port}  (Ctrl-C to stop)", err=True)
    raise SystemExit(subprocess.call(cmd))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
def compare(run_dirs):
    """Rank runs by validation bits per byte (tokenizer-independent)."""
    rows = []
    for d in run_dirs:
        last = {}
        mf = Path(d) / "metrics.jsonl"
        for line in (mf.read_text().splitlines() if mf.exists() else []):
            rec = json.loads(line)
            if "eval/bpb" in rec:
                last = rec
        spec = json.loads((Path(d) / "spec.json").read_text()) if (Path(d) / "spec.json").exists() else {}
        rows.append((last.get("eval/bpb", float("inf")), d, spec.get("model", {}).get("type", "?"), last))
    click.echo(f"{'run':40s} {'model':12s} {'step':>6s} {'loss':>8s} {'ppl':>9s} {'bpb':>7s}")
    for bpb, d, model, last in sorted(rows, key=lambda r: r[0]):
        click.echo(f"{str(d)[-40:]:40s} {model:12s} {last.get('step', 0):6d} {last.get('eval/loss', float('nan')):8.4f} "
                   f"{last.get('eval/ppl', float('nan')):9.2f} {bpb:7.3f}")


if __name__ == "__main__":  # pragma: no cover
    main()
