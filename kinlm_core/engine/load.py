"""Loading a finished (or interrupted) run, or a pretrained transformers model, for the
`generate`, `eval` and `analyze` commands."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..api import ModelOutput, Tokenizer
from ..spec import validate
from . import checkpoint as ckpt
from .train import RunError, bind_tokenizer, cache_dir, pick_device


@dataclass
class LoadedRun:
    spec: object
    model: torch.nn.Module
    tokenizer: Tokenizer
    data: object
    step: int | None


def run_spec_and_data(run_dir: Path):
    """A run directory's validated spec.json and its prepared data (from the cache when it is there)."""
    from ..data import prepare_data

    spec_file = Path(run_dir) / "spec.json"
    if not spec_file.exists():
        raise RunError(f"{run_dir}: not a run directory (no spec.json)")
    try:
        spec = validate(json.loads(spec_file.read_text()), str(spec_file))
    except json.JSONDecodeError as e:
        raise RunError(f"{spec_file}: invalid JSON ({e})") from None
    data = prepare_data(spec.data, spec.tokenizer, spec.train.block_size, cache_dir() / "data", log=lambda *a, **k: None)
    return spec, data


def load_run(run_dir: Path, device: str = "auto", step: int | None = None, strict: bool = False,
             warn=None, untrained: bool = False, weights: str = "last") -> LoadedRun:
    """A run's spec, model and tokenizer: the checkpoint of ``step``, else the newest intact one (a
    damaged newer one is skipped with a ``warn`` line naming it; ``strict`` refuses it instead), else
    the final/ export. Checkpoints are verified against their manifest first. ``untrained``: the
    run's step-0 weights instead, built from its seed exactly as ``kinlm run`` builds them before the
    first step (step 0, no weights loaded, no checkpoint read). ``weights="best"``: the run's best/
    (train.keep_best), verified the same way."""
    run_dir = Path(run_dir)
    spec, data = run_spec_and_data(run_dir)
    dev = pick_device(device if device != "auto" else spec.train.device)
    torch.manual_seed(spec.seed)
    from .train import run_tokenizer, schedule

    tokenizer = run_tokenizer(spec, data.tokenizer, schedule(spec))  # e.g. sentinels added by the objective
    model = spec.model.build(tokenizer.vocab_size).to(dev)
    bind_tokenizer(model, tokenizer)
    if untrained:
        return LoadedRun(spec, model.eval(), tokenizer, data, 0)
    final_weights = run_dir / "final" / "model.safetensors"
    if weights == "best":
        if step is not None:
            raise RunError("--weights best and --step: choose one")
        best = ckpt.best_folder(run_dir)
        if best is None:
            raise RunError(f"{run_dir}: no best/ weights (the run's spec sets no train.keep_best, or no evaluation "
                           f"has finished yet)")
        ckpt.verify(best)
        step = int(ckpt.load(best, model, map_location=dev)["step"])
        model.eval()
        return LoadedRun(spec, model, tokenizer, data, step)
    if step is not None:  # the step asked for, or nothing
        last = run_dir / "checkpoints" / f"step_{step:07d}"
        if not last.is_dir():
            have = [p.name for p in ckpt.all_checkpoints(run_dir / "checkpoints")]
            raise RunError(f"{run_dir}: no checkpoint of step {step} (have: {', '.join(have) or 'none'})")
        ckpt.verify(last)
    else:
        try:
            last = ckpt.newest_intact(run_dir / "checkpoints", strict=strict, warn=warn)
        except ckpt.CheckpointError as e:
            if strict or not final_weights.exists():
                raise
            if warn is not None:
                warn(f"{e}; using {final_weights.parent}")
            last = None
    step = None
    if last is not None:
        state = ckpt.load(last, model, map_location=dev)
        step = int(state["step"])
    elif final_weights.exists():
        load_final(model, run_dir / "final", dev)
    else:
        raise RunError(f"{run_dir}: no checkpoint or final weights found")
    model.eval()
    return LoadedRun(spec, model, tokenizer, data, step)


