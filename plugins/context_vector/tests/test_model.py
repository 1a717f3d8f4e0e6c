"""The context-vector LM: contract, paper sizes, causality, the decoding protocol (one step at a time
equals the full forward, the state does not grow), the update options, and padding."""

import pytest
import torch
import torch.nn.functional as F

from kinlm_core.testing import check_config, check_imports_without_torch, check_model

from kinlm_context_vector.config import ContextVectorConfig

SMALL = dict(d_embed=16, d_hidden=32, n_layer=3, d_context=8)


def small(**kw):
    return ContextVectorConfig(**{**SMALL, **kw})


def build(seed=0, vocab=50, **kw):
    torch.manual_seed(seed)
    return small(**kw).build(vocab)


@pytest.mark.parametrize("loop", ["script", "eager"])
def test_conformance(loop):
    check_config(ContextVectorConfig)
    check_imports_without_torch("kinlm_context_vector.plugin", "kinlm_context_vector.config")
    check_model(small(loop=loop))  # contract, gradients, causality, decode step by step == forward


@pytest.mark.parametrize("loop", ["script", "eager"])
def test_output_contract_and_gradients(loop):
    """Logits (B, T, V); hidden states = E[x], the L FNN layers, the context trajectory, only when
    asked; finite gradients everywhere."""
    model = build(loop=loop).train()
    assert model.block_size is None
    ids = torch.randint(0, 50, (2, 16))
    out = model(ids, output_hidden_states=True)
    assert out.logits.shape == (2, 16, 50)
    widths = [h.shape for h in out.hidden_states]
    assert widths == [(2, 16, 16)] + [(2, 16, 32)] * 3 + [(2, 16, 8)]  # E[x], L FNN layers, contexts
    assert model(ids).hidden_states is None
    F.cross_entropy(out.logits.flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad


def test_paper_parameter_counts():
    with torch.device("meta"):
        base = ContextVectorConfig().build(1000)
        adv = ContextVectorConfig(d_context=512, n_layer=12).build(1000)
    assert abs(base.num_parameters() - 2.74e6) < 0.005e6
    assert abs(adv.num_parameters() - 4.84e6) < 0.005e6


def test_init_is_normal_002_with_zero_biases():
    """Source (A1): every Linear weight and the embedding ~ N(0, 0.02), every bias 0; LayerNorm gain 1, bias 0."""
    torch.manual_seed(0)
    model = ContextVectorConfig(n_layer=2).build(1000)
    for name, w in [("embed", model.embed.weight), ("in_embed", model.in_embed.weight),
                    ("in_context", model.in_context.weight), ("layers.0", model.layers[0].weight),
                    ("gates", model.gates.weight), ("head", model.head.weight)]:
        assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3, name
    for b in (model.in_embed.bias, model.layers[0].bias, model.gates.bias, model.head.bias):
        assert b.abs().max() == 0
    assert torch.equal(model.norm.weight.data, torch.ones(256)) and torch.equal(model.norm.bias.data, torch.zeros(256))


@pytest.mark.parametrize("loop", ["script", "eager"])
def test_two_steps_by_hand(loop):
    """vocab 2, d_e 1, d_h 1, L 1, d_c 2, gated, LayerNorm, clamp 10, fixed weights:
    E = [[1], [2]]; layer 1: u = ReLU(E[x] + 0.5 c[0] - 0.5 c[1]); gates [W_c; W_f; W_i] with
    W_c = [1, -1], W_f = W_i = 0 (both gates 1/2); head [[1], [-1]] + [0, 0.5].
    token 1: u = 2, logits [2, -1.5], c_1 = LN(0.5 [2, -2]) = [1, -1] / sqrt(1 + 1e-5).
    token 0: u = 1 + c_1[0] = 1.999995, logits [u, 0.5 - u], c_2 = LN(0.5 c_1 + 0.5 [u, -u])."""
    model = ContextVectorConfig(d_embed=1, d_hidden=1, n_layer=1, d_context=2, dropout=0.0, loop=loop).build(2).eval()
    with torch.no_grad():
        model.embed.weight.copy_(torch.tensor([[1.0], [2.0]]))
        model.in_embed.weight.fill_(1.0)
        model.in_embed.bias.zero_()
        model.in_context.weight.copy_(torch.tensor([[0.5, -0.5]]))
        model.gates.weight.copy_(torch.tensor([[1.0], [-1.0], [0.0], [0.0], [0.0], [0.0]]))
        model.gates.bias.zero_()
        model.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model.head.bias.copy_(torch.tensor([0.0, 0.5]))
    out = model(torch.tensor([[1, 0]]), output_hidden_states=True)
    c1 = 1 / (1 + 1e-5) ** 0.5
    u2 = 1 + c1
    half = 0.5 * c1 + 0.5 * u2
    c2 = half / (half ** 2 + 1e-5) ** 0.5
    assert torch.allclose(out.logits[0], torch.tensor([[2.0, -1.5], [u2, 0.5 - u2]]), atol=1e-6)
    assert torch.allclose(out.hidden_states[-1][0], torch.tensor([[c1, -c1], [c2, -c2]]), atol=1e-6)


@pytest.mark.parametrize("loop", ["script", "eager"])
def test_causal(loop):
    model = build(loop=loop).eval()
    ids = torch.randint(0, 50, (2, 16))
    ids2 = ids.clone()
    ids2[:, 8] = (ids2[:, 8] + 1) % 50
    with torch.no_grad():
        a, b = model(ids).logits, model(ids2).logits
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_script_and_eager_loops_agree_in_training_mode():
    """Same seed -> same dropout masks -> same logits and same gradients from both loops."""
    ms, me = build(loop="script").train(), build(loop="eager").train()
    ids = torch.randint(0, 50, (3, 12))
    outs = []
    for m in (ms, me):
        torch.manual_seed(5)
        out = m(ids, output_hidden_states=True)
        out.logits.square().mean().backward()
        outs.append(out)
    assert torch.allclose(outs[0].logits, outs[1].logits, atol=1e-6)
    for a, b in zip(outs[0].hidden_states, outs[1].hidden_states):
        assert torch.allclose(a, b, atol=1e-6)
    for (n, p), q in zip(ms.named_parameters(), me.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


@pytest.mark.slow
def test_the_compiled_loop_equals_the_readable_loop_in_float64():
    """loop="compiled" (each token's step through torch.compile; CUDA graphs on a GPU) computes what the
    readable module loop computes: in float64 with dropout on (same seed, same masks) the logits, every
    hidden state and every gradient agree to 1e-10; so do the additive update's step-by-step decoding
    (no_grad, the state carried between calls) and its full forward."""
    ids = torch.randint(0, 50, (3, 9))
    outs = []
    for loop in ("compiled", "eager"):
        m = build(loop=loop).double().train()
        torch.manual_seed(5)
        out = m(ids, output_hidden_states=True)
        out.logits.square().mean().backward()
        outs.append((out, {n: p.grad for n, p in m.named_parameters()}))
    (oc, gc), (oe, ge) = outs
    assert (oc.logits - oe.logits).abs().max() < 1e-10
    for a, b in zip(oc.hidden_states, oe.hidden_states):
        assert (a - b).abs().max() < 1e-10
    assert gc.keys() == ge.keys() and all((gc[n] - ge[n]).abs().max() < 1e-10 for n in gc)
    mc = build(update="additive", loop="compiled").double().eval()
    me = build(update="additive", loop="eager").double().eval()
    with torch.no_grad():
        full = me(ids).logits
        logits, state = mc.decode(ids[:, :4])
        steps = [logits]
        for t in range(4, 9):
            logits, state = mc.decode(ids[:, t:t + 1], state)
            steps.append(logits)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-10
    # under autocast (TorchScript cannot run there) the compiled step runs in bf16 as the eager loop does
    mc, me = build(loop="compiled").eval(), build(loop="eager").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low, ref = mc(ids).logits, me(ids).logits
    assert low.dtype == torch.bfloat16 and (low.float() - ref.float()).abs().max() <= 0.02 * ref.abs().max()


@pytest.mark.parametrize("loop", ["script", "eager"])
def test_one_step_at_a_time_equals_the_full_forward(loop):
    model = build(loop=loop).eval()
    ids = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full = model(ids).logits
        logits, state = model.decode(ids[:, :7])  # prefill
        steps = [logits]
        for t in range(7, 20):
            logits, state = model.decode(ids[:, t:t + 1], state)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_decoding_state_does_not_grow():
    """After 1 and after 2,000 generated tokens the state is the same (B, d_c) tensor size, and the
    model holds no tensor that grew."""
    model = build().eval()
    sizes = {n: t.numel() for n, t in model.state_dict().items()}
    tok = torch.tensor([[3]])
    with torch.no_grad():
        logits, state = model.decode(tok)
        first = (tuple(state.shape), state.dtype, state.numel() * state.element_size())
        for _ in range(2000):
            tok = logits[:, -1:].argmax(-1)
            logits, state = model.decode(tok, state)
    assert (tuple(state.shape), state.dtype, state.numel() * state.element_size()) == first == ((1, 8), torch.float32, 32)
    assert logits.shape == (1, 1, 50)
    assert {n: t.numel() for n, t in model.state_dict().items()} == sizes
    assert not [k for k, v in vars(model).items() if isinstance(v, torch.Tensor)]


def test_streaming_greedy_generation_equals_batch_forward_generation():
    """Greedy tokens from the decoding protocol == greedy tokens from re-running the whole forward
    each step (what kinlm_core.sampling does for a model without decode)."""
    from types import SimpleNamespace

    from kinlm_core.sampling import generate_ids

    model = build().eval()
    prompt = torch.tensor([[1, 2, 3, 4]])
    opts = SimpleNamespace(max_new_tokens=25, temperature=0.0, top_k=None, top_p=None, seed=0)
    ref = generate_ids(model, prompt, opts, forward=lambda x: model(x).logits)
    with torch.no_grad():
        logits, state = model.decode(prompt)
        out = prompt
        for _ in range(25):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], 1)
            logits, state = model.decode(nxt, state)
    assert torch.equal(out, ref)
    assert torch.equal(generate_ids(model, prompt, opts), ref)  # the default sampler, whichever path it takes


