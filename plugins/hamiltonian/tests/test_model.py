import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kinlm_hamiltonian.config import HamiltonianConfig
from kinlm_core.nn import apply_rope
from kinlm_hamiltonian.model import momentum_loop, momentum_scan, momentum_step

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
    torch.testing.assert_close(out.hidden_states[-1], model.ln_f(model.blocks[1](out.hidden_states[1], model.rope)))
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


def momentum_of(model, x, eot):
    """m (B, T, C): the block input minus q."""
    return model.embed(x, eot) - model.embed.q_emb(x)


def test_reset_at_end_of_text():
    model = build(eot_token_id=3)
    x = torch.randint(4, V, (1, 30))
    x[0, 12] = 3
    m = momentum_of(model, x, 3)
    m0 = momentum_of(model, x, None)
    torch.testing.assert_close(m[:, :12], m0[:, :12], atol=0, rtol=0)
    torch.testing.assert_close(m[:, 12], 0.5 * m0[:, 12])  # multiplied by 1 - r exactly at the eot position
    # after it the recurrence continues from the damped state
    p = model.embed.p_emb(x)
    torch.testing.assert_close(m[:, 13], 0.9 * m[:, 12] + 0.1 * (p[:, 13] - p[:, 12]))
    # the model reads its eot id from the attribute (None: no resets); resets=False switches them off per call
    model.eot_token_id = None
    b = model(x).logits
    model.eot_token_id = 3
    assert (model(x).logits[:, 12:] - b[:, 12:]).abs().max() > 1e-5
    torch.testing.assert_close(model(x, resets=False).logits, b, atol=0, rtol=0)
    logits, _ = model.decode(x, resets=False)
    torch.testing.assert_close(logits, b, atol=1e-5, rtol=0)


def test_momentum_step_by_hand():
    """m_t = (beta m_{t-1} + (1 - beta) v_t)(1 - r_t) on 2 x 2 numbers."""
    m_prev = torch.tensor([[1.0, 2.0], [0.0, -4.0]])
    v = torch.tensor([[3.0, -1.0], [10.0, 0.0]])
    r = torch.tensor([0.5, 0.0])
    m = momentum_step(m_prev, v, r, 0.9)
    torch.testing.assert_close(m, torch.tensor([[(0.9 + 0.3) * 0.5, (1.8 - 0.1) * 0.5], [1.0, -3.6]]))


def test_embedding_velocity_and_momentum_by_hand():
    """p rows 1, 2 / 4, 0 / 0, 8 for tokens 1, 2, 3; q = 0: v = (0, p_2 - p_1, p_3 - p_2), then the EMA."""
    model = build(d_model=8, n_head=4, eot_token_id=None)
    with torch.no_grad():
        model.embed.q_emb.weight.zero_()
        model.embed.p_emb.weight.zero_()
        model.embed.p_emb.weight[1:4, :2] = torch.tensor([[1.0, 2.0], [4.0, 0.0], [0.0, 8.0]])
    h0 = model.embed(torch.tensor([[1, 2, 3]]))
    assert torch.all(h0[..., 2:] == 0)
    h0 = h0[..., :2]
    m1 = [0.1 * 3.0, 0.1 * -2.0]
    m2 = [0.9 * m1[0] + 0.1 * -4.0, 0.9 * m1[1] + 0.1 * 8.0]
    torch.testing.assert_close(h0, torch.tensor([[[0.0, 0.0], m1, m2]]))
    # resets: r = 0.5 at the end-of-text id (here 2), after the EMA step
    h0 = model.embed(torch.tensor([[1, 2, 3]]), eot_token_id=2)[..., :2]
    m1 = [0.5 * 0.3, 0.5 * -0.2]
    torch.testing.assert_close(h0[0, 1], torch.tensor(m1))
    torch.testing.assert_close(h0[0, 2], torch.tensor([0.9 * m1[0] - 0.4, 0.9 * m1[1] + 0.8]))


