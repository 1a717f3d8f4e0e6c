import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kinlm_hamiltonian.config import HamiltonianConfig
from kinlm_hamiltonian.model import apply_rope, momentum_loop, momentum_scan

V = 100


def tiny(**kw):
    base = dict(d_model=32, n_layer=2, n_head=2, block_size=64, dropout=0.0, distance_cap=8)
    return HamiltonianConfig(**{**base, **kw})


def build(seed=0, **kw):
    torch.manual_seed(seed)
    return tiny(**kw).build(V).eval()


def test_paper_config_parameter_count():
    cfg = HamiltonianConfig()
    with torch.device("meta"):
        model = cfg.build(50257)
    assert model.padded_vocab_size == 50304 and model.block_size == 1024
    n = model.num_parameters()
    assert abs(n - 123.5e6) < 0.1e6, n
    assert 2 * model.embed.q_emb.weight.numel() == 2 * 50304 * 640  # 64.4M in the two tables
    assert model.head.weight is model.embed.q_emb.weight


def test_shapes_and_hidden_states():
    model = build()
    x = torch.randint(0, V, (3, 20))
    out = model(x, output_hidden_states=True)
    assert out.logits.shape == (3, 20, 128)  # 100 padded to 128
    assert len(out.hidden_states) == 2 + 1 and all(h.shape == (3, 20, 32) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[-1], model.ln_f(model.blocks[1](
        out.hidden_states[1], model.rope_cos[:20], model.rope_sin[:20])))
    assert model(x).hidden_states is None
    with pytest.raises(ValueError):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("scan", ["parallel", "loop"])
def test_causal(scan):
    model = build(eot_token_id=3, momentum_scan=scan, scan_chunk=8)
    x = torch.randint(0, V, (2, 40))
    x[:, ::7] = 3  # resets in play
    t = 17
    y = x.clone()
    y[:, t] = (x[:, t] + 1) % V
    a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-4


@pytest.mark.parametrize("beta", [0.9, 0.99])
def test_parallel_scan_equals_loop(beta):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2, 1024, 16, generator=g)
    r = (torch.rand(2, 1024, generator=g) < 0.02).float() * 0.5
    r[1, 500] = 1.0  # a full reset: log a = -inf must stay exact
    ref = momentum_loop(v, beta, r)
    for chunk in (64, 100):  # 100 does not divide 1024: exercises the padding
        torch.testing.assert_close(momentum_scan(v, beta, r, chunk), ref, atol=2e-6, rtol=1e-5)
    # gradients agree too
    w = torch.randn(2, 1024, 16, generator=g)
    vg = v.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((momentum_loop(vg, beta, r) * w).sum(), vg)
    (g_par,) = torch.autograd.grad((momentum_scan(vg, beta, r) * w).sum(), vg)
    torch.testing.assert_close(g_par, g_ref, atol=1e-5, rtol=1e-5)


def test_reset_at_end_of_text():
    model = build(eot_token_id=3)
    x = torch.randint(4, V, (1, 30))
    x[0, 12] = 3
    m = model.embed.momentum(x, eot_token_id=3)
    m0 = model.embed.momentum(x, eot_token_id=None)
    torch.testing.assert_close(m[:, :12], m0[:, :12], atol=0, rtol=0)
    torch.testing.assert_close(m[:, 12], 0.5 * m0[:, 12])  # multiplied by 1 - r exactly at the eot position
    # after it the recurrence continues from the damped state
    p = model.embed.p_emb(x)
    torch.testing.assert_close(m[:, 13], 0.9 * m[:, 12] + 0.1 * (p[:, 13] - p[:, 12]))
    # the model reads its eot id from the attribute (None: no resets)
    model.eot_token_id = None
    b = model(x).logits
    model.eot_token_id = 3
    assert (model(x).logits[:, 12:] - b[:, 12:]).abs().max() > 1e-5