def _trajectory(model, ids):
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    c = torch.cat([torch.zeros_like(hs[-1][:, :1]), hs[-1]], 1)  # c_0 = 0, c_1..c_T
    return hs[-2], c  # u_t, contexts


def test_plain_additive_update_is_a_running_sum():
    model = build(update="additive", layernorm=False, clamp=None).eval()  # with its positional table
    assert model.gates.out_features == 8
    u, c = _trajectory(model, torch.randint(0, 50, (2, 10)))
    assert torch.allclose(c[:, 1:] - c[:, :-1], model.gates(u), atol=1e-5)


FIRST = dict(update="additive", layernorm=False, clamp=None)  # the source's first implementation (d4beb09)


def test_additive_has_the_first_implementations_positional_table():
    """d4beb09 adds a learned nn.Embedding(max_seq_length, embed_dim) to the token embeddings (init
    N(0, 0.02) like every embedding there): the additive update has it by default, the gated one not;
    ``position_embedding`` turns it on or off explicitly. Its config (vocab 1000, embed 128, hidden 256,
    3 layers, context 64, max_seq_length 32) gives the commit's "586K params": by hand 128,000 (E) +
    4,096 (P) + 49,408 (layer 1) + 2 x 65,792 + 16,448 (W_u) + 257,000 (head) = 586,536."""
    model = build(**FIRST, max_positions=12)
    assert tuple(model.position_embedding.weight.shape) == (12, 16)
    assert build().position_embedding is None                                   # gated: none
    assert build(**FIRST, position_embedding=False).position_embedding is None
    assert build(position_embedding=True).position_embedding is not None
    torch.manual_seed(0)
    big = ContextVectorConfig(**FIRST, d_embed=128, d_hidden=256, n_layer=3, d_context=64, max_positions=32,
                              dropout=0.1).build(1000)
    assert big.num_parameters() == 586_536
    assert big.position_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert big.position_embedding.weight.mean().abs().item() < 0.002


