"""What a run writes besides checkpoints: samples (samples.md + TensorBoard) and analyzer results."""

from __future__ import annotations

import json
from pathlib import Path


def generator_label(g) -> str:
    """``steer (target=love, strength=0.5, temperature=0.7)``: the generator, every option of its own,
    and the shared sampling options that differ from their defaults."""
    from ..api import GeneratorConfig

    own = [f for f in type(g).model_fields if f not in GeneratorConfig.model_fields and f != "type"]
    changed = g.model_dump(exclude_defaults=True, exclude={"type", "prompt", "seed"})
    opts = {**{f: getattr(g, f) for f in own}, **{k: v for k, v in changed.items() if k not in own}}
    return g.type + (" (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")


def write_samples(spec, model, tokenizer, run_dir: Path, step: int, logger) -> None:
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
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        logger.log({f"analysis/{a.type}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step)
        for png in sorted(out.glob("*.png")):
            logger.image(f"analysis/{a.type}/{png.stem}", png, step)
