"""DiffWrapper: the source's initialisation and weight decay, identity at (1, 0, 0) without noise,
the mix by hand, causality, gradients, decoding token by token, finding blocks in different models,
and spec errors that name the JSON path."""

import json
import subprocess
import sys

import pytest
import torch

from kinlm_core import component
from kinlm_core.engine.optim import param_groups
from kinlm_core.testing import check_decoding, check_model

from kinlm_accel_penalty.config import DiffWrapperConfig
from kinlm_accel_penalty.diff_wrapper import kinematic_mix

V = 97
GPT = {"type": "gpt", "n_layer": 3, "n_head": 2, "d_model": 32, "block_size": 32}


def wrapped_and_inner(inner: dict, **kw):
    kw.setdefault("init_std", 0.0)
    torch.manual_seed(0)
    wrapper = DiffWrapperConfig(inner=inner, **kw).build(V).eval()
    torch.manual_seed(1)
    plain = component("model", inner["type"])(**inner).build(V).eval()
    plain.load_state_dict(wrapper.inner.state_dict())
    return wrapper, plain


def test_identity_at_init_equals_the_inner_model_exactly():
    wrapper, plain = wrapped_and_inner(GPT)
    x = torch.randint(0, V, (2, 20))
    a, b = wrapper(x, output_hidden_states=True), plain(x, output_hidden_states=True)
    assert torch.equal(a.logits, b.logits)
    assert len(a.hidden_states) == 4 and all(torch.equal(p, q) for p, q in zip(a.hidden_states, b.hidden_states))
    assert wrapper.block_paths == ["blocks.0", "blocks.1", "blocks.2"] and wrapper.block_size == 32


def test_source_initialisation_alpha_1_plus_noise_beta_gamma_noise():
    """alpha = 1 + 0.02 z, beta = 0.02 z', gamma = 0.02 z'' (z ~ N(0, 1)), drawn right after the inner model."""
    torch.manual_seed(0)
    w = DiffWrapperConfig(inner=GPT).build(V)
    torch.manual_seed(0)
    component("model", "gpt")(**GPT).build(V)
    za, zb, zg = torch.randn(3), torch.randn(3), torch.randn(3)
    torch.testing.assert_close(w.alpha.data, 1 + 0.02 * za, rtol=0, atol=1e-7)
    torch.testing.assert_close(w.beta.data, 0.02 * zb, rtol=0, atol=1e-7)
    torch.testing.assert_close(w.gamma.data, 0.02 * zg, rtol=0, atol=1e-7)
    assert not torch.equal(w.alpha.data, torch.ones(3))
    torch.manual_seed(0)
    smol = DiffWrapperConfig(inner=GPT, init_std=0.0).build(V)  # the SmolLM notebook: exactly 1, 0, 0
    assert torch.equal(smol.alpha.data, torch.ones(3)) and not smol.beta.data.any() and not smol.gamma.data.any()


def test_weight_decay_on_every_parameter_as_the_source():
    def decayed(**kw):
        w = DiffWrapperConfig(inner=GPT, **kw).build(V)
        names = {id(p): n for n, p in w.named_parameters()}
        groups = param_groups(w, 0.01)
        assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
        return {names[id(p)] for p in groups[0]["params"]}, {n for n, _ in w.named_parameters()}

    on, every = decayed()                                  # decay "all": the source's AdamW(model.parameters())
    assert on == every and {"alpha", "beta", "gamma", "inner.ln_f.weight", "inner.wte.weight"} <= on
    on, _ = decayed(decay="mix")                           # the scalars, and the inner model as the engine decays it
    plain = component("model", "gpt")(**GPT).build(V)
    inner_on = {n for n, p in plain.named_parameters() if id(p) in {id(q) for q in param_groups(plain, 0.1)[0]["params"]}}
    assert on == {"alpha", "beta", "gamma"} | {f"inner.{n}" for n in inner_on}
    on, _ = decayed(decay="none")
    assert on == {f"inner.{n}" for n in inner_on}


def test_decoding_token_by_token_equals_the_full_forward():
    """The mix reads h_{t-1}, h_{t-2} of earlier steps: the wrapper's decode carries them in its state."""
    torch.manual_seed(0)
    w = DiffWrapperConfig(inner=GPT, init=(1.0, 0.3, -0.4), init_std=0.1).build(V).eval()
    ids = torch.randint(0, V, (2, 12))
    for prefix in (1, 2, 5):
        check_decoding(w, ids, prefix=prefix, atol=1e-5)