def test_reflex_is_a_causal_depthwise_conv_on_the_raw_residual_by_hand():
    """With attention and MLP outputs zeroed, a block is h + SiLU(w0 h_{t-2} + w1 h_{t-1} + w2 h_t + b)."""
    model = build(d_model=8, n_head=4)
    blk = model.blocks[0]
    with torch.no_grad():
        blk.attn.c_proj.weight.zero_()
        blk.mlp[2].weight.zero_()
        blk.reflex.weight.zero_()
        blk.reflex.bias.zero_()
        blk.reflex.weight[:2] = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, 0.0, -1.0]]])  # (C, 1, k)
        blk.reflex.bias[0] = 0.5
    h = torch.randn(1, 3, 8)
    h[0, :, :2] = torch.tensor([[1.0, 1.0], [2.0, -1.0], [3.0, 2.0]])
    pre = torch.zeros(3, 8)
    pre[:, :2] = torch.tensor([[3 * 1 + 0.5, -1.0], [2 * 1 + 3 * 2 + 0.5, 1.0], [1 * 1 + 2 * 2 + 3 * 3 + 0.5, -2.0]])
    torch.testing.assert_close(blk(h, model.rope), h + F.silu(pre)[None])


def test_reflex_false_is_the_block_without_the_conv_branch():
    """The ablation (reflex=false): h + Attn(LN1(h)), then + MLP(LN2(h)); the same block as the source's
    with its conv output forced to zero, k*C + C fewer parameters a block; decoding still matches forward."""
    C, k = 8, 3
    full, ablated = build(d_model=C, n_head=4), build(d_model=C, n_head=4, reflex=False)
    assert full.num_parameters() - ablated.num_parameters() == 2 * (k * C + C)
    ablated.load_state_dict({n: t for n, t in full.state_dict().items() if "reflex" not in n})
    with torch.no_grad():
        full.blocks[0].reflex.weight.zero_()
        full.blocks[0].reflex.bias.zero_()
    h = torch.randn(2, 5, C)
    torch.testing.assert_close(ablated.blocks[0](h, ablated.rope), full.blocks[0](h, full.rope))
    x = torch.randint(0, V, (2, 9))
    want = ablated(x).logits
    logits, state = ablated.decode(x[:, :6])
    step, _ = ablated.decode(x[:, 6:], state)
    torch.testing.assert_close(torch.cat([logits, step], 1), want, atol=1e-5, rtol=1e-4)


def test_rope_rotates_half_pairs_by_position_over_base_powers():
    """The core's rotary embedding as the source's (rotate-half, base 10000): at position t the pair
    (x_i, x_{i+D/2}) turns by t / 10000^(2i/D). D = 4: angles t and t / 100."""
    model = build(d_model=8, n_head=2)  # head dim 4
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4).expand(1, 1, 3, 4)
    q, _ = model.rope(x, x)
    for t in range(3):
        a, b = t, t / 100
        want = [1 * math.cos(a) - 3 * math.sin(a), 2 * math.cos(b) - 4 * math.sin(b),
                3 * math.cos(a) + 1 * math.sin(a), 4 * math.cos(b) + 2 * math.sin(b)]
        torch.testing.assert_close(q[0, 0, t], torch.tensor(want))


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
    cos, sin = model.rope.cos[:T], model.rope.sin[:T]
    q, k, v = attn.c_attn(u).split(32, dim=2)
    q, k, v = (t.view(B, T, H, 16).transpose(1, 2) for t in (q, k, v))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    y = ((q @ k.transpose(-1, -2)) / 4.0 + ref).softmax(-1) @ v
    torch.testing.assert_close(attn(u, model.rope), attn.c_proj(y.transpose(1, 2).reshape(B, T, 32)))


