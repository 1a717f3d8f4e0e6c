"""What a run writes besides checkpoints: samples (samples.md + TensorBoard) and analyzer results."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import atomic_write_text


def generator_label(g) -> str:
    """``steer (target=love, strength=0.5, ..., temperature=0.7, top_k=50, seed=1337, stop_at_eos=False)``:
    the generator and every option that shaped its text, its own first, then the shared ones
    (all but the prompt, the ``ignored_options`` it declares and those left at None, i.e. off)."""
    from ..api import GeneratorConfig

    skip = {"type", "prompt", *type(g).ignored_options}
    shared = [f for f in GeneratorConfig.model_fields if f not in skip]
    own = [f for f in type(g).model_fields if f not in skip and f not in shared]
    opts = ", ".join(f"{f}={getattr(g, f)}" for f in own + shared if getattr(g, f) is not None)  # None: off
    return f"{g.type} ({opts})" if opts else g.type


def write_samples(spec, model, tokenizer, run_dir: Path, step: int, logger) -> None:
    """Append every generator's continuation of its prompt to samples.md (and TensorBoard), under a
    header with all the options used. A continuation past the end of a text shows each boundary as
    ``<|endoftext|>`` (``stop_at_eos=false``)."""
    if not spec.generate:
        return
    was = model.training
    model.eval()
    lines = [f"## step {step}\n"]
    for i, g in enumerate(spec.generate):
        if g.seed is None:
            g = g.model_copy(update={"seed": spec.seed})
        text = g.generate(model, tokenizer)
        label = generator_label(g)
        lines.append(f"**{label}** `{g.prompt}` ->\n\n```\n{g.prompt}{text}\n```\n")
        logger.text(f"samples/{i}_{g.type}", f"**{label}** `{g.prompt}`{text}", step)
    model.train(was)
    with open(run_dir / "samples.md", "a") as fh:
        fh.write("\n".join(lines) + "\n")


def run_analyzers(spec, model, tokenizer, texts: list[str], run_dir: Path, step: int, when: str, logger) -> None:
    for a in spec.analyzers:
        if when not in a.at:
            continue
        out = run_dir / "analysis" / a.type / f"step_{step:07d}"
        out.mkdir(parents=True, exist_ok=True)
        was = model.training
        model.eval()
        metrics = a.analyze(model, tokenizer, texts, out)
        model.train(was)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        logger.log({f"analysis/{a.type}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step)
        for png in sorted(out.glob("*.png")):
            logger.image(f"analysis/{a.type}/{png.stem}", png, step)


def write_result(run_dir: Path, spec, final: dict, last_eval: dict, logger) -> None:
    """How the run ended: ``result.json``, and the spec's main settings with the last eval as
    TensorBoard hparams."""
    tc = spec.train
    hp = {"name": spec.name, "model": spec.model.type, "objective": spec.objective.type, "seed": spec.seed,
          "lr": tc.lr, "batch_size": tc.batch_size, "block_size": tc.block_size, "max_steps": tc.max_steps}
    nums = {f"hparam/{k.split('/')[-1]}": v for k, v in last_eval.items() if isinstance(v, float)}
    if nums:
        logger.hparams(hp, nums)
    atomic_write_text(run_dir / "result.json", json.dumps(final, indent=2) + "\n")
