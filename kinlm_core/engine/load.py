"""Loading a finished (or interrupted) run, or a pretrained transformers model, for the
`generate`, `eval` and `analyze` commands."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..api import ModelOutput, Tokenizer
from ..spec import SpecError, validate
from . import checkpoint as ckpt
from .train import RunError, bind_tokenizer, cache_dir, pick_device


@dataclass
class LoadedRun:
    spec: object
    model: torch.nn.Module
    tokenizer: Tokenizer
    data: object
    step: int | None


def load_run(run_dir: Path, device: str = "auto") -> LoadedRun:
    run_dir = Path(run_dir)
    spec_file = run_dir / "spec.json"
    if not spec_file.exists():
        raise RunError(f"{run_dir}: not a run directory (no spec.json)")
    try:
        spec = validate(json.loads(spec_file.read_text()), str(spec_file))
    except json.JSONDecodeError as e:
        raise RunError(f"{spec_file}: invalid JSON ({e})") from None
    except SpecError:
        raise
    from ..data import prepare_data

    data = prepare_data(spec.data, spec.tokenizer, spec.train.block_size, cache_dir() / "data", log=lambda *a, **k: None)
    dev = pick_device(device if device != "auto" else spec.train.device)
    torch.manual_seed(spec.seed)
    from .train import run_tokenizer, schedule

    tokenizer = run_tokenizer(spec, data.tokenizer, schedule(spec))  # e.g. sentinels added by the objective
    model = spec.model.build(tokenizer.vocab_size).to(dev)
    bind_tokenizer(model, tokenizer)
    last = ckpt.latest(run_dir / "checkpoints")
    step = None
    if last is not None:
        state = ckpt.load(last, model, map_location=dev)
        step = int(state["step"])
    elif (run_dir / "final" / "model.safetensors").exists():
        from safetensors.torch import load_model

        load_model(model, str(run_dir / "final" / "model.safetensors"), device=str(dev))
    else:
        raise RunError(f"{run_dir}: no checkpoint or final weights found")
    model.eval()
    return LoadedRun(spec, model, tokenizer, data, step)


class HFTokenizerAdapter(Tokenizer):
    """A transformers tokenizer behind kinlm's Tokenizer interface."""

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = len(tok)
        self.eos_id = tok.eos_token_id
        self.fingerprint = getattr(tok, "name_or_path", "hf")

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids):
        return self.tok.decode(list(ids))


class HFCausalLM(torch.nn.Module):
    """A pretrained transformers causal LM behind kinlm's model interface (ModelOutput)."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model
        self.block_size = getattr(hf_model.config, "n_positions", None) or getattr(
            hf_model.config, "max_position_embeddings", 1024)

    def forward(self, input_ids, output_hidden_states: bool = False) -> ModelOutput:
        out = self.hf(input_ids=input_ids, output_hidden_states=output_hidden_states)
        return ModelOutput(logits=out.logits, hidden_states=out.hidden_states if output_hidden_states else None)


def load_hf_model(folder: Path, device: str = "auto"):
    """(model, tokenizer) from a transformers model folder on disk (no network)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise RunError(f"{folder}: not a transformers model folder (no config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise RunError(f"{folder}: cannot load its tokenizer ({type(e).__name__}: {str(e)[:100]})") from None
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    dev = pick_device(device)
    return HFCausalLM(model).to(dev).eval(), HFTokenizerAdapter(tok)