def load_final(model, folder: Path, device) -> None:
    """Load a final/ export into the run's model: kinlm's own safetensors, or a transformers folder
    (config.json beside the weights) written by :func:`kinlm_core.engine.export.export_final`: a
    custom-code export (config.json with ``auto_map``) through kinlm's own weights
    (``kinlm_model.safetensors``, else model.safetensors, which then holds the model's own state_dict),
    gpt's GPT-2 folder through the inverse weight mapping."""
    from safetensors.torch import load_file, load_model

    from ..hfexport import KINLM_WEIGHTS

    weights = folder / "model.safetensors"
    if (folder / KINLM_WEIGHTS).exists():
        load_model(model, str(folder / KINLM_WEIGHTS), device=str(device))
        return
    if not (folder / "config.json").exists():
        load_model(model, str(weights), device=str(device))
        return
    sd = load_file(str(weights), device=str(device))
    if "auto_map" in json.loads((folder / "config.json").read_text()):
        model.load_state_dict(sd, strict=True)
        return
    inner = getattr(model, "hf", None)
    if inner is not None:
        inner.load_state_dict(sd, strict=False)  # tied heads are saved once
        inner.tie_weights()
        return
    from .export import gpt_state_from_transformers

    model.load_state_dict(gpt_state_from_transformers(model, sd), strict=True)


class WithoutSpecialTokens(torch.nn.Module):
    """Feeds a model the special tokens it expects around each row (an encoder's [CLS] ... [SEP]) and
    cuts their positions out of its outputs, so analyzers see exactly the text's tokens."""

    def __init__(self, model, prefix: list[int], suffix: list[int]):
        super().__init__()
        self.inner, self.prefix, self.suffix = model, prefix, suffix
        block = getattr(model, "block_size", None)
        self.block_size = None if block is None else block - len(prefix) - len(suffix)

    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False) -> ModelOutput:
        B, T = input_ids.shape
        pre = input_ids.new_tensor(self.prefix).expand(B, -1)
        suf = input_ids.new_tensor(self.suffix).expand(B, -1)
        ids = torch.cat([pre, input_ids, suf], dim=1)
        mask = None if attention_mask is None else torch.cat(
            [torch.ones_like(pre), attention_mask, torch.ones_like(suf)], dim=1)
        out = self.inner(ids, attention_mask=mask, output_hidden_states=output_hidden_states)
        keep = slice(len(self.prefix), len(self.prefix) + T)
        cut = (lambda hs: None if hs is None else tuple(h[:, keep] for h in hs))
        return ModelOutput(logits=None if out.logits is None else out.logits[:, keep],
                           hidden_states=cut(out.hidden_states), encoder_hidden_states=out.encoder_hidden_states)


class HFEncoder(torch.nn.Module):
    """A pretrained transformers encoder (AutoModel, e.g. BERT / MiniLM) behind kinlm's model interface:
    hidden states in kinlm's convention, no logits (an encoder has no next-token head)."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model
        self.block_size = getattr(hf_model.config, "max_position_embeddings", None)

    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False) -> ModelOutput:
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        return ModelOutput(logits=None, hidden_states=out.hidden_states if output_hidden_states else None)


def _is_lm(hf_config) -> bool:
    """A config whose architectures (when named) include a language-model head."""
    archs = getattr(hf_config, "architectures", None) or []
    if hf_config.is_encoder_decoder:
        return True
    return not archs or any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)


def _special_wrap(tok) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special ids the tokenizer puts around a text."""
    plain = tok.encode("a", add_special_tokens=False)
    full = tok.encode("a", add_special_tokens=True)
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    return ([], []) if at is None or not plain else (full[:at], full[at + len(plain):])


def load_hf_model(folder: Path, device: str = "auto", special_tokens: bool = True):
    """(model, tokenizer) from a transformers model folder on disk (no network).

    A language model (causal or encoder-decoder) loads as the `transformers` model (with decoding);
    an encoder whose architectures name no LM head (BERT, MiniLM) through ``AutoModel``. The
    tokenizer adds the model's own special tokens (BOS, [CLS] ... [SEP]) as the model expects;
    ``special_tokens=False`` still feeds them but leaves their positions out of the outputs."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from ..builtins.hf_config import TransformersConfig
    from ..data.tokenizers import TransformersTokenizer

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise RunError(f"{folder}: not a transformers model folder (no config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise RunError(f"{folder}: cannot load its tokenizer ({type(e).__name__}: {str(e)[:100]})") from None
    hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    tokenizer = TransformersTokenizer(tok, str(folder), add_special_tokens=special_tokens)
    if _is_lm(hf_config):
        model = TransformersConfig(pretrained=str(folder)).build(tokenizer.vocab_size)
        model.bind_tokenizer(tokenizer)
    else:
        model = HFEncoder(AutoModel.from_pretrained(str(folder), local_files_only=True))
    if not special_tokens:
        prefix, suffix = _special_wrap(tok)
        if prefix or suffix:
            model = WithoutSpecialTokens(model, prefix, suffix)
    return model.to(pick_device(device)).eval(), tokenizer
