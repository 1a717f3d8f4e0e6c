"""The llama_like model: conformance, presets and their parameter counts, where the block
placements differ, and the decoding protocol (KV cache) against the full forward."""

import pytest
import torch
from pydantic import ValidationError

from kinlm_core.testing import check_config, check_imports_without_torch, check_model

from kinlm_token_geometry.config import PRESETS, LlamaLikeConfig, TokenGeometryConfig

V = 101


def tiny(**kw):
    base = dict(d_model=32, n_layer=4, n_head=4, block_size=32, dropout=0.0)
    return LlamaLikeConfig(**{**base, **kw})


def build(seed=0, **kw):
    torch.manual_seed(seed)
    return tiny(**kw).build(V).eval()


def test_conformance():
    check_config(LlamaLikeConfig)
    check_config(LlamaLikeConfig, preset="LLaMA-MixLN")
    check_config(TokenGeometryConfig)
    check_imports_without_torch("kinlm_token_geometry.plugin", "kinlm_token_geometry.config")
    for placement in ("preln", "postln", "periln", "mixln"):
        check_model(tiny(placement=placement, dropout=0.1))
    check_model(tiny(positions="rope", norm="layernorm", mlp="gelu"))


def hand_count(preset, L=12, C=768, V=50257, T=1024):
    """Tied embedding + learned positions + embedding norm + L blocks + final norm, no biases."""
    p = PRESETS[preset]
    hidden = int(8 * C / 3) if p["mlp"] == "swiglu" else 4 * C
    mlp = 3 * C * hidden if p["mlp"] == "swiglu" else 2 * C * hidden
    norms = 4 * C if p["placement"] == "periln" else 2 * C
    return V * C + T * C + C + L * (4 * C * C + mlp + norms) + C


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_build_with_the_hand_counted_parameters(preset):
    """The source's comparison size (12 layers, 12 heads, d 768, GPT-2 vocabulary)."""
    cfg = LlamaLikeConfig(preset=preset, n_layer=12, n_head=12, d_model=768, block_size=1024)
    assert (cfg.placement, cfg.norm, cfg.mlp) == tuple(PRESETS[preset].values())
    with torch.device("meta"):
        model = cfg.build(50257)
    assert model.num_parameters() == hand_count(preset)
    assert model.head.weight is model.tok_emb.weight
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())


def test_paper_setting_is_the_default():
    cfg = LlamaLikeConfig()
    assert (cfg.placement, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.block_size, cfg.dropout) == ("postln", 6, 6, 384, 256, 0.1)
    assert (cfg.norm, cfg.mlp, cfg.embed_norm, cfg.norm_eps, cfg.init_std, cfg.residual_init, cfg.decay) == \
        ("rmsnorm", "swiglu", True, 1e-6, 0.02, "source", "all")          # the source's GPTConfig and train.py
    with torch.device("meta"):
        model = cfg.build(50257)
    assert model.num_parameters() == hand_count("LLaMA-PostLN", L=6, C=384, T=256)  # 30.0M


@pytest.mark.parametrize("mlp,residual_init,down_std", [("swiglu", "source", 0.02), ("gelu", "source", 0.01),
                                                         ("swiglu", "all", 0.01)])
def test_init_as_the_source_code(mlp, residual_init, down_std):
    """Every weight N(0, 0.02); the source's name test (c_proj, w2) scales the attention output and
    GELU's down projection to 0.02 / sqrt(2L) = 0.01 at L = 2, but not its SwiGLU down_proj."""
    torch.manual_seed(0)
    m = LlamaLikeConfig(d_model=192, n_layer=2, n_head=4, block_size=64, mlp=mlp, residual_init=residual_init).build(V)
    for blk in m.blocks:
        assert blk.attn.proj.weight.std().item() == pytest.approx(0.01, rel=0.03)
        assert blk.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.03)
        assert blk.mlp.down.weight.std().item() == pytest.approx(down_std, rel=0.03)
    assert m.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert m.pos_emb.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert all(bool((n.weight.detach() == 1.0).all()) for n in (m.norm_f, m.emb_norm))


def test_weight_decay_reaches_every_parameter_as_the_source():
    m = tiny().build(V)
    names = [n for n, _ in m.named_parameters()]
    assert m.decay_param_names() == names and "norm_f.weight" in names and "tok_emb.weight" in names
    assert tiny(decay="matrices").build(V).decay_param_names() == []


