"""The transformers export of :class:`~kinlm_hamiltonian.model.HamiltonianLM` (issue #33).

The configuration and modeling files are package data (``hf/``), templates that import only torch
and transformers; they are read here as text, never imported. The exported model keeps kinlm's
parameter names; the padded vocabulary rows are cut back to the tokenizer's, and the head, tied to
E_q in kinlm, is E_q itself there (one tensor, ``embed.q_emb.weight``).
"""

from __future__ import annotations

from importlib import resources

NAME = "kinlm_hamiltonian"

README_NOTES = """\
### Steering (the method's concept vectors)

kinlm's `steer` generator adds `strength * v` at every position, where `v` is the output-head row
(= E_q row) of the target word's first token. From transformers:

```python
v = model.concept_vector(tokenizer.encode("love")[0])          # (d_model,)
out = model.generate(ids, steer=0.5 * v, steer_target="q", do_sample=False, max_new_tokens=40)
```

`steer_target="momentum"` adds the vector to the velocity that feeds the momentum EMA instead of to
q. `model(ids, steer=..., resets=False)` reproduces the look-ahead passes of kinlm's `least_action`
and `flow` planners (no end-of-text momentum resets); those planners themselves are kinlm
generators, not transformers decoding strategies, and are not exported. kinlm's steer generator also
applies its own repetition penalty (divide positive logits of generated tokens): transformers'
`repetition_penalty` also counts the prompt's tokens, so sampled texts are not identical.

### Context

At most `block_size` positions (RoPE and the gravity distances are built for them). `generate`
keeps a KV cache plus the momentum and conv state; when the text outgrows the block it starts again
from the last `block_size` tokens, as kinlm's sampler does. Batches must not be left-padded.
"""


def _source(filename: str) -> str:
    return (resources.files("kinlm_hamiltonian") / "hf" / filename).read_text(encoding="utf-8")


def hf_export(model, tokenizer):
    """HFExport of a HamiltonianLM on ``tokenizer``'s vocabulary (float32 weights, kinlm's names)."""
    from kinlm_core import HFExport

    cfg, V = model.cfg, tokenizer.vocab_size
    if V > model.vocab_size:
        raise ValueError(f"tokenizer vocabulary {V} exceeds the model's {model.vocab_size}")
    config = {
        "vocab_size": V, "d_model": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
        "block_size": cfg.block_size, "beta": cfg.beta, "reset_strength": cfg.reset_strength,
        "eot_token_id": model.eot_token_id, "conv_kernel": cfg.conv_kernel, "reflex": cfg.reflex,
        "distance_cap": cfg.distance_cap, "distance_scale": cfg.distance_scale, "mlp_ratio": cfg.mlp_ratio,
        "rope_base": cfg.rope_base, "dropout": cfg.dropout, "attn_dropout": cfg.attn_dropout,
        "layer_norm_eps": model.ln_f.eps,
    }
    state = {}
    for key, t in model.state_dict().items():
        if key == "head.weight":                                          # the same tensor as E_q
            continue
        if key in ("embed.q_emb.weight", "embed.p_emb.weight"):
            t = t[:V]                                                     # cut the padded rows
        state[key] = t.detach().to("cpu").float().contiguous().clone()
    files = {f"configuration_{NAME}.py": _source(f"configuration_{NAME}.py"),
             f"modeling_{NAME}.py": _source(f"modeling_{NAME}.py")}
    return HFExport(name=NAME, config=config, config_class="HamiltonianConfig",
                    model_class="HamiltonianForCausalLM", files=files, state_dict=state,
                    readme_notes=README_NOTES)
