"""The analyzers on small models: metrics that mean what they say, and their figures."""

import math


import pytest
import torch

from kinlm_core import component
from kinlm_core.testing import kinlm_tokenizer  # noqa: F401 - pytest fixture (byte tokenizer)

from kinlm_cvfp.config import (ConvergenceConfig, CvfpConfig, EffectiveRankConfig, GlobalAttractorConfig,
                               IdentityCheckConfig, ZeroSolutionConfig)
from kinlm_cvfp.losses import mean_norm, pairwise

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


def test_pairwise_and_mean_norm_against_hand_computation():
    C = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairs: (1,-1) -> sqrt 2, (0,-1) -> 1, (-1,0) -> 1; cosines 0, 1/sqrt 2, 1/sqrt 2
    l2, cos = pairwise(C, chunk=2)  # row blocks of 2: each pair still counted once
    assert l2 == pytest.approx((math.sqrt(2) + 2) / 3) and cos == pytest.approx(math.sqrt(2) / 3)
    assert mean_norm(C) == pytest.approx((2 + math.sqrt(2)) / 3)
    same = torch.tensor([[3.0, 4.0]] * 5)
    assert pairwise(same) == (0.0, pytest.approx(1.0)) and mean_norm(same) == pytest.approx(5.0)
    assert pairwise(torch.zeros(4, 3)) == (0.0, 0.0)  # a zero vector has cosine 0
    with pytest.raises(ValueError, match="at least 2 rows"):
        pairwise(torch.ones(1, 3))


def planted(last_gain, last_bias):
    """A cvfp model whose last context layer outputs exactly last_bias for every token (LayerNorm gain 0)."""
    m = cvfp(init_std=0.5)
    with torch.no_grad():
        m.context_block.layers[-1].norm.weight.fill_(last_gain)
        m.context_block.layers[-1].norm.bias.copy_(last_bias)
    return m


def test_attractor_and_zero_solution_flag_planted_collapses_only(tmp_path, kinlm_tokenizer):
    att, zero = GlobalAttractorConfig(max_tokens=100), ZeroSolutionConfig(max_tokens=100)
    assert (att.l2_below, att.cosine_above, zero.norm_below) == (0.1, 0.99, 0.1)  # the source's thresholds
    b = torch.linspace(-1, 1, 16)
    collapsed = planted(0.0, b)  # every context equal to b
    a = att.analyze(collapsed, kinlm_tokenizer, TEXTS, tmp_path)
    assert a["global_attractor"] == 1.0 and a["mean_pairwise_l2"] == 0.0 and a["tokens"] == 100
    assert a["mean_pairwise_cosine"] == pytest.approx(1.0) and a["context_1/mean_pairwise_l2"] > 0.1  # layer 1 lives
    z = zero.analyze(collapsed, kinlm_tokenizer, TEXTS, tmp_path)
    assert z["zero_solution"] == 0.0 and z["mean_norm"] == pytest.approx(float(b.norm()))
    zeros = planted(0.0, torch.zeros(16))  # every context zero
    z = zero.analyze(zeros, kinlm_tokenizer, TEXTS, tmp_path)
    assert z["zero_solution"] == 1.0 and z["mean_norm"] == 0.0 and z["context_1/mean_norm"] > 1.0
    a = att.analyze(zeros, kinlm_tokenizer, TEXTS, tmp_path)
    assert a["global_attractor"] == 0.0 and a["mean_pairwise_cosine"] == 0.0  # zero is the other check's
    healthy = cvfp(init_std=0.5)
    a, z = att.analyze(healthy, kinlm_tokenizer, TEXTS, tmp_path), zero.analyze(healthy, kinlm_tokenizer, TEXTS, tmp_path)
    assert a["global_attractor"] == 0.0 and z["zero_solution"] == 0.0
    assert a["mean_pairwise_l2"] > 1.0 and a["mean_pairwise_cosine"] < 0.9 and z["mean_norm"] > 1.0
    # the values are the pure functions' on the sequential contexts of the stream
    from kinlm_cvfp.analyze import _stream
    from kinlm_cvfp.training import sequential_contexts

    with torch.no_grad():
        C = sequential_contexts(healthy, _stream(kinlm_tokenizer, TEXTS, 100, "cpu"))[-1]
    assert (a["mean_pairwise_l2"], a["mean_pairwise_cosine"]) == pytest.approx(pairwise(C))
    assert z["mean_norm"] == pytest.approx(mean_norm(C))
    # the thresholds are the config's: a loose one flags the healthy model too
    assert GlobalAttractorConfig(max_tokens=100, l2_below=1e9, cosine_above=-1).analyze(
        healthy, kinlm_tokenizer, TEXTS, tmp_path)["global_attractor"] == 1.0
    assert (tmp_path / "global_attractor.png").stat().st_size > 0 and (tmp_path / "zero_solution.png").stat().st_size > 0


def test_attractor_configs_are_registered_and_strict():
    from pydantic import ValidationError

    assert component("analyzer", "global_attractor") is GlobalAttractorConfig
    assert component("analyzer", "zero_solution") is ZeroSolutionConfig
    with pytest.raises(ValidationError, match="norm_above"):
        ZeroSolutionConfig(norm_above=0.1)
    with pytest.raises(ValidationError, match="cosine_above"):
        GlobalAttractorConfig(cosine_above=1.5)
