"""The analyzers on small models: metrics that mean what they say, and their figures."""


import pytest
import torch

from kinlm_core import component
from kinlm_core.testing import kinlm_tokenizer  # noqa: F401 - pytest fixture (byte tokenizer)

from kinlm_cvfp.config import ConvergenceConfig, CvfpConfig, EffectiveRankConfig, IdentityCheckConfig

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Pack my box with five dozen liquor jugs!"]


def cvfp(init_std=0.2, seed=0):
    torch.manual_seed(seed)
    return CvfpConfig(d_model=16, n_layer=2, init_std=init_std).build(257).eval()


def test_effective_rank_on_cvfp_and_on_any_model(tmp_path, kinlm_tokenizer):
    m = EffectiveRankConfig(max_tokens=120).analyze(cvfp(), kinlm_tokenizer, TEXTS, tmp_path)
    assert m["tokens"] == 120 and m["dim"] == 16 and 1 <= m["effective_rank"] <= 16
    assert m["effective_rank_pct"] == pytest.approx(100 * m["effective_rank"] / 16)
    assert {"context_1/effective_rank", "context_2/effective_rank"} <= set(m)
    assert (tmp_path / "effective_rank.png").stat().st_size > 0
    gpt = component("model", "gpt")(n_layer=1, n_head=2, d_model=32, block_size=64, dropout=0.0).build(257).eval()
    g = EffectiveRankConfig(max_tokens=100).analyze(gpt, kinlm_tokenizer, TEXTS, tmp_path)
    assert g["dim"] == 32 and g["tokens"] == 64 + 40 - 4 and "hidden_last/effective_rank" in g  # 64 + the rest up to 100


def test_convergence_reproduces_the_sequential_contexts(tmp_path, kinlm_tokenizer):
    """One parallel pass from the sequential contexts reproduces them exactly; parallel iterations
    from zero reach them: after n iterations at least the first n tokens are exact."""
    model = cvfp(init_std=0.5)
    m = ConvergenceConfig(max_tokens=40, iterations=40, threshold=1e-6).analyze(model, kinlm_tokenizer, TEXTS, tmp_path)
    assert m["sequential_reproduction_mse"] < 1e-12
    assert m["share_at_sequential"] == 1.0 and m["distance_to_sequential"] < 1e-10 and m["convergence_rate"] == 1.0
    few = ConvergenceConfig(max_tokens=40, iterations=2, threshold=1e-6).analyze(model, kinlm_tokenizer, TEXTS, tmp_path)
    assert 2 / 40 <= few["share_at_sequential"] <= 1.0
    assert (tmp_path / "convergence.png").exists()


def test_identity_check_tells_an_identity_update_from_a_working_one(tmp_path, kinlm_tokenizer):
    ident = cvfp()
    with torch.no_grad():
        for layer in ident.context_block.layers:
            layer.A.weight.zero_()  # c' = LN(c + ReLU(b)): the update ignores the token
            layer.A.bias.copy_(torch.rand(16))
    cfg = IdentityCheckConfig(max_tokens=100)
    a = cfg.analyze(ident, kinlm_tokenizer, TEXTS, tmp_path)
    assert a["update_cosine"] > 0.999 and a["token_sensitivity"] < 1e-5 and a["identity_like"] == 1.0
    b = cfg.analyze(cvfp(init_std=0.5), kinlm_tokenizer, TEXTS, tmp_path)
    assert b["token_sensitivity"] > 0.1 and b["identity_like"] == 0.0
    assert (tmp_path / "identity_check.png").exists()


def test_context_analyzers_refuse_other_models(tmp_path, kinlm_tokenizer):
    gpt = component("model", "gpt")(n_layer=1, n_head=2, d_model=16, block_size=32, dropout=0.0).build(257)
    for cfg in (ConvergenceConfig(), IdentityCheckConfig()):
        with pytest.raises(ValueError, match=f"analyzer {cfg.type} needs a cvfp model"):
            cfg.analyze(gpt, kinlm_tokenizer, TEXTS, tmp_path)
