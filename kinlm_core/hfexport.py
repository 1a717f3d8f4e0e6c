"""A model's transformers custom-code export (public API: :class:`HFExport`; torch-free).

A model offers an export through the optional method ``hf_export(tokenizer) -> HFExport``
(``kinlm_core.api.OPTIONAL_METHODS``). The export names a ``PretrainedConfig`` and a
``PreTrainedModel`` subclass whose source files the plugin ships as package data; the core
(:func:`kinlm_core.engine.export.export_final`) writes them into a folder that
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` (or ``AutoModelForSeq2SeqLM``)
loads without kinlm::

    config.json                 the export's config + model_type, auto_map, bos/eos/pad ids
    configuration_<name>.py     the plugin's files (import torch, transformers and the stdlib only)
    modeling_<name>.py
    model.safetensors           the export's state_dict
    tokenizer.json, ...         the run's tokenizer as a transformers tokenizer
    generation_config.json
    README.md                   the model card (:func:`model_card`)
    spec.json                   the run's spec (kinlm rebuilds the model from it)
    kinlm_model.safetensors     kinlm's own weights, when the export's state_dict differs from them

This module also writes the model card, the hub's README.md for every transformers export.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

TASKS = {"causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM"}
KINLM_WEIGHTS = "kinlm_model.safetensors"
"""kinlm's own weights beside a custom-code export whose state_dict is not the model's (load_final reads them)."""


@dataclass
class HFExport:
    """What a model's ``hf_export(tokenizer)`` returns: the transformers classes computing the model.

    ``name``: file stem and ``model_type``, e.g. ``kinlm_hamiltonian`` -> configuration_kinlm_hamiltonian.py,
    modeling_kinlm_hamiltonian.py. ``config``: JSON-serialisable fields of the config class (they become
    its attributes). ``config_class`` / ``model_class``: class names in those files. ``files``: filename ->
    source text (at least the two files; more .py files the modeling file imports relatively).
    ``state_dict``: exactly what the exported model's ``load_state_dict`` takes. ``task``: "causal"
    (AutoModelForCausalLM) or "seq2seq" (AutoModelForSeq2SeqLM). ``readme_notes``: method-specific
    text for the model card (e.g. how to steer the model from transformers)."""

    name: str
    config: dict
    config_class: str
    model_class: str
    files: dict[str, str]
    state_dict: dict
    task: str = "causal"
    readme_notes: str = ""

    def problems(self) -> list[str]:
        """What makes this export unwritable (empty when it is fine)."""
        out = []
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name or ""):
            out.append(f"name {self.name!r} is not a Python identifier")
        for f in (f"configuration_{self.name}.py", f"modeling_{self.name}.py"):
            if f not in self.files:
                out.append(f"files has no {f}")
        for f in self.files:
            if "/" in f or "\\" in f or f.startswith(".") or not f.endswith(".py"):
                out.append(f"files: {f!r} is not a plain .py file name")
        if self.task not in TASKS:
            out.append(f"task {self.task!r} is not one of {sorted(TASKS)}")
        for key in ("model_type", "auto_map"):
            if key in self.config:
                out.append(f"config sets {key!r}, which the core writes")
        try:
            json.dumps(self.config)
        except (TypeError, ValueError) as e:
            out.append(f"config is not JSON-serialisable ({e})")
        if not self.state_dict:
            out.append("state_dict is empty")
        renamed = sorted(k for k in self.state_dict if "beta" in k or "gamma" in k)
        if renamed:
            out.append(f"state_dict names {renamed[:3]} hold 'beta' or 'gamma', which transformers 4.x renames to "
                       "'bias'/'weight' when loading (those weights would keep their initial values); rename them")
        return out

    def auto_map(self) -> dict:
        return {"AutoConfig": f"configuration_{self.name}.{self.config_class}",
                TASKS[self.task]: f"modeling_{self.name}.{self.model_class}"}

    def config_json(self, special: dict, transformers_version: str) -> dict:
        """config.json: the export's config, ``model_type``, ``auto_map``, ``architectures``, the special ids
        (``special``: bos/eos/pad_token_id, None where the tokenizer has none; the export's own win)."""
        cfg = {**special, **self.config, "model_type": self.name, "auto_map": self.auto_map(),
               "architectures": [self.model_class], "transformers_version": transformers_version}
        if self.task == "seq2seq":
            cfg.setdefault("is_encoder_decoder", True)
        return cfg


# --- the model card ------------------------------------------------------------------------------


def _yaml_list(key: str, items) -> list[str]:
    items = [i for i in dict.fromkeys(items) if i]
    return [f"{key}:"] + [f"- {json.dumps(str(i))}" for i in items] if items else []


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


@dataclass
class CardFacts:
    """What the model card says about the run (each may be missing)."""

    model_type: str = "?"
    objective: str | None = None
    method: str = ""                     # the model config's one-line summary
    source: str = ""                     # the distribution that provides the model, with its version
    datasets: list = field(default_factory=list)
    result: dict = field(default_factory=dict)   # result.json (or the run's final metrics)
    blimp: dict | None = None            # the newest analysis/blimp metrics.json
    spec: dict | None = None             # the spec as JSON
    architecture: str = ""               # the class transformers builds
    task: str = "causal"
    notes: str = ""                      # the export's readme_notes


def model_card(f: CardFacts) -> str:
    """README.md for an export: the hub's YAML metadata block, then the run's facts and how to load it."""
    custom = f.architecture and not f.architecture.startswith(("GPT2", "transformers."))
    metrics = [m for m, k in (("loss", "eval/loss"), ("perplexity", "eval/ppl"), ("bits_per_byte", "eval/bpb"))
               if k in f.result]
    if f.blimp and "overall" in f.blimp:
        metrics.append("blimp")
    pipeline = "text-generation" if f.task == "causal" else "text2text-generation"
    meta = (["---", "library_name: transformers", f"pipeline_tag: {pipeline}"]
            + _yaml_list("tags", ["kinlm", f.model_type, f.objective, "custom_code" if custom else None])
            + _yaml_list("datasets", f.datasets) + _yaml_list("metrics", metrics) + ["---", ""])
    r = f.result
    lines = [f"# kinlm {f.model_type} model", ""]
    if f.method:
        lines += [f"**Method:** {f.method}", ""]
    facts = [("model", f.model_type + (f" ({f.source})" if f.source else "")), ("objective", f.objective),
             ("transformers class", f.architecture), ("parameters", r.get("params")),
             ("tokens seen", r.get("tokens_seen")), ("steps", r.get("step")), ("status", r.get("status")),
             ("eval loss", r.get("eval/loss")), ("eval perplexity", r.get("eval/ppl")),
             ("eval bits per byte", r.get("eval/bpb"))]
    if f.blimp and "overall" in f.blimp:
        facts.append(("BLiMP accuracy", f"{f.blimp['overall']:.4f} on {f.blimp.get('pairs', '?'):,} pairs"
                      if isinstance(f.blimp.get("pairs"), int) else f"{f.blimp['overall']:.4f}"))
    lines += ["| fact | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in facts if v not in (None, "")]
    auto = TASKS.get(f.task, "AutoModelForCausalLM")
    remote = ", trust_remote_code=True" if custom else ""
    lines += ["", "## How to load it", "", "```python", f"from transformers import {auto}, AutoTokenizer", "",
              f'model = {auto}.from_pretrained("PATH_OR_REPO"{remote})',
              'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")',
              'ids = tokenizer("Hello", return_tensors="pt").input_ids',
              "print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))", "```", ""]
    if custom:
        lines += ["The modeling code ships in this folder (configuration_*.py, modeling_*.py); it imports torch and "
                  "transformers only, so `trust_remote_code=True` is needed and kinlm is not.", ""]
    lines += ["kinlm rebuilds the model from `spec.json` (`kinlm_core.load_run` on a folder holding this one as "
              "`final/` beside the spec).", ""]
    if f.notes:
        lines += ["## Notes", "", f.notes.strip(), ""]
    if f.spec is not None:
        lines += ["## The spec", "", "```json", json.dumps(f.spec, indent=2), "```", ""]
    return "\n".join(meta + lines)
