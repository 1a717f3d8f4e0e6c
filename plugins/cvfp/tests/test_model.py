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
    # an untied head starts at zero (the source's init), so its logits carry nothing for the kit's
    # causality check: the kit runs tied; the untied head's formula is tested in test_equations_of_one_token
    check_model(CvfpConfig(d_model=16, n_layer=2, block_size=32, tie_head=True))
    check_model(CvfpConfig(d_model=16, n_layer=2, block_size=32, tie_head=True, freeze_embedding=True))


def test_defaults_are_the_source_code_at_11_29():
    m = CvfpConfig()
    assert (m.d_model, m.n_layer, m.tie_head, m.freeze_embedding, m.init_std, m.bias_init_std) == \
        (768, 6, False, False, 0.1, 0.01)
    c = TwoPhaseConfig()
    assert (c.dist_reg_weight, c.phase1_lr, c.phase2_lr, c.max_iterations, c.min_iterations, c.target, c.mode) == \
        (0.8, 2e-3, 1e-3, 40, 5, "previous", "parallel")
    assert (c.convergence_threshold, c.convergence_rate, c.noise_std, c.chunk_tokens) == (0.03, 0.95, 0.1, 8000)
    assert (c.train_tokens, c.validation, c.validation_fraction, c.phase2_order, c.max_epochs, c.patience) == \
        (None, "train_tail", 0.1, "stream", 10, 1)
    with pytest.raises(ValueError, match="min_iterations"):
        TwoPhaseConfig(min_iterations=41)


def test_parameter_counts_are_the_sources():
    """Reading B2/B5: 6 layers of 768 with GPT-2's vocabulary: ContextBlock 7,091,712, TokenBlock the
    same, 91,429,969 in all untied (the head has a bias); tied and frozen 52,782,336 (the frozen table
    counted, as the source counts it)."""
    with torch.device("meta"):
        untied = CvfpConfig().build(50257)
        tied = CvfpConfig(tie_head=True, freeze_embedding=True).build(50257)
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    assert count(untied.context_block) == count(untied.token_block) == 7_091_712
    assert untied.num_parameters() == 91_429_969
    assert tied.num_parameters() + tied.embedding.numel() == 52_782_336


def test_initialisation_is_the_sources():
    """Every Linear of both blocks W ~ N(0, 0.1), b ~ N(0, 0.01); LayerNorms (embed_norm included,
    trainable) gain 1, bias 0; the untied head all zeros."""
    torch.manual_seed(0)
    model = CvfpConfig(d_model=256, n_layer=2).build(50)
    linears = [mod for blk in (model.context_block, model.token_block) for mod in blk.modules()
               if isinstance(mod, torch.nn.Linear)]
    assert len(linears) == 4
    W = torch.cat([lin.weight.detach().flatten() for lin in linears])  # 4 x 512 x 256 values
    b = torch.cat([lin.bias.detach().flatten() for lin in linears])    # 4 x 256 values
    assert abs(float(W.std()) - 0.1) < 0.002 and abs(float(W.mean())) < 0.001
    assert abs(float(b.std()) - 0.01) < 0.001 and abs(float(b.mean())) < 0.001
    norms = [mod for mod in model.modules() if isinstance(mod, torch.nn.LayerNorm)]
    assert len(norms) == 5 and model.embed_norm.weight.requires_grad
    assert all(torch.equal(n.weight, torch.ones(256)) and torch.equal(n.bias, torch.zeros(256)) for n in norms)
    assert not model.head.weight.detach().any() and not model.head.bias.detach().any()
    assert abs(float(model.embedding.detach().std()) - 256 ** -0.5) < 0.002  # random table: unit-scale tied logits


def test_equations_of_one_token():
    """c^k = LN(c^{k-1} + ReLU(A_k [c^{k-1}; e])), z^1 = LN(e + ReLU(B_1 [c^1; e])), z^2 = LN(z^1 + ReLU(B_2 [c^2; z^1]))."""
    torch.manual_seed(0)
    model = CvfpConfig(d_model=8, n_layer=2, init_std=0.3, tie_head=True).build(11)
    with torch.no_grad():  # a non-trivial embed_norm, so its gain and bias are checked too
        model.embed_norm.weight.uniform_(0.5, 1.5)
        model.embed_norm.bias.uniform_(-0.5, 0.5)
    ids = torch.tensor([[3]])
    e = torch.nn.functional.layer_norm(model.embedding[3], (8,)) * model.embed_norm.weight + model.embed_norm.bias
    c, cs = torch.zeros(8), []
    for layer in model.context_block.layers:
        c = layer.norm(c + torch.relu(layer.A(torch.cat([c, e]))))
        cs.append(c)
    tb = model.token_block
    z = tb.norms[0](e + torch.relu(tb.mix[0](torch.cat([cs[0], e]))))
    z = tb.norms[1](z + torch.relu(tb.mix[1](torch.cat([cs[1], z]))))
    out = model(ids, output_hidden_states=True)
    assert torch.allclose(out.hidden_states[-1][0, 0], z, atol=1e-6)
    assert torch.allclose(out.logits[0, 0], z @ model.embedding.t(), atol=1e-5)  # tied head: the raw table, no bias
    untied = CvfpConfig(d_model=8, n_layer=2).build(11)
    with torch.no_grad():
        untied.head.weight.normal_()
        untied.head.bias.normal_()
    z = untied(ids, output_hidden_states=True).hidden_states[-1][0, 0]
    assert torch.allclose(untied(ids).logits[0, 0], untied.head.weight @ z + untied.head.bias, atol=1e-5)


