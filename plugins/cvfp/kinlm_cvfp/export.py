"""The transformers export of :class:`~kinlm_cvfp.model.CVFP` (issue #33): the inference network after
training (ContextBlock, TokenBlock, head), whatever curriculum trained it.

The configuration and modeling files are package data (``hf/``), templates that import only torch
and transformers; they are read here as text, never imported. The exported model has kinlm's
parameter names except the token table: kinlm's ``embedding`` (a parameter, or a buffer when
frozen) becomes ``embed_tokens.weight``, an ``nn.Embedding`` as transformers expects.
"""

from __future__ import annotations

from importlib import resources

NAME = "kinlm_cvfp"

README_NOTES = """\
### Recurrent state

`generate` carries only the ContextBlock's last context c^K (d_model numbers per row) and the
position count as its cache: each new token costs one step of the recurrence whatever the length
before it, and there is no context limit. kinlm's own sampler crops to the spec's `block_size`
(it restarts from the last `block_size` tokens with a zero context once a text is longer), so the two
give the same tokens while prompt and continuation fit in `block_size` (recorded in config.json)
and may differ after that. Batches must not be left-padded; right padding is harmless.
"""


def _source(filename: str) -> str:
    return (resources.files("kinlm_cvfp") / "hf" / filename).read_text(encoding="utf-8")


def hf_export(model, tokenizer):
    """HFExport of a CVFP model on ``tokenizer``'s vocabulary (float32 weights)."""
    from kinlm_core import HFExport

    cfg = model.cfg
    if tokenizer.vocab_size != model.vocab_size:
        raise ValueError(f"tokenizer vocabulary {tokenizer.vocab_size} != the model's {model.vocab_size}")
    config = {"vocab_size": model.vocab_size, "d_model": cfg.d_model, "n_layer": cfg.n_layer,
              "tie_head": model.head is None, "block_size": cfg.block_size,
              "layer_norm_eps": model.embed_norm.eps}
    state = {("embed_tokens.weight" if k == "embedding" else k): t.detach().to("cpu").float().contiguous().clone()
             for k, t in model.state_dict().items()}
    files = {f"configuration_{NAME}.py": _source(f"configuration_{NAME}.py"),
             f"modeling_{NAME}.py": _source(f"modeling_{NAME}.py")}
    return HFExport(name=NAME, config=config, config_class="CvfpConfig", model_class="CvfpForCausalLM",
                    files=files, state_dict=state, readme_notes=README_NOTES)
