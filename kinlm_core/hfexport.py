"""What a model hands the core to be exported as a transformers custom-code folder (issue #33).

Torch-free. ``model.hf_export(tokenizer) -> HFExport``: the core writes config.json (``config`` plus
``model_type``, ``auto_map`` and the tokenizer's special ids), the ``files`` beside it, model.safetensors
from ``state_dict``, the tokenizer and a model card with ``readme_notes``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HFExport:
    name: str                        # file stem, e.g. "kinlm_hamiltonian" -> configuration_kinlm_hamiltonian.py, modeling_kinlm_hamiltonian.py
    config: dict                     # JSON-serialisable fields of the PretrainedConfig subclass (vocab_size etc.)
    config_class: str                # class name in configuration_<name>.py, e.g. "HamiltonianConfig"
    model_class: str                 # class name in modeling_<name>.py, e.g. "HamiltonianForCausalLM"
    files: dict[str, str]            # filename -> source text; at least configuration_<name>.py and modeling_<name>.py
    state_dict: dict                 # name -> tensor, exactly what the exported model's load_state_dict takes
    task: str = "causal"             # "causal" (AutoModelForCausalLM) or "seq2seq" (AutoModelForSeq2SeqLM)
    readme_notes: str = ""           # method-specific text for the model card (e.g. how to steer hamiltonian)
