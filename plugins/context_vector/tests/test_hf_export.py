"""The transformers export of the context-vector model (issue #33): loaded without kinlm, it gives kinlm's
logits (float32, 1e-5) and greedy tokens for both updates (gated; additive with its positional table,
wrapping past max_positions), and generate carries the O(1) state: the time per generated token does
not grow with the prefix. Helpers: the ``hf_tools`` fixture (conftest.py)."""

import json

import pytest
import torch

from kinlm_core.data.tokenizers import ByteTokenizer
from kinlm_context_vector.config import ContextVectorConfig

TOK = ByteTokenizer()
V = TOK.vocab_size

VARIANTS = {
    "gated": dict(update="gated"),
    "additive_source": dict(update="additive", layernorm=False, clamp=None, max_positions=8),  # first commit
    "additive_normalised": dict(update="additive", layernorm=True, clamp=None, max_positions=8),
}


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ContextVectorConfig(**{**dict(d_embed=16, d_hidden=32, n_layer=2, d_context=16, dropout=0.0,
                                        init_std=0.2), **kw})
    return cfg.build(V).eval()


def test_export_fields_are_the_models_own_state_dict():
    model = tiny_model(**VARIANTS["additive_source"])
    ex = model.hf_export(TOK)
    assert (ex.name, ex.config_class, ex.model_class) == (
        "kinlm_context_vector", "ContextVectorConfig", "ContextVectorForCausalLM")
    assert set(ex.state_dict) == set(model.state_dict())
    assert "position_embedding.weight" in ex.state_dict and ex.config["positions"] is True
    assert ex.config["clamp"] is None and ex.config["max_positions"] == 8
    json.dumps(ex.config)
    for text in ex.files.values():
        assert "kinlm_core" not in text and "import kinlm" not in text


def test_quantised_model_is_refused():
    from kinlm_context_vector.quantize import quantize

    with pytest.raises(ValueError, match="quantised"):
        quantize(tiny_model()).hf_export(TOK)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_loads_without_kinlm_and_matches_logits_and_greedy(tmp_path, hf_tools, variant):
    model = hf_tools.train_few_steps(tiny_model(**VARIANTS[variant]), V)
    folder = hf_tools.write_export(model.hf_export(TOK), tmp_path / "export")
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, V, (2, 20), generator=g)                    # 20 > max_positions 8: rows wrap
    prompt = batch[:1, :5]
    out = hf_tools.run_isolated(folder, tmp_path, logits=[{"ids": batch.tolist()}],
                                generate=[{"ids": prompt.tolist(), "max_new_tokens": 12},
                                          {"ids": batch.tolist(), "max_new_tokens": 6}],
                                errors=[{"ids": batch.tolist(), "attention_mask": [[1] * 20, [0] * 3 + [1] * 17],
                                         "generate": True}])
    assert "left padding" in out["errors"][0]
    assert out["class"] == "ContextVectorForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(out["logits"][0]), model(batch).logits, atol=1e-5, rtol=0)
    assert out["generate"][0] == hf_tools.kinlm_greedy(model, prompt, 12, V)
    assert out["generate"][1] == hf_tools.kinlm_greedy(model, batch, 6, V)


def test_generate_time_per_token_does_not_grow_with_the_prefix(tmp_path, hf_tools):
    """The state is O(1): a 256-token prefix costs no more per generated token than a 16-token one
    (a model re-running its prefix would be ~16x slower there). Prints the ratio to kinlm's sampler."""
    model = tiny_model(d_embed=64, d_hidden=128, n_layer=2, d_context=64)  # specs/context_vector_tiny.json's sizes
    folder = hf_tools.write_export(model.hf_export(TOK), tmp_path / "export")
    g = torch.Generator().manual_seed(0)
    short, long = torch.randint(0, V, (1, 16), generator=g), torch.randint(0, V, (1, 256), generator=g)
    n = 32
    out = hf_tools.run_isolated(folder, tmp_path, timing=[{"ids": short.tolist(), "new_tokens": n},
                                                          {"ids": long.tolist(), "new_tokens": n}])
    t16, t256 = out["timing"]
    assert t256 < 2 * t16, f"per-token time grew with the prefix: {t16 * 1e3:.2f} ms at 16, {t256 * 1e3:.2f} ms at 256"
    k256 = hf_tools.kinlm_seconds_per_token(model, long, n, V)
    print(f"context_vector: transformers {t16 * 1e3:.3f} ms/token (prefix 16), {t256 * 1e3:.3f} ms (prefix 256); "
          f"kinlm {k256 * 1e3:.3f} ms (prefix 256); ratio transformers/kinlm {t256 / k256:.2f}")