def test_initialisation_is_the_sources_pytorch_defaults():
    """E_q (tied to the head) U(+-1/sqrt(C)): std 1/sqrt(3C); E_p N(0, 1); Linears U(+-1/sqrt(fan_in));
    the depthwise conv U(+-1/sqrt(k)); LayerNorm 1 / 0; gravity W_g N(0, 0.01), b_g 0.5."""
    torch.manual_seed(0)
    model = HamiltonianConfig(d_model=64, n_layer=1, n_head=4, block_size=16).build(1000)  # 1024 x 64 tables
    E_q, E_p = model.embed.q_emb.weight, model.embed.p_emb.weight
    assert E_q is model.head.weight

    def uniform(w, fan_in):
        bound = 1 / math.sqrt(fan_in)
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        rel = 2.5 / math.sqrt(w.numel())  # about 5 standard errors of a uniform sample's std
        assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < rel

    uniform(E_q, 64)                                    # std 0.0722
    assert abs(E_p.std().item() - 1.0) < 0.02 and abs(E_p.mean().item()) < 0.02
    blk = model.blocks[0]
    uniform(blk.attn.c_attn.weight, 64)
    uniform(blk.mlp[0].weight, 64)
    uniform(blk.mlp[2].weight, 256)
    uniform(blk.reflex.weight, 3)
    assert blk.reflex.bias.abs().max() <= 1 / math.sqrt(3)
    assert torch.all(blk.ln1.weight == 1) and torch.all(blk.ln1.bias == 0)
    g = blk.attn.gravity
    assert torch.all(g.bias == 0.5) and abs(g.weight.std().item() - 0.01) < 0.002


def test_momentum_outweighs_q_at_init_as_in_the_source():
    """d 640: std(q) = 1/sqrt(1920) = 0.0228; std(m) -> 0.1 sqrt(1 + 0.01/0.19) = 0.1026 once the EMA has
    filled: about 4.5x. The "gpt2" option gives std 0.02 tables, where m is about 0.1x q."""
    torch.manual_seed(0)
    x = torch.randint(0, 64, (4, 128))
    for init, ratio in (("source", 4.5), ("gpt2", 0.1026)):
        model = HamiltonianConfig(d_model=640, n_layer=1, n_head=10, block_size=128, init=init).build(64)
        m = momentum_of(model, x, None)[:, 64:]
        q = model.embed.q_emb(x)
        assert abs((m.std() / q.std()).item() / ratio - 1) < 0.08, (init, (m.std() / q.std()).item())
    assert abs(model.embed.p_emb.weight.std().item() - 0.02) < 0.001  # gpt2: N(0, 0.02)
    assert abs(model.blocks[0].attn.c_attn.weight.std().item() - 0.02) < 0.001


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


def test_weight_decay_reaches_every_parameter_as_the_source_unless_matrices():
    """The source's AdamW(model.parameters()) decays both tables, norms and biases; decay="matrices"
    is kinlm's rule (no decay on norms, biases, embeddings)."""
    from kinlm_core.engine.optim import param_groups

    model = build()
    n = model.num_parameters()
    decay, no_decay = param_groups(model, 0.01)
    assert sum(p.numel() for p in decay["params"]) == n and not no_decay["params"]
    m2 = build(decay="matrices")
    decay, no_decay = param_groups(m2, 0.01)
    kept = {id(p) for p in no_decay["params"]}
    assert {id(m2.embed.q_emb.weight), id(m2.embed.p_emb.weight), id(m2.ln_f.weight),
            id(m2.blocks[0].attn.gravity.bias)} <= kept
    assert id(m2.blocks[0].attn.c_attn.weight) not in kept


# --- FlexAttention path (attention="flex") against the reference mask path ---------------------


def _with_cpu_flex_backward(monkeypatch, model):
    """Let FlexAttention's eager (dense, differentiable) reference run backward on CPU, which torch 2.13
    refuses only by a device check: that is how the flex score_mod and block mask are checked with
    gradients here; on CUDA the fused kernel runs (tools/gpu_check.py compares it)."""
    import torch.nn.attention.flex_attention as fa

    monkeypatch.setattr(fa, "_validate_device", lambda q, k, v: None)
    for blk in model.blocks:
        blk.attn._allow_cpu_flex_grad = True