def test_gradients_reach_every_parameter():
    model = build(eot_token_id=3).train()
    x = torch.randint(0, V, (2, 24))
    x[:, 10] = 3
    loss = F.cross_entropy(model(x).logits.flatten(0, 1), torch.randint(0, V, (48,)))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gravity_mask_matches_hand_built_reference():
    model = build()
    attn = model.blocks[0].attn
    torch.nn.init.normal_(attn.gravity.weight, std=0.5)
    B, T, H = 2, 12, 2
    u = torch.randn(B, T, 32)
    mask = attn.gravity_mask(u)
    g = F.softplus(u @ attn.gravity.weight.T + attn.gravity.bias)  # (B, T, H)
    ref = torch.empty(B, H, T, T)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                for j in range(T):
                    ref[b, h, i, j] = -math.inf if j > i else -0.1 * g[b, i, h] * min(abs(i - j), 8)
    torch.testing.assert_close(mask, ref)
    # and SDPA with that mask is the explicit softmax attention of the note
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    q, k, v = attn.c_attn(u).split(32, dim=2)
    q, k, v = (t.view(B, T, H, 16).transpose(1, 2) for t in (q, k, v))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    y = ((q @ k.transpose(-1, -2)) / 4.0 + ref).softmax(-1) @ v
    torch.testing.assert_close(attn(u, cos, sin), attn.c_proj(y.transpose(1, 2).reshape(B, T, 32)))


def test_initialisation():
    model = build(d_model=64, n_head=4)
    g = model.blocks[0].attn.gravity
    assert torch.all(g.bias == 0.5) and 0.005 < g.weight.std() < 0.015
    assert 0.015 < model.blocks[0].attn.c_attn.weight.std() < 0.025


def test_config_is_validated():
    with pytest.raises(ValueError):
        HamiltonianConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError):
        HamiltonianConfig(nonsense=1)


def test_plugin_hooks():
    from kinlm_core import GeneratorConfig, ModelConfig
    from kinlm_hamiltonian import plugin

    (model_cfg,) = plugin.kinlm_register_models()
    assert issubclass(model_cfg, ModelConfig) and model_cfg.component_name() == "hamiltonian"
    gens = plugin.kinlm_register_generators()
    assert [g.component_name() for g in gens] == ["steer", "least_action", "flow"]
    assert all(issubclass(g, GeneratorConfig) for g in gens)
    for cls in [model_cfg, *gens]:  # every field documented
        assert all(f.description for name, f in cls.model_fields.items() if name != "type"), cls


def test_plugin_and_config_import_without_torch():
    root = Path(__file__).resolve().parents[3]
    code = ("import sys, kinlm_hamiltonian.plugin, kinlm_hamiltonian.config; "
            "print('torch' in sys.modules)")
    env = {"PYTHONPATH": f"{root / 'plugins' / 'hamiltonian'}:{root}", "PATH": "/usr/bin:/bin",
           "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         env=env, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert not any(line.rstrip().endswith(" torch") for line in out.stderr.splitlines())


def test_conformance_kit():
    """The core's conformance kit: strict documented configs, torch-free hook/config modules,
    output contract, gradients and causality of the model, deterministic generators."""
    from kinlm_core.testing import check_config, check_generator, check_imports_without_torch, check_model

    from kinlm_hamiltonian.config import FlowConfig, HamiltonianConfig, LeastActionConfig, SteerConfig

    for cls in (HamiltonianConfig, SteerConfig, LeastActionConfig, FlowConfig):
        check_config(cls)
    check_imports_without_torch("kinlm_hamiltonian.plugin", "kinlm_hamiltonian.config")
    model = check_model(HamiltonianConfig(d_model=32, n_layer=2, n_head=2, block_size=32, dropout=0.0, eot_token_id=3))
    for cfg in (SteerConfig(target="a", max_new_tokens=4), LeastActionConfig(max_new_tokens=3),
                FlowConfig(max_new_tokens=3)):
        check_generator(cfg, model)
