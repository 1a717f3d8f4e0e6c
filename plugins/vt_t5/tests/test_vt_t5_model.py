"""The vt_embeddings wrapper and the T5 presets."""

import pytest
import torch
from pydantic import ValidationError

from kinlm_core import component
from kinlm_core.testing import check_config, check_imports_without_torch, check_model
from kinlm_vt_t5.config import (HybridConfig, HybridTasksConfig, ProbeConfig, RepresentationConfig, T5Config,
                                VTEmbeddingsConfig)
from kinlm_vt_t5.vt import difference, find_input_embedding, restarts

GPT = {"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 16, "block_size": 32, "dropout": 0.0}
T5_TINY = {"type": "t5", "preset": "t5-tiny", "overrides": {"d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16}}


def test_conformance():
    for cls, kw in [(VTEmbeddingsConfig, {"inner": GPT}), (T5Config, {}), (HybridTasksConfig, {}), (HybridConfig, {}),
                    (RepresentationConfig, {}), (ProbeConfig, {"path": "x.jsonl"})]:
        check_config(cls, **kw)
    check_imports_without_torch("kinlm_vt_t5.plugin", "kinlm_vt_t5.config", "kinlm_vt_t5.tasks")
    for mode in ("add", "concat_project", "replace"):
        check_model(VTEmbeddingsConfig(inner=GPT, mode=mode, learnable=mode == "add", acceleration=mode == "concat_project"))


def test_inner_config_errors_name_the_path():
    with pytest.raises(ValidationError) as e:
        VTEmbeddingsConfig(inner={"type": "gpt", "n_layer": "four"})
    assert e.value.errors()[0]["loc"] == ("inner", "n_layer")
    with pytest.raises(ValidationError, match="did you mean 'gpt'") as e:
        VTEmbeddingsConfig(inner={"type": "gtp"})
    assert e.value.errors()[0]["loc"] == ("inner", "type")
    with pytest.raises(ValidationError, match="inside w_range"):
        VTEmbeddingsConfig(inner=GPT, learnable=True, w=0.9, w_range=(0.01, 0.5))
    with pytest.raises(ValueError, match="cannot find the input embedding"):
        find_input_embedding(torch.nn.Linear(2, 2))


def test_spec_error_lines_are_the_nested_config_lines():
    from kinlm_core.spec import SpecError, validate

    spec = {"name": "x", "data": {"type": "embedded"}, "model": {"type": "vt_embeddings", "inner": {"type": "gtp"}}}
    for inner, line in [({"type": "gtp"}, "s.json: model.inner.type: unknown model type 'gtp'; known: "),
                        ({"type": "gpt", "n_layer": 0}, "s.json: model.inner.n_layer: input should be greater than"),
                        ("gpt", 's.json: model.inner: must be an object with a "type", e.g. {"type": "gpt"} (got "gpt")')]:
        spec["model"]["inner"] = inner
        with pytest.raises(SpecError) as e:
            validate(spec, "s.json", check_requires=False)
        assert len(str(e.value).splitlines()) == 1 and str(e.value).startswith(line), str(e.value)


def _pair(inner_cfg, vt_cfg, vocab=97):
    torch.manual_seed(0)
    inner = component("model", inner_cfg["type"]).model_validate(inner_cfg).build(vocab).eval()
    torch.manual_seed(0)
    return inner, VTEmbeddingsConfig(inner=inner_cfg, **vt_cfg).build(vocab).eval()


def test_w_zero_equals_the_inner_model_gpt_and_t5():
    x = torch.randint(0, 97, (2, 12))
    inner, wrapped = _pair(GPT, {"w": 0.0})
    assert torch.equal(inner(x).logits, wrapped(x, document_ids=torch.zeros_like(x)).logits)
    inner, wrapped = _pair(T5_TINY, {"w": 0.0})
    d = torch.randint(0, 97, (2, 5))
    mask = torch.ones_like(x)
    mask[1, 8:] = 0
    a = inner(x, attention_mask=mask, decoder_input_ids=d, output_hidden_states=True)
    b = wrapped(x, attention_mask=mask, decoder_input_ids=d, output_hidden_states=True)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.encoder_hidden_states[-1], b.encoder_hidden_states[-1])
    _, w2 = _pair(T5_TINY, {"w": 0.2})
    assert not torch.allclose(a.logits, w2(x, attention_mask=mask, decoder_input_ids=d).logits)


def test_add_mode_formula_on_encoder_and_decoder_inputs():
    """T5: hidden_states[0] is the (VT) embedding of each stack: e + w (e - e_prev), e_{-1} = 0."""
    _, m = _pair(T5_TINY, {"w": 0.4})
    x, d = torch.randint(0, 97, (1, 6)), torch.randint(0, 97, (1, 4))
    out = m(x, decoder_input_ids=d, output_hidden_states=True)
    for ids, h0 in ((x, out.encoder_hidden_states[0]), (d, out.hidden_states[0])):
        e = m.inner.hf.shared.weight[ids]
        prev = torch.cat([torch.zeros_like(e[:, :1]), e[:, :-1]], 1)
        assert torch.allclose(h0, e + 0.4 * (e - prev), atol=1e-6)
        assert torch.allclose(h0[:, 0], 1.4 * e[:, 0], atol=1e-6)


def test_first_difference_is_zero_and_differences_restart_at_documents_and_padding():
    x = torch.arange(1, 7, dtype=torch.float32).view(1, 6, 1).repeat(1, 1, 3)   # e_t = t + 1
    r = restarts(torch.zeros(1, 6, dtype=torch.long), attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]]),
                 document_ids=torch.tensor([[0, 0, 0, 0, 1, 1]]))
    assert r.tolist() == [[True, True, True, False, True, False]]                # row start, after padding, document
    v = difference(x, r, first="zero")
    assert v[0, :, 0].tolist() == [0, 0, 0, 1, 0, 1]                             # 0 at every first position
    assert difference(x, r, first="self")[0, :, 0].tolist() == [1, 2, 3, 1, 5, 1]  # e_{-1} = 0
    # through a model: replace mode feeds exactly 0 at position 0; gpt's hidden_states[0] = VT(wte) + wpe
    _, m = _pair(GPT, {"mode": "replace"})
    ids = torch.randint(0, 97, (2, 8))
    h0 = m(ids, output_hidden_states=True).hidden_states[0]
    assert torch.allclose(h0[:, 0], m.inner.wpe.weight[0].expand(2, -1))
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2]] * 2)
    h0 = m(ids, document_ids=docs, output_hidden_states=True).hidden_states[0] - m.inner.wpe.weight[:8]
    assert torch.count_nonzero(h0[:, [0, 3, 7]]) == 0 and torch.count_nonzero(h0[:, [1, 2, 4]]) > 0