def test_flex_equals_reference_logits_and_every_gradient_in_float64(monkeypatch):
    pytest.importorskip("torch.nn.attention.flex_attention")
    ref = build(seed=3, eot_token_id=3, distance_cap=5, attention="reference").double().train()
    flex = build(seed=3, eot_token_id=3, distance_cap=5, attention="flex").double().train()
    flex.load_state_dict(ref.state_dict())
    _with_cpu_flex_backward(monkeypatch, flex)
    x = torch.randint(0, V, (2, 37), generator=torch.Generator().manual_seed(0))  # 37: no block multiple
    x[:, ::9] = 3
    w = torch.randn(2, 37, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = {}
    for name, m in (("ref", ref), ("flex", flex)):
        logits = m(x).logits
        (logits * w).sum().backward()
        out[name] = (logits.detach(), {n: p.grad for n, p in m.named_parameters()})
    torch.testing.assert_close(out["flex"][0], out["ref"][0], atol=1e-12, rtol=1e-12)
    assert out["ref"][1].keys() == out["flex"][1].keys()
    for n, g in out["ref"][1].items():
        assert g is not None and g.abs().sum() > 0, n
        torch.testing.assert_close(out["flex"][1][n], g, atol=1e-11, rtol=1e-10, msg=n)
    assert out["flex"][1]["blocks.0.attn.gravity.weight"].abs().max() > 1e-6  # the penalty's own gradient


def test_flex_forward_without_grad_runs_on_cpu_and_matches():
    pytest.importorskip("torch.nn.attention.flex_attention")
    ref, flex = build(seed=4, attention="reference"), build(seed=4, attention="flex")
    x = torch.randint(0, V, (3, 64))
    with torch.no_grad():
        torch.testing.assert_close(flex(x).logits, ref(x).logits, atol=1e-5, rtol=1e-5)


def test_flex_score_mod_is_the_gravity_penalty_by_hand():
    """One head, three tokens, q = k = 0: every score is 0, so the weights are softmax of the penalty alone."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    attn = tiny(n_head=1, d_model=8, distance_cap=1, attention="flex").build(V).blocks[0].attn
    attn.scale = 1.0
    u = torch.zeros(1, 3, 8)
    with torch.no_grad():
        attn.gravity.weight.zero_()
        attn.gravity.bias.fill_(math.log(math.e - 1))                     # softplus -> g = 1
        q = k = torch.zeros(1, 1, 3, 8)
        v = torch.eye(3, 8)[None, None]                                   # value j = e_j: output = weights
        y = attn.flex_attend(q, k, v, u)[0, 0, :, :3]
    e = math.exp(-1)  # distance 1, capped at 1 also for distance 2
    want = torch.tensor([[1, 0, 0], [e / (1 + e), 1 / (1 + e), 0], [e / (1 + 2 * e), e / (1 + 2 * e), 1 / (1 + 2 * e)]])
    torch.testing.assert_close(y, want.float(), atol=1e-6, rtol=1e-6)


def test_attention_auto_picks_reference_on_cpu_and_flex_refuses_cpu_training():
    model = build(attention="auto").train()
    q = torch.zeros(1, 2, 4, 16)
    assert not model.blocks[0].attn.use_flex(q)
    flex = build(attention="flex").train()
    assert flex.blocks[0].attn.use_flex(q)
    flex.blocks[0].attn.dropout = 0.1
    assert not flex.blocks[0].attn.use_flex(q)                            # attention dropout: the reference
    with pytest.raises(RuntimeError, match="cannot train on CPU"):
        build(attention="flex").train()(torch.randint(0, V, (1, 8)))
    with pytest.raises(ValueError, match="attention"):
        tiny(attention="fast")