def test_mix_by_hand():
    h = torch.tensor([[[1.0], [2.0], [4.0], [8.0]]])  # (1, 4, 1)
    # h_{t-1} = 0, 1, 2, 4;  h_{t-2} = 0, 0, 1, 2
    torch.testing.assert_close(kinematic_mix(h, 0.0, 1.0, 0.0), torch.tensor([[[1.0], [1.0], [2.0], [4.0]]]))
    torch.testing.assert_close(kinematic_mix(h, 0.0, 0.0, 1.0), torch.tensor([[[1.0], [0.0], [1.0], [2.0]]]))
    torch.testing.assert_close(kinematic_mix(h, 2.0, 0.5, -1.0), 2 * h + 0.5 * kinematic_mix(h, 0, 1, 0)
                               - kinematic_mix(h, 0, 0, 1))


def test_mixed_model_is_causal_and_trains_its_scalars():
    wrapper, plain = wrapped_and_inner(GPT)
    with torch.no_grad():
        wrapper.alpha.copy_(torch.tensor([0.9, 1.1, 1.0]))
        wrapper.beta.copy_(torch.tensor([0.3, -0.2, 0.5]))
        wrapper.gamma.copy_(torch.tensor([0.1, 0.2, -0.3]))
    x = torch.randint(0, V, (2, 16))
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % V
    a, b = wrapper(x).logits, wrapper(y).logits
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=1e-6, rtol=0)
    assert (a[:, 9] - b[:, 9]).abs().max() > 1e-4
    assert (a - plain(x).logits).abs().max() > 1e-3  # the mix changes the model
    wrapper.train()
    wrapper(x).logits.logsumexp(-1).mean().backward()
    for p in (wrapper.alpha, wrapper.beta, wrapper.gamma):
        assert p.grad is not None and (p.grad != 0).all()


def test_conformance_kit_and_fixed_scalars():
    check_model(DiffWrapperConfig(inner=GPT))
    fixed = DiffWrapperConfig(inner=GPT, learnable=False, init=(1.0, 0.5, 0.0), init_std=0.0).build(V)
    names = {n for n, _ in fixed.named_parameters()}
    assert "alpha" not in names and torch.equal(fixed.beta, torch.full((3,), 0.5))


def test_wraps_the_hamiltonian_model():
    pytest.importorskip("kinlm_hamiltonian")
    inner = {"type": "hamiltonian", "d_model": 32, "n_layer": 2, "n_head": 2, "block_size": 32, "dropout": 0.0}
    wrapper, plain = wrapped_and_inner(inner)
    x = torch.randint(0, V, (2, 12))
    assert len(wrapper.block_paths) == 2
    assert torch.equal(wrapper(x).logits, plain(x).logits)
    with torch.no_grad():  # decoding through hamiltonian's own state, with the mix's memory beside it
        wrapper.beta.fill_(0.3)
        wrapper.gamma.fill_(-0.2)
    check_decoding(wrapper, x, prefix=3, atol=1e-4)


def test_explicit_block_paths_and_their_errors():
    w = DiffWrapperConfig(inner=GPT, blocks=["blocks"]).build(V)
    assert len(w.alpha) == 3
    with pytest.raises(ValueError, match="has no attribute 'layers'"):
        DiffWrapperConfig(inner=GPT, blocks=["layers"]).build(V)
    with pytest.raises(ValueError, match="not a ModuleList"):
        DiffWrapperConfig(inner=GPT, blocks=["ln_f"]).build(V)


def test_spec_errors_name_the_json_path(tmp_path):
    spec = {"name": "x", "data": {"type": "embedded"},
            "model": {"type": "diff_wrapper", "inner": {"type": "gpt", "n_layer": "four"}}}
    cases = [({"type": "gpt", "n_layer": "four"}, "model.inner.n_layer: input should be a valid integer"),
             ({"type": "gtp"}, "model.inner.type: unknown model type 'gtp'; known: "),
             ({"n_layer": 2}, 'model.inner: missing "type"; one of: '),
             ({"type": "diff_wrapper", "inner": GPT}, "model.inner.type: a diff_wrapper cannot hold a diff_wrapper")]
    for inner, where in cases:
        spec["model"]["inner"] = inner
        f = tmp_path / "s.json"
        f.write_text(json.dumps(spec))
        r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "validate", str(f)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and line.startswith(f"{f}: {where}") and "Traceback" not in line, line
    assert "four" in subprocess.run([sys.executable, "-m", "kinlm_core.cli", "validate", str(f), "--set",
                                     'model.inner={"type": "gpt", "n_layer": "four"}'],
                                    capture_output=True, text=True, timeout=60).stderr