def test_parameters_added_and_concat_project_init():
    C = GPT["d_model"]
    assert _pair(GPT, {"mode": "add"})[1].added_parameters() == 0
    assert _pair(GPT, {"mode": "replace"})[1].added_parameters() == 0
    assert _pair(GPT, {"mode": "concat_project"})[1].added_parameters() == 2 * C * C + C
    assert _pair(GPT, {"mode": "concat_project", "acceleration": True})[1].added_parameters() == 3 * C * C + C
    x = torch.randint(0, 97, (2, 10))
    # the source's new Linear has torch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    _, cp = _pair(GPT, {"mode": "concat_project"})
    bound = 1 / (2 * C) ** 0.5
    assert cp.proj.weight.abs().max() <= bound and cp.proj.weight.abs().max() > 0.9 * bound
    assert cp.proj.bias.abs().max() <= bound and cp.proj.bias.abs().max() > 0
    # proj_init "identity" (kinlm's option) starts as the inner model
    inner, cp = _pair(GPT, {"mode": "concat_project", "acceleration": True, "proj_init": "identity"})
    assert torch.allclose(inner(x).logits, cp(x).logits, atol=1e-5)


def test_learnable_w_trains_and_is_clamped_after_the_optimizer_step_not_in_forward():
    from kinlm_core import RunContext
    from kinlm_vt_t5 import plugin

    _, m = _pair(GPT, {"mode": "add", "learnable": True, "w": 0.1, "w_range": (0.01, 0.5)})
    m.train()
    x = torch.randint(0, 97, (2, 10))
    out = m(x)
    assert out.metrics["vt_w"].item() == pytest.approx(0.1)
    out.logits.logsumexp(-1).mean().backward()
    assert m.w.grad is not None and m.w.grad.abs() > 0
    with torch.no_grad():
        m.w.fill_(3.0)
    assert m(x).metrics["vt_w"].item() == pytest.approx(3.0)        # forward leaves w alone
    plugin.kinlm_step_end(run=RunContext(spec=None, run_dir=None, model=m), step=1, metrics={})
    assert m.w.item() == pytest.approx(0.5)
    with torch.no_grad():
        m.w.fill_(-1.0)
    plugin.kinlm_step_end(run=RunContext(spec=None, run_dir=None, model=torch.nn.Sequential(m)), step=2, metrics={})
    assert m.w.item() == pytest.approx(0.01)                        # found inside a container (DDP) too


