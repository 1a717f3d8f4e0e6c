"""Exports that the ecosystem loads: a finished run's ``final/`` folder and ``kinlm export``.

Three cases, in this order (:func:`export_final`):

- a model with ``hf_export(tokenizer)`` (kinlm_core/hfexport.py): a transformers custom-code folder
  (config.json with ``auto_map``, the plugin's configuration/modeling files, model.safetensors) that
  ``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM`` load with ``trust_remote_code=True`` and
  without kinlm; kinlm's own weights beside it when the export's are not the model's state_dict;
- a model that is, or maps onto, a transformers architecture, as a plain transformers folder:
  the `transformers` model's inner model as it is; the `gpt` baseline as ``GPT2LMHeadModel`` with
  converted weights (linears transposed into GPT-2's Conv1D layout; the padded vocabulary cut back
  to the tokenizer's; zero biases when the spec has ``bias: false``, which GPT-2 computes identically);
- any other model: its own safetensors weights, and a line saying so.

Transformers folders get the run's tokenizer as a transformers tokenizer (tokenizer.json),
generation_config.json and a model card (README.md, kinlm_core.hfexport.model_card). spec.json is
always written, so kinlm can rebuild the model either way (engine/load.py ``load_final``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def gpt_to_transformers(model, tokenizer):
    """A ``GPT2LMHeadModel`` computing what the `gpt` module does on the tokenizer's vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    V, C = tokenizer.vocab_size, model.wte.weight.size(1)
    attn0 = model.blocks[0].attn
    config = GPT2Config(
        vocab_size=V, n_positions=model.block_size, n_embd=C, n_layer=len(model.blocks), n_head=attn0.n_head,
        activation_function="gelu_new", layer_norm_epsilon=model.ln_f.eps, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=tokenizer.bos_id if tokenizer.bos_id is not None
        else tokenizer.eos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    hf = GPT2LMHeadModel(config)

    def bias(lin_or_ln, n):
        b = getattr(lin_or_ln, "bias", None)
        return b.detach() if b is not None else torch.zeros(n)

    sd = {"transformer.wte.weight": model.wte.weight.detach()[:V], "transformer.wpe.weight": model.wpe.weight.detach(),
          "transformer.ln_f.weight": model.ln_f.weight.detach(), "transformer.ln_f.bias": bias(model.ln_f, C)}
    for i, b in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        sd.update({
            p + "ln_1.weight": b.ln1.weight.detach(), p + "ln_1.bias": bias(b.ln1, C),
            p + "attn.c_attn.weight": b.attn.qkv.weight.detach().t(), p + "attn.c_attn.bias": bias(b.attn.qkv, 3 * C),
            p + "attn.c_proj.weight": b.attn.proj.weight.detach().t(), p + "attn.c_proj.bias": bias(b.attn.proj, C),
            p + "ln_2.weight": b.ln2.weight.detach(), p + "ln_2.bias": bias(b.ln2, C),
            p + "mlp.c_fc.weight": b.mlp.fc.weight.detach().t(), p + "mlp.c_fc.bias": bias(b.mlp.fc, 4 * C),
            p + "mlp.c_proj.weight": b.mlp.proj.weight.detach().t(), p + "mlp.c_proj.bias": bias(b.mlp.proj, C),
        })
    sd = {k: v.to("cpu", torch.float32).contiguous() for k, v in sd.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    left = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias", "lm_head.weight"))]
    if left or unexpected:
        raise RuntimeError(f"gpt -> GPT2LMHeadModel: missing {left}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def gpt_state_from_transformers(model, sd: dict) -> dict:
    """The inverse of :func:`gpt_to_transformers`: a GPT2LMHeadModel state dict -> the `gpt` module's
    (vocabulary rows beyond the exported ones keep the module's values; absent biases are dropped)."""
    own = model.state_dict()
    wte = own["wte.weight"].clone()
    wte[: sd["transformer.wte.weight"].size(0)] = sd["transformer.wte.weight"]
    out = {"wte.weight": wte, "head.weight": wte, "wpe.weight": sd["transformer.wpe.weight"]}
    names = {"ln_1": "ln1", "ln_2": "ln2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
             "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj", }
    for key, value in sd.items():
        if not key.startswith("transformer.h."):
            if key.startswith("transformer.ln_f."):
                out["ln_f." + key.rsplit(".", 1)[1]] = value
            continue
        _, _, i, rest = key.split(".", 3)
        mod, param = rest.rsplit(".", 1)
        if mod not in names:
            continue  # GPT-2's causal-mask buffers
        is_linear = not mod.startswith("ln_")
        out[f"blocks.{i}.{names[mod]}.{param}"] = value.t() if is_linear and param == "weight" else value
    return {k: v for k, v in out.items() if k in own}


def to_transformers(model, tokenizer):
    """The transformers model a kinlm model maps onto, or None when it has no counterpart."""
    from ..builtins.gpt import GPT

    if isinstance(model, GPT):
        return gpt_to_transformers(model, tokenizer)
    inner = getattr(model, "hf", None)
    from transformers import PreTrainedModel

    if isinstance(inner, PreTrainedModel):
        return inner
    if isinstance(model, PreTrainedModel):
        return model
    return None


def _datasets(spec) -> list[str]:
    """The data a spec trained on, as the model card's ``datasets`` (hub ids where the source has one)."""
    if spec is None:
        return []
    d = spec.data.model_dump()
    if d.get("type") == "hf" and isinstance(d.get("path"), str):
        return [d["path"]]
    if d.get("type") == "embedded" and d.get("corpus"):
        return [d["corpus"]]
    return [d.get("type")] if d.get("type") else []


def _newest_blimp(run_dir: Path | None) -> dict | None:
    """The newest ``RUN/analysis/blimp/step_N/metrics.json`` (`kinlm eval --blimp`, the blimp analyzer)."""
    if run_dir is None:
        return None
    files = sorted((Path(run_dir) / "analysis" / "blimp").glob("step_*/metrics.json"))
    for f in reversed(files):
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            continue
    return None


def _card(model, spec, run_dir, result, architecture: str, task: str = "causal", notes: str = "") -> str:
    from ..hfexport import CardFacts, model_card
    from ..spec import dump

    facts = CardFacts(architecture=architecture, task=task, notes=notes, datasets=_datasets(spec),
                      blimp=_newest_blimp(run_dir), result=dict(result or {}))
    if spec is not None:
        facts.model_type, facts.objective, facts.spec = spec.model.type, spec.objective.type, dump(spec)
        facts.method = type(spec.model).summary()
        try:
            from ..plugins import get_manager

            reg = get_manager().registry()["model"].get(spec.model.type)
            if reg is not None:
                from ..plugins import _dist_version

                facts.source = f"{reg.dist} {_dist_version(reg.dist)}"
        except Exception:  # noqa: BLE001 - the card never stops an export
            pass
    if not facts.result.get("params"):
        facts.result["params"] = sum(p.numel() for p in model.parameters())
    return model_card(facts)


def _special_ids(tokenizer) -> dict:
    """bos/eos/pad ids as the exported tokenizer has them (no bos: eos; no pad: eos, as
    ``data.tokenizers.to_transformers`` sets the transformers tokenizer's pad token)."""
    eos = tokenizer.eos_id
    return {"bos_token_id": tokenizer.bos_id if tokenizer.bos_id is not None else eos, "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_id if tokenizer.pad_id is not None else eos}


def _tokenizer_files(tokenizer, out_dir: Path) -> str:
    from ..data.tokenizers import to_transformers as tokenizer_to_transformers

    hf_tok = tokenizer_to_transformers(tokenizer)
    if hf_tok is None:
        return f"no transformers tokenizer for {type(tokenizer).__name__}"
    hf_tok.save_pretrained(str(out_dir))
    return "tokenizer.json"


def write_custom_code(model, exp, tokenizer, out_dir: Path) -> str:
    """Write a model's :class:`~kinlm_core.HFExport` as a transformers custom-code folder (see
    kinlm_core/hfexport.py); returns what was written. kinlm's own weights go beside it
    (``kinlm_model.safetensors``) unless the export's state_dict is the model's own."""
    import transformers
    from safetensors.torch import save_file, save_model

    from ..hfexport import KINLM_WEIGHTS

    problems = exp.problems()
    if problems:
        raise RuntimeError(f"{type(model).__name__}.hf_export: " + "; ".join(problems))
    for fname, text in exp.files.items():
        (out_dir / fname).write_text(text)
    special = _special_ids(tokenizer)
    cfg = exp.config_json(special, transformers.__version__)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {k: cfg.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
           if cfg.get(k) is not None}
    (out_dir / "generation_config.json").write_text(
        json.dumps({**gen, "transformers_version": transformers.__version__}, indent=2) + "\n")
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in exp.state_dict.items()}
    save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    own = model.state_dict()
    same = set(own) == set(sd) and all(own[k].shape == sd[k].shape and torch.equal(own[k].detach().cpu(), sd[k])
                                       for k in sd)
    kinlm_weights = out_dir / KINLM_WEIGHTS
    if same:
        kinlm_weights.unlink(missing_ok=True)
    else:
        save_model(model, str(kinlm_weights))
    return (f"{out_dir}: transformers custom-code folder ({exp.model_class}, trust_remote_code=True, "
            f"{_tokenizer_files(tokenizer, out_dir)}" + ("" if same else f", kinlm's own weights in {KINLM_WEIGHTS}")
            + ")")


def export_final(model, spec, tokenizer, out_dir: Path, run_dir: Path | None = None, result: dict | None = None) -> str:
    """Write ``out_dir`` (a run's final/ or ``kinlm export --out``); returns one line saying what was written.

    A model with ``hf_export`` becomes a custom-code transformers folder; gpt and the `transformers`
    model a plain transformers folder; any other model its own safetensors. Transformers folders get a
    model card (README.md) with ``result`` (the run's final metrics; default: ``run_dir``/result.json)
    and the newest BLiMP score under ``run_dir``/analysis/. ``spec`` None (tests): no spec.json."""
    from ..spec import dump
    from .checkpoint import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # a DDP wrapper
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    if result is None and run_dir is not None and (Path(run_dir) / "result.json").exists():
        try:
            result = json.loads((Path(run_dir) / "result.json").read_text())
        except (OSError, ValueError):
            result = None
    make = getattr(model, "hf_export", None)
    hf = None if make is not None else to_transformers(model, tokenizer)
    if make is not None:
        exp = make(tokenizer)
        what = write_custom_code(model, exp, tokenizer, out_dir)
        card = _card(model, spec, run_dir, result, exp.model_class, exp.task, exp.readme_notes)
        atomic_write_text(out_dir / "README.md", card)
    elif hf is None:
        from safetensors.torch import save_model

        save_model(model, str(out_dir / "model.safetensors"))
        kind = spec.model.type if spec is not None else type(model).__name__
        what = (f"{out_dir}: model.safetensors + spec.json (the {kind!r} model has no transformers "
                "counterpart and no hf_export; load it with kinlm_core.load_run)")
    else:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its "Writing model shards" bar would land in every run's log
        try:
            hf.save_pretrained(str(out_dir))
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        what = f"{out_dir}: transformers folder ({type(hf).__name__}, {_tokenizer_files(tokenizer, out_dir)})"
        task = "seq2seq" if hf.config.is_encoder_decoder else "causal"
        atomic_write_text(out_dir / "README.md", _card(model, spec, run_dir, result, type(hf).__name__, task))
    if spec is not None:
        atomic_write_text(out_dir / "spec.json", json.dumps(dump(spec), indent=2) + "\n")
    return what
