"""What a model hands the core to become a transformers custom-code folder (issue #33's contract;
torch-free apart from type hints). The core (engine/export.py) writes the folder from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HFExport:
    name: str                        # file stem: configuration_<name>.py, modeling_<name>.py; the config's model_type
    config: dict                     # JSON-serialisable fields of the PretrainedConfig subclass (vocab_size etc.)
    config_class: str                # class name in configuration_<name>.py
    model_class: str                 # class name in modeling_<name>.py
    files: dict[str, str]            # filename -> source text (more .py files the modeling file imports relatively)
    state_dict: dict                 # name -> tensor, exactly what the exported model's load_state_dict takes
    task: str = "causal"             # "causal" (AutoModelForCausalLM) or "seq2seq" (AutoModelForSeq2SeqLM)
    readme_notes: str = ""           # method-specific text for the model card


__all__ = ["HFExport"]