def test_frozen_embedding_is_not_a_parameter_and_head_is_tied():
    model = CvfpConfig(d_model=8, n_layer=1, tie_head=True, freeze_embedding=True).build(11)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n == "embedding" for n in names) and "embedding" in dict(model.named_buffers())
    assert all(n.startswith(("context_block.", "token_block.", "embed_norm.")) for n in names)
    untied = CvfpConfig(d_model=8, n_layer=1).build(11)
    assert {"embedding", "head.weight", "head.bias", "embed_norm.weight"} <= {n for n, _ in untied.named_parameters()}


def test_cached_contexts_and_decoding_match_the_recurrence():
    torch.manual_seed(0)
    model = CvfpConfig(d_model=16, n_layer=3, init_std=0.2, tie_head=True).build(23).eval()
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


def _grads(model, fn):
    model.zero_grad(set_to_none=True)
    out = fn()
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(5))
    (out * w).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_hoisted_recurrence_equals_the_readable_loop_in_float64_logits_and_every_gradient():
    torch.manual_seed(0)
    model = CvfpConfig(d_model=12, n_layer=3, block_size=32, tie_head=True).build(50).double()
    ids = torch.randint(0, 50, (3, 17))
    c0 = torch.randn(3, 12, dtype=torch.float64)
    fast = _grads(model, lambda: model(ids, c0=c0).logits)
    block = model.context_block
    block.run, saved = block.run_reference, block.run                       # the readable loop, same model
    try:
        ref = _grads(model, lambda: model(ids, c0=c0).logits)
    finally:
        del block.run
    assert block.run == saved
    torch.testing.assert_close(fast[0], ref[0], atol=1e-12, rtol=1e-12)
    assert fast[1].keys() == ref[1].keys() and any("context_block" in n for n in ref[1])
    for n, g in ref[1].items():
        torch.testing.assert_close(fast[1][n], g, atol=1e-12, rtol=1e-10, msg=n)


@pytest.mark.slow
def test_compiled_recurrence_equals_the_readable_loop_in_float64_logits_and_every_gradient():
    """loop="compiled" (each token's step through torch.compile; CUDA graphs on a GPU): the same logits
    and gradients as the readable per-token loop on the same weights, and under no_grad the same
    step-by-step decoding as the full forward."""
    torch.manual_seed(0)
    model = CvfpConfig(d_model=12, n_layer=3, block_size=32, tie_head=True, loop="compiled").build(50).double()
    assert model.context_block.compiled
    ids = torch.randint(0, 50, (3, 17))
    c0 = torch.randn(3, 12, dtype=torch.float64)
    fast = _grads(model, lambda: model(ids, c0=c0).logits)
    block = model.context_block
    block.run = block.run_reference                                           # the readable loop, same model
    try:
        ref = _grads(model, lambda: model(ids, c0=c0).logits)
    finally:
        del block.run
    torch.testing.assert_close(fast[0], ref[0], atol=1e-10, rtol=1e-10)
    assert fast[1].keys() == ref[1].keys() and any("context_block" in n for n in ref[1])
    for n, g in ref[1].items():
        torch.testing.assert_close(fast[1][n], g, atol=1e-10, rtol=1e-8, msg=n)
    with torch.no_grad():
        logits, state = model.decode(ids[:, :5])
        steps = [logits]
        for t in range(5, 17):
            logits, state = model.decode(ids[:, t:t + 1], state)
            steps.append(logits)
        full = model(ids).logits
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-10)


def test_hoisted_recurrence_steps_aside_for_a_hooked_layer():
    torch.manual_seed(0)
    model = CvfpConfig(d_model=8, n_layer=2, block_size=16, tie_head=True).build(20)
    e = model.embed(torch.randint(0, 20, (2, 5)))
    plain = model.context_block.run(e)
    handle = model.context_block.layers[1].register_forward_hook(lambda m, i, o: o * 0)
    assert not model.context_block._plain()
    hooked = model.context_block.run(e)
    handle.remove()
    assert hooked[1].abs().max() == 0 and plain[1].abs().max() > 0           # the hook ran: reference path
    torch.testing.assert_close(model.context_block.run(e)[0], plain[0])
