"""The source's comparison: the six named architectures, randomly initialised, side by side
(optionally with trained runs and pretrained transformers folders), in one command.

    python -m kinlm_token_geometry.compare_presets --out DIR                 # 12 layers, 12 heads, d 768
    python -m kinlm_token_geometry.compare_presets --out DIR --run runs/token-geometry-tiny-<time>
    python -m kinlm_token_geometry.compare_presets --out DIR --n-layer 4 --d-model 64 --n-head 4 --max-prompts 8

Every model goes through the token_geometry analyzer's ``analyze_many``: DIR/<model>/ (per-layer
metrics, heatmaps), DIR/compare_<metric>.png (one line per model), DIR/comparison.csv (with the
source's difference columns: LLaMA PreLN - PostLN, Standard PreLN - PostLN, LLaMA - Standard PreLN)
and DIR/diff_heatmap_<a>_minus_<b>.png. With a --run, the random models use that run's tokenizer
(so the heatmap prompt tokenizes the same for all of them); otherwise the tokenizer named by
--tokenizer (default byte, offline; the source used GPT-2's: --tokenizer tiktoken).
Prompts: --texts FILE (one per line), else the source's 87 WikiText-2 validation excerpts, each
whole up to the context (as the source; --max-tokens crops them). States: --layers source (the
default, the source's block outputs then the final norm; llama_like models only) or hidden_states
(the models' own hidden states; needed for --hf-model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kinlm_core import component, load_pretrained, load_run

from .config import PRESETS, LlamaLikeConfig, TokenGeometryConfig


def _fail(msg: str) -> None:
    print(f"compare_presets: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m kinlm_token_geometry.compare_presets", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--run", action="append", default=[], help="a trained kinlm run directory to add (repeatable)")
    p.add_argument("--hf-model", action="append", default=[], help="a transformers model folder to add (repeatable)")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names (default: all six)")
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--block-size", type=int, default=1024, help="context of the random models (prompts are cropped to it; "
                   "the source's: 1024)")
    p.add_argument("--tokenizer", default="byte", help="tokenizer component for the random models without --run")
    p.add_argument("--texts", help="prompts, one per line (default: the packaged WikiText-2 excerpts)")
    p.add_argument("--max-prompts", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None, help="crop each prompt to this many tokens (default: the context)")
    p.add_argument("--layers", choices=["source", "hidden_states"], default="source",
                   help="which states: the source's block outputs + final norm, or the models' hidden states")
    p.add_argument("--seed", type=int, default=0, help="seed of every random initialisation")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    import torch
    from pydantic import ValidationError

    from .analysis import _safe

    names = [n.strip() for n in a.presets.split(",") if n.strip()]
    for n in names:
        if n not in PRESETS:
            _fail(f"--presets: unknown preset '{n}'; one of: {', '.join(PRESETS)}")
    if a.hf_model and a.layers == "source":
        _fail("--hf-model needs --layers hidden_states (the source's hooks exist only in llama_like models)")
    texts = None
    if a.texts:
        if not Path(a.texts).is_file():
            _fail(f"--texts: no such file: {a.texts}")
        texts = [ln for ln in Path(a.texts).read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not texts:
            _fail(f"--texts: {a.texts} holds no non-empty line")
    try:
        cfg = TokenGeometryConfig(max_prompts=a.max_prompts, max_tokens=a.max_tokens, layers=a.layers,
                                  packaged_prompts=texts is None, figures=a.figures)
    except ValidationError as e:
        _fail("; ".join(f"--{'-'.join(map(str, er['loc'])).replace('_', '-')}: {er['msg']}" for er in e.errors()))

    extra = {}
    tokenizer = None
    try:
        for d in a.run:
            loaded = load_run(Path(d), a.device)
            extra[f"trained:{Path(d).name}"] = (loaded.model, loaded.tokenizer)
            tokenizer = tokenizer or loaded.tokenizer
        for folder in a.hf_model:
            extra[f"pretrained:{Path(folder).name}"] = load_pretrained(Path(folder), a.device)
        if tokenizer is None:
            import tempfile

            tokenizer = component("tokenizer", a.tokenizer)().build(lambda: iter(()), Path(tempfile.mkdtemp()))
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - a missing run, a tokenizer that needs the network, ...
        _fail(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")

    models = {}
    for n in names:
        try:
            mcfg = LlamaLikeConfig(preset=n, n_layer=a.n_layer, n_head=a.n_head, d_model=a.d_model,
                                   block_size=a.block_size, dropout=0.0)
        except ValidationError as e:
            _fail("; ".join(er["msg"] for er in e.errors()))
        torch.manual_seed(a.seed)
        models[n] = (mcfg.build(tokenizer.vocab_size).to(a.device).eval(), tokenizer)
    models.update(extra)
    out = Path(a.out)
    try:
        summary = cfg.analyze_many(models, texts or [], out)
    except ValueError as e:  # e.g. --layers source on a trained run whose model is not llama_like
        _fail(str(e))
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    width = max(len(n) for n in models)
    print(f"{'model':<{width}}  within-text pairwise cosine: first / middle / last state")
    for n in models:
        c = json.loads((out / _safe(n) / "metrics.json").read_text())["pairwise_cosine_per_layer"]
        print(f"{n:<{width}}  {c[0]:.3f} / {c[len(c) // 2]:.3f} / {c[-1]:.3f}")
    print(f"wrote {out}/ (comparison.csv, compare_*.png, diff_heatmap_*.png, <model>/)")
    return summary


if __name__ == "__main__":
    main()