@pytest.mark.parametrize("loop", ["script", "eager"])
def test_the_positional_table_is_added_to_the_token_embeddings(loop):
    """The FNN's token input (hidden state 0) is E[x_t] + P[t mod max_positions]; zeroing P changes the
    logits, and with P zeroed the model is the same network without the table."""
    model = build(**FIRST, max_positions=8, loop=loop, init_std=0.2).eval()  # logits of order 1, not 1e-7
    ids = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        rows = torch.arange(20) % 8
        assert torch.allclose(out.hidden_states[0], model.embed(ids) + model.position_embedding.weight[rows], atol=1e-6)
        model.position_embedding.weight.zero_()
        zeroed = model(ids).logits
    assert (zeroed - out.logits).abs().max() > 0.1 * out.logits.abs().max()
    plain = build(**FIRST, position_embedding=False, loop=loop).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("position_embedding")})
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, zeroed, atol=1e-5)


@pytest.mark.parametrize("loop", ["script", "eager"])
def test_additive_decoding_step_by_step_equals_the_full_forward_past_the_table(loop):
    """Prefill 5 ids, then one id per call, across two wraps of an 8-row table: the logits equal the
    full forward's; the state is (c, next position mod 8) and does not grow."""
    model = build(**FIRST, max_positions=8, loop=loop, init_std=0.2).eval()  # logits of order 1
    check_model(small(**FIRST, max_positions=8, loop=loop))  # the conformance kit's decode-vs-forward check too
    ids = torch.randint(0, 50, (2, 21))
    with torch.no_grad():
        full = model(ids).logits
        logits, state = model.decode(ids[:, :5])
        steps = [logits]
        for t in range(5, 21):
            assert state[1] == t % 8 and tuple(state[0].shape) == (2, 8)
            logits, state = model.decode(ids[:, t:t + 1], state)
            steps.append(logits)
        chunked = [model.decode(ids[:, :13])]
        chunked.append(model.decode(ids[:, 13:], chunked[0][1]))
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert torch.allclose(torch.cat([chunked[0][0], chunked[1][0]], 1), full, atol=1e-5)
    assert state[1] == 21 % 8 == chunked[1][1][1]