def test_preset_conflicts_and_bad_values_are_one_clear_error():
    with pytest.raises(ValidationError, match="preset LLaMA-PostLN sets placement='postln' but placement='preln' was given"):
        LlamaLikeConfig(preset="LLaMA-PostLN", placement="preln")
    LlamaLikeConfig(preset="LLaMA-PostLN", placement="postln")  # agreeing is fine
    with pytest.raises(ValidationError, match="LLaMA-PreLN"):
        LlamaLikeConfig(preset="LLaMA-Pre")
    with pytest.raises(ValidationError, match="divisible by n_head"):
        LlamaLikeConfig(d_model=30, n_head=4)


def test_mixln_split():
    assert tiny(placement="mixln", n_layer=8).block_placements() == ["postln"] * 2 + ["preln"] * 6
    assert tiny(placement="mixln", n_layer=3).block_placements() == ["preln"] * 3  # floor(0.75) = 0
    assert tiny(placement="mixln", n_layer=4, mixln_split=0.5).block_placements() == ["postln"] * 2 + ["preln"] * 2


def test_placements_differ_where_they_should():
    """postln (and periln) blocks end with a norm: every token leaves with RMS 1 (RMSNorm weight 1);
    preln blocks leave the residual stream unnormalised. With the attention and MLP outputs
    zeroed, a preln block is the identity and a postln block is the norm."""
    x = torch.randn(2, 10, 32) * 3.0
    rms = lambda t: t.pow(2).mean(-1).sqrt()  # noqa: E731
    for placement, normed in (("preln", False), ("postln", True), ("periln", True)):
        blk = build(placement=placement).blocks[0]
        y, _ = blk(x)
        assert torch.allclose(rms(y), torch.ones(2, 10), atol=1e-4) == normed, placement
        for lin in (blk.attn.proj, blk.mlp.down):
            torch.nn.init.zeros_(lin.weight)
        y0, _ = blk(x)
        expected = x if placement == "preln" else blk.n2(blk.n1(x)) if placement == "postln" else blk.p2(blk.p1(x))
        torch.testing.assert_close(y0, expected)
    model = build(placement="mixln", n_layer=8)
    assert [b.placement for b in model.blocks] == ["postln"] * 2 + ["preln"] * 6
    # same weights, different placement -> different block outputs (the logits differ only at
    # second order at init: residual branches N(0, 0.02) against an embedding of RMS 1, then N_f)
    a, b = build(placement="preln"), build(placement="postln")
    ids = torch.randint(0, V, (1, 12))
    ha, hb = a(ids, output_hidden_states=True).hidden_states, b(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(ha[0], hb[0])
    assert all((x - y).abs().max() > 1e-3 for x, y in zip(ha[1:-1], hb[1:-1]))


def test_hidden_states_follow_transformers_convention():
    model = build(placement="preln")
    ids = torch.randint(0, V, (2, 12))
    out = model(ids, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == 4 + 1
    emb = model.emb_norm(model.tok_emb(ids) + model.pos_emb(torch.arange(12)))
    torch.testing.assert_close(hs[0], emb)
    h = hs[0]
    for i, blk in enumerate(model.blocks):
        h, _ = blk(h)
        if i < 3:
            torch.testing.assert_close(hs[i + 1], h)
    torch.testing.assert_close(hs[-1], model.norm_f(h))
    torch.testing.assert_close(out.logits, hs[-1] @ model.tok_emb.weight.T)
    with pytest.raises(ValueError, match="exceeds block_size 32"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("kw", [dict(placement="postln"), dict(placement="preln", positions="rope"),
                                dict(placement="periln", mlp="gelu", norm="layernorm"), dict(placement="mixln", positions="rope")])
def test_decoding_with_kv_cache_equals_full_forward(kw):
    model = build(**kw)
    ids = torch.randint(0, V, (2, 20))
    full = model(ids).logits
    logits, state = model.decode(ids[:, :5])                         # prefill
    torch.testing.assert_close(logits, full[:, :5], atol=1e-5, rtol=1e-5)
    for t in range(5, 20):                                           # one token at a time
        step, state = model.decode(ids[:, t:t + 1], state)
        assert step.shape == (2, 1, V)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
    assert state["kv"][0][0].shape == (2, 4, 20, 8)
    # two tokens at once after a prefill, too
    _, s = model.decode(ids[:, :10])
    two, _ = model.decode(ids[:, 10:12], s)
    torch.testing.assert_close(two, full[:, 10:12], atol=1e-5, rtol=1e-5)


def test_decoding_past_block_size_equals_the_cropped_forward():
    model = build(block_size=16)
    ids = torch.randint(0, V, (1, 24))
    _, state = model.decode(ids[:, :16])
    for t in range(16, 24):
        step, state = model.decode(ids[:, t:t + 1], state)
        ref = model(ids[:, t - 15:t + 1]).logits[:, -1]
        torch.testing.assert_close(step[:, 0], ref, atol=1e-5, rtol=1e-5)
