"""The cvfp model: the kinlm contract, the E-layout equations, decoding, and embeddings from a file."""

import numpy as np
import pytest
import torch

from kinlm_core.testing import check_config, check_imports_without_torch, check_model

from kinlm_cvfp.config import (ConvergenceConfig, CvfpConfig, DiversityConfig, EffectiveRankConfig,
                               IdentityCheckConfig, TwoPhaseConfig)


def test_conformance():
    for cls in (CvfpConfig, TwoPhaseConfig, DiversityConfig, EffectiveRankConfig, ConvergenceConfig, IdentityCheckConfig):
        check_config(cls)
    check_imports_without_torch("kinlm_cvfp.plugin", "kinlm_cvfp.config")
    check_model(CvfpConfig(d_model=16, n_layer=2, block_size=32))
    check_model(CvfpConfig(d_model=16, n_layer=2, block_size=32, tie_head=False, freeze_embedding=False))


def test_defaults_are_the_source_setting():
    m = CvfpConfig()
    assert (m.d_model, m.n_layer, m.tie_head, m.freeze_embedding) == (768, 3, True, True)
    c = TwoPhaseConfig()
    assert (c.dist_reg_weight, c.phase1_lr, c.phase2_lr, c.max_iterations, c.min_iterations, c.target, c.mode) == \
        (0.9, 2e-3, 1e-3, 10, 5, "previous", "parallel")
    assert (c.train_tokens, c.validation_tokens, c.chunk_tokens, c.convergence_rate) == (6400, 1280, 8000, 0.95)
    with pytest.raises(ValueError, match="min_iterations"):
        TwoPhaseConfig(min_iterations=11)


def test_equations_of_one_token():
    """c^k = LN(c^{k-1} + ReLU(A_k [c^{k-1}; e])), z^1 = LN(e + ReLU(B_1 [c^1; e])), z^2 = LN(z^1 + ReLU(B_2 [c^2; z^1]))."""
    torch.manual_seed(0)
    model = CvfpConfig(d_model=8, n_layer=2, init_std=0.3).build(11)
    ids = torch.tensor([[3]])
    e = torch.nn.functional.layer_norm(model.embedding[3], (8,))
    c, cs = torch.zeros(8), []
    for layer in model.context_block.layers:
        c = layer.norm(c + torch.relu(layer.A(torch.cat([c, e]))))
        cs.append(c)
    tb = model.token_block
    z = tb.norms[0](e + torch.relu(tb.mix[0](torch.cat([cs[0], e]))))
    z = tb.norms[1](z + torch.relu(tb.mix[1](torch.cat([cs[1], z]))))
    out = model(ids, output_hidden_states=True)
    assert torch.allclose(out.hidden_states[-1][0, 0], z, atol=1e-6)
    assert torch.allclose(out.logits[0, 0], z @ model.embedding.t(), atol=1e-5)  # tied head


def test_frozen_embedding_is_not_a_parameter_and_head_is_tied():
    model = CvfpConfig(d_model=8, n_layer=1).build(11)
    names = {n for n, _ in model.named_parameters()}
    assert not any("embedding" in n for n in names) and "embedding" in dict(model.named_buffers())
    assert all(n.startswith(("context_block.", "token_block.")) for n in names)
    untied = CvfpConfig(d_model=8, n_layer=1, tie_head=False, freeze_embedding=False).build(11)
    assert {"embedding", "head.weight"} <= {n for n, _ in untied.named_parameters()}


def test_cached_contexts_and_decoding_match_the_recurrence():
    torch.manual_seed(0)
    model = CvfpConfig(d_model=16, n_layer=3, init_std=0.2).build(23).eval()
    ids = torch.randint(0, 23, (2, 12))
    full = model(ids).logits
    contexts = model.context_block.run(model.embed(ids))
    assert torch.allclose(model(ids, contexts=contexts).logits, full, atol=1e-5)
    logits, state = model.decode(ids[:, :5])
    steps = [logits]
    for t in range(5, 12):
        logits, state = model.decode(ids[:, t:t + 1], state)
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_embedding_from_a_file(tmp_path):
    E = np.random.default_rng(0).normal(size=(11, 8)).astype(np.float32)
    np.save(tmp_path / "emb.npy", E)
    model = CvfpConfig(d_model=8, n_layer=1, embedding_path=str(tmp_path / "emb.npy")).build(11)
    assert torch.equal(model.embedding, torch.from_numpy(E))
    torch.save({"weight": torch.from_numpy(E)}, tmp_path / "emb.pt")
    assert torch.equal(CvfpConfig(d_model=8, n_layer=1, embedding_path=str(tmp_path / "emb.pt")).build(11).embedding,
                       torch.from_numpy(E))
    with pytest.raises(ValueError, match=r"model.embedding_path: .* has shape \(11, 8\); expected \(vocab 12, d_model 8\)"):
        CvfpConfig(d_model=8, n_layer=1, embedding_path=str(tmp_path / "emb.npy")).build(12)
    with pytest.raises(ValueError, match="model.embedding_path: no file"):
        CvfpConfig(d_model=8, n_layer=1, embedding_path=str(tmp_path / "missing.npy")).build(11)