def test_normalised_update_is_layernorm_of_the_sum():
    model = build(update="additive", layernorm=True, clamp=None).eval()
    u, c = _trajectory(model, torch.randint(0, 50, (2, 10)))
    assert torch.allclose(c[:, 1:], F.layer_norm(c[:, :-1] + model.gates(u), (8,)), atol=1e-5)
    assert torch.allclose(c[:, 1:].mean(-1), torch.zeros(2, 10), atol=1e-5)


def test_gated_update_uses_forget_and_input_gates():
    model = build(update="gated", layernorm=False, clamp=None).eval()
    assert model.gates.out_features == 24
    u, c = _trajectory(model, torch.randint(0, 50, (2, 10)))
    delta, f, i = model.gates(u).split(8, -1)
    assert torch.allclose(c[:, 1:], torch.sigmoid(f) * c[:, :-1] + torch.sigmoid(i) * delta, atol=1e-5)


def test_clamp_bounds_the_context():
    """With a constant push of 0.02 per step the plain sum passes 0.05 within 30 steps; the clamp stops it there."""
    ids = torch.randint(0, 50, (2, 30))
    trajectories = []
    for clamp in (0.05, None):
        model = build(update="additive", layernorm=False, clamp=clamp).eval()
        with torch.no_grad():
            model.gates.bias.fill_(0.02)
        trajectories.append(_trajectory(model, ids)[1])
    clamped, free = trajectories
    assert clamped.abs().max().item() == pytest.approx(0.05)
    assert free.abs().max().item() > 0.3
    assert torch.equal(clamped[:, :2], free[:, :2])  # identical until the bound is reached


def test_autocast_runs_the_eager_loop_in_low_precision():
    """Under autocast (bf16 here on the CPU; the engine's bf16 on CUDA) "auto" takes the eager loop,
    whose Linears autocast; the logits stay close to fp32's."""
    model = build().eval()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        ref = model(ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model.loop_for("cpu") == "eager"
            low = model(ids).logits
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3


def test_bad_options_are_rejected_with_the_field_name():
    from pydantic import ValidationError

    for bad in ({"update": "gru"}, {"clamp": 0}, {"dropout": 1.0}, {"d_context": 0}):
        with pytest.raises(ValidationError) as e:
            ContextVectorConfig(**bad)
        assert next(iter(bad)) in str(e.value)


def test_padded_batch_gives_the_same_loss_as_unpadded():
    """Right padding (what causal_lm with examples="documents" makes, labels -100 on padding) changes
    no scored logit: the summed and the mean loss equal those of the sequences scored alone."""
    model = build().eval()
    a, b = torch.randint(1, 50, (12,)), torch.randint(1, 50, (7,))
    pad = 0
    ids = torch.full((2, 11), pad)
    labels = torch.full((2, 11), -100)
    for row, seq in enumerate((a, b)):
        ids[row, : len(seq) - 1] = seq[:-1]
        labels[row, : len(seq) - 1] = seq[1:]
    with torch.no_grad():
        padded = F.cross_entropy(model(ids).logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        alone = sum(F.cross_entropy(model(s[None, :-1]).logits[0], s[1:], reduction="sum") for s in (a, b))
    assert torch.allclose(padded, alone, atol=1e-5)
    assert torch.allclose(padded / (labels != -100).sum(), alone / (len(a) + len(b) - 2), atol=1e-6)