def test_add_mode_by_hand_on_a_fixed_tensor():
    """e = [[1], [2], [4]], w = 0.5: e' = e + w (e - e_prev), e_{-1} = 0 -> [1.5, 2.5, 5]."""
    e = torch.tensor([[[1.0], [2.0], [4.0]]])
    r = restarts(torch.zeros(1, 3, dtype=torch.long))
    assert (e + 0.5 * difference(e, r, first="self"))[0, :, 0].tolist() == [1.5, 2.5, 5.0]
    v = difference(e, r)                                           # V_0 = 0, V_t = e_t - e_{t-1}
    assert v[0, :, 0].tolist() == [0.0, 1.0, 2.0]
    assert difference(v, r)[0, :, 0].tolist() == [0.0, 1.0, 1.0]  # A_0 = 0, A_1 = V_1, A_t = V_t - V_{t-1}


def test_representation_terms_by_hand():
    """anti_collapse = mean off-diagonal cosine; source_noop = alpha_init^2, a constant."""
    from kinlm_core import ModelOutput
    from kinlm_vt_t5.regularizer import mean_offdiag_cosine

    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # cos(0,1) = 0, cos(0,2) = cos(1,2) = 1/sqrt(2); mean over the 6 ordered pairs = 4/sqrt(2)/6
    assert mean_offdiag_cosine(h).item() == pytest.approx(4 / 2 ** 0.5 / 6)
    fn = RepresentationConfig(source_noop=True, alpha_init=0.1).build()
    out = fn(ModelOutput(logits=None), {}, 0)
    assert list(out) == ["alpha_l2"] and out["alpha_l2"].item() == pytest.approx(0.01)
    with pytest.raises(ValueError, match="no learnable VT input"):
        RepresentationConfig().build()(ModelOutput(logits=torch.zeros(1, 2, 3)), {}, 0)


def test_decoding_token_by_token_equals_the_full_forward():
    from kinlm_core.testing import check_decoding

    _, m = _pair(GPT, {"mode": "add", "w": 0.4})
    ids = torch.randint(0, 97, (2, 12))
    for prefix in (1, 4):
        check_decoding(m, ids, prefix=prefix, atol=1e-5)


def test_t5_small_preset_is_about_60m_parameters():
    with torch.device("meta"):
        model = T5Config(preset="t5-small").build(32128)
    n = sum(p.numel() for p in model.parameters())
    assert 60.0e6 < n < 61.0e6
    assert T5Config(preset="t5-small").transformers_config().config["num_layers"] == 6
