"""The transformers export of the context-vector model (issue #33): loaded without kinlm, it gives kinlm's
logits (float32, 1e-5) and greedy tokens for both updates (gated; additive with its positional table,
wrapping past max_positions), and generate carries the O(1) state: the time per generated token does
not grow with the prefix. Through kinlm_core.testing.check_hf_export; the
tiny spec trained a few steps through the engine."""

import json
from pathlib import Path

import pytest
import torch

from kinlm_core.data.tokenizers import ByteTokenizer
from kinlm_core.testing import check_export_generate_time, check_hf_export, train_briefly
from kinlm_context_vector.config import ContextVectorConfig

pytestmark = pytest.mark.slow  # loads exports in a separate process: seconds each

TOK = ByteTokenizer()
V = TOK.vocab_size
SPECS = Path(__file__).resolve().parents[3] / "specs"

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
def test_variant_loads_without_kinlm_and_matches_logits_and_greedy(tmp_path, variant):
    batch = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(1))  # 20 > max_positions 8: rows wrap
    left = {"attention_mask": torch.tensor([[1] * 20, [0] * 3 + [1] * 17])}
    got = check_hf_export(tiny_model(**VARIANTS[variant]), TOK, tmp_path, prompt_ids=batch, max_new_tokens=6,
                          jobs=[{"do": "generate", "ids": batch, "max_new_tokens": 2, "kwargs": left}])
    assert "left padding" in got["jobs"][0]["error"]
    assert got["steps"] == [20] + [1] * 5                                # the state is carried, not the prefix


def test_tiny_spec_trained_exports_and_generate_time_does_not_grow_with_the_prefix(tmp_path):
    """specs/context_vector_tiny.json, 3 steps: kinlm's logits and greedy tokens, one token per generate step, and the
    same time per token after 256 tokens as after 16 (the README states the ratio to kinlm printed here)."""
    run = train_briefly(SPECS / "context_vector_tiny.json", tmp_path / "run")
    got = check_export_generate_time(run.model.float().eval(), run.tokenizer, tmp_path, spec=run.spec)
    print("context_vector:", got["summary"])
