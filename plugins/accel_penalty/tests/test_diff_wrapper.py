"""DiffWrapper: identity at (1, 0, 0), the mix by hand, causality, gradients, finding blocks in
different models, and spec errors that name the JSON path."""

import json
import subprocess
import sys

import pytest
import torch

from kinlm_core import component
from kinlm_core.testing import check_model

from kinlm_accel_penalty.config import DiffWrapperConfig
from kinlm_accel_penalty.diff_wrapper import kinematic_mix

V = 97
GPT = {"type": "gpt", "n_layer": 3, "n_head": 2, "d_model": 32, "block_size": 32}


def wrapped_and_inner(inner: dict, **kw):
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
    fixed = DiffWrapperConfig(inner=GPT, learnable=False, init=(1.0, 0.5, 0.0)).build(V)
    names = {n for n, _ in fixed.named_parameters()}
    assert "alpha" not in names and torch.equal(fixed.beta, torch.full((3,), 0.5))


def test_wraps_the_hamiltonian_model():
    pytest.importorskip("kinlm_hamiltonian")
    inner = {"type": "hamiltonian", "d_model": 32, "n_layer": 2, "n_head": 2, "block_size": 32, "dropout": 0.0}
    wrapper, plain = wrapped_and_inner(inner)
    x = torch.randint(0, V, (2, 12))
    assert len(wrapper.block_paths) == 2
    assert torch.equal(wrapper(x).logits, plain(x).logits)


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
    cases = [({"type": "gpt", "n_layer": "four"}, "model.inner.n_layer"),
             ({"type": "gtp"}, "model.inner"),
             ({"n_layer": 2}, "model.inner")]
    for inner, where in cases:
        spec["model"]["inner"] = inner
        f = tmp_path / "s.json"
        f.write_text(json.dumps(spec))
        r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "validate", str(f)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and f"{where}:" in line and "Traceback" not in line, line
    assert "four" in subprocess.run([sys.executable, "-m", "kinlm_core.cli", "validate", str(f), "--set",
                                     'model.inner={"type": "gpt", "n_layer": "four"}'],
                                    capture_output=True, text=True, timeout=60).stderr
