"""The transformers export of :class:`~kinlm_context_vector.model.ContextVectorLM` (issue #33).

The configuration and modeling files are package data (``hf/``), templates that import only torch
and transformers; they are read here as text, never imported. The exported model has kinlm's
parameter names, so its state dict is the model's own (float32, no padded vocabulary).
"""

from __future__ import annotations

from importlib import resources

NAME = "kinlm_context_vector"

README_NOTES = """\
### Recurrent state

The model has no attention and no context limit: `generate` carries only the context vector c
(d_context numbers per row) and the position count as its cache, so every new token costs one step
of the recurrence whatever the length of the text before it. Batches must not be left-padded
(the recurrence cannot skip positions); right padding is harmless.
"""


def _source(filename: str) -> str:
    return (resources.files("kinlm_context_vector") / "hf" / filename).read_text(encoding="utf-8")


def hf_export(model, tokenizer):
    """HFExport of a ContextVectorLM (its float Linears; a quantised copy is refused)."""
    import torch.nn as nn

    from kinlm_core import HFExport

    cfg = model.cfg
    if any(type(m) is not nn.Linear for m in (model.in_embed, model.in_context, model.gates, model.head, *model.layers)):
        raise ValueError("context_vector export: the model's Linear layers are not plain nn.Linear (quantised?); "
                         "export the float model")
    if tokenizer.vocab_size != model.vocab_size:
        raise ValueError(f"tokenizer vocabulary {tokenizer.vocab_size} != the model's {model.vocab_size}")
    config = {
        "vocab_size": model.vocab_size, "d_embed": cfg.d_embed, "d_hidden": cfg.d_hidden, "n_layer": cfg.n_layer,
        "d_context": cfg.d_context, "update": cfg.update, "layernorm": cfg.layernorm, "clamp": cfg.clamp,
        "positions": cfg.positions, "max_positions": cfg.max_positions, "dropout": cfg.dropout,
        "layer_norm_eps": model.norm.eps if model.norm is not None else 1e-5,
    }
    state = {k: t.detach().to("cpu").float().contiguous().clone() for k, t in model.state_dict().items()}
    files = {f"configuration_{NAME}.py": _source(f"configuration_{NAME}.py"),
             f"modeling_{NAME}.py": _source(f"modeling_{NAME}.py")}
    return HFExport(name=NAME, config=config, config_class="ContextVectorConfig",
                    model_class="ContextVectorForCausalLM", files=files, state_dict=state,
                    readme_notes=README_NOTES)
