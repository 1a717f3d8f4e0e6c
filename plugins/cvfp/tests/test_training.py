"""The two-phase curriculum's step functions, called with a hand-built StepContext
(kinlm_cvfp.standalone): the parallel iteration, the carried context, early stop, the note's own
reading, phase 2's frozen ContextBlock and resume-exact state."""

import copy

import numpy as np
import pytest
import torch

from kinlm_cvfp.config import CvfpConfig, TwoPhaseConfig
from kinlm_cvfp.standalone import Tokens, make_context, run_phase
from kinlm_cvfp.training import (PHASE1, PHASE2, parallel_iteration, sequential_contexts, sequential_iteration)

V = 31


def model(seed=0, d=16, K=2, init_std=0.2):
    torch.manual_seed(seed)
    return CvfpConfig(d_model=d, n_layer=K, init_std=init_std).build(V)


def data(n=600, seed=0, pattern=False):
    rng = np.random.default_rng(seed)
    if pattern:  # a learnable stream: a fixed cycle of tokens with some noise
        toks = np.tile(rng.integers(0, V, 7), n // 7 + 2)[:n + 200]
    else:
        toks = rng.integers(0, V, n + 200)
    return Tokens(toks[:n], toks[n:])


def curriculum(**kw):
    base = dict(train_tokens=None, validation_tokens=None, chunk_tokens=256, batch_tokens=64, max_epochs=3)
    return TwoPhaseConfig(**{**base, **kw})


def test_schedule_is_two_phases_with_their_own_steps():
    p1, p2 = curriculum(max_iterations=7).schedule(1000)
    assert (p1.name, p1.steps, p1.trainable, p1.optim["lr"], p1.optim["weight_decay"]) == (PHASE1, 7, ["context_block"], 2e-3, 0.0)
    assert (p2.name, p2.steps, p2.trainable, p2.optim["lr"]) == (PHASE2, None, ["token_block", "head"], 1e-3)
    assert callable(p1.step) and callable(p1.until) and callable(p2.step) and callable(p2.until)


def test_parallel_iteration_equals_sequential_given_the_same_incoming_contexts():
    m = model()
    ids = torch.tensor(data(200).tokens("train"))
    e = m.embed(ids)
    c_start = torch.randn(16)
    noise = 0.1 * torch.randn(200, 16)
    C_seq, incoming = sequential_iteration(m, e, c_start, noise)
    assert torch.equal(incoming[0], c_start + noise[0]) and torch.allclose(incoming[1:], C_seq[:-1].detach() + noise[1:])
    C_par = parallel_iteration(m, e, incoming)
    assert torch.allclose(C_par, C_seq, atol=1e-5)


def test_one_parallel_pass_from_the_sequential_contexts_reproduces_them():
    """The note's reading: with fixed weights the sequential contexts are the parallel update's fixed point,
    so a 'convergence' check started from them measures nothing (MSE zero up to rounding)."""
    m = model(init_std=0.5)
    ids = torch.tensor(data(300).tokens("train"))
    with torch.no_grad():
        C = sequential_contexts(m, ids)[-1]
        again = parallel_iteration(m, m.embed(ids), torch.cat([torch.zeros(1, 16), C[:-1]]))
    assert (again - C).pow(2).mean(-1).max() < 1e-10


def test_phase1_carries_the_context_and_never_resets_it():
    m, d = model(), data()
    p1, _ = curriculum(max_iterations=4, min_iterations=4).schedule(100)
    seen = []

    def check(i, state, metrics):
        seen.append((state["carry"].clone(), state["C_prev"].clone()))

    C0 = sequential_contexts(m, torch.tensor(d.tokens("train")))[-1]  # iteration 0, before any update
    state, hist = run_phase(p1, m, d, on_step=check)
    assert len(hist) == 4 and state["iteration"] == 4
    prev_last = [None]
    for n, (carry, C_prev) in enumerate(seen):
        assert carry.norm() > 1.0  # never the zero context
        if n > 0:
            assert torch.equal(carry, prev_last[0])  # the previous iteration's last context
        prev_last[0] = C_prev[-1]
    assert "initial_effective_rank_pct" in hist[0] and "initial_effective_rank_pct" not in hist[1]
    assert torch.allclose(seen[0][0], C0[-1])  # iteration 1 starts from C_0's last context


def test_phase1_loss_is_the_weighted_mse_plus_diversity_and_only_the_context_block_trains():
    m, d = model(), data()
    p1, _ = curriculum(max_iterations=2, min_iterations=2, dist_reg_weight=0.9).schedule(100)
    tb = copy.deepcopy(m.token_block.state_dict())
    cb = copy.deepcopy(m.context_block.state_dict())
    _, hist = run_phase(p1, m, d)
    for h in hist:
        assert h["loss"] == pytest.approx(0.1 * h["mse"] + 0.9 * h["diversity"], rel=1e-5)
        assert 0.0 <= h["convergence_rate"] <= 1.0 and 0 < h["effective_rank_pct"] <= 100
    assert all(torch.equal(v, m.token_block.state_dict()[k]) for k, v in tb.items())
    assert not all(torch.equal(v, m.context_block.state_dict()[k]) for k, v in cb.items())


def test_chunking_does_not_change_the_mse_gradient():
    """Gradients accumulated over chunks equal one pass for the MSE part (w = 0)."""
    grads = []
    for chunk in (1000, 128):
        m = model()
        p1, _ = curriculum(max_iterations=1, min_iterations=1, dist_reg_weight=0.0, chunk_tokens=chunk).schedule(10)
        run_phase(p1, m, data(), grad_clip=0.0)
        grads.append(torch.cat([p.detach().flatten() for p in m.context_block.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_early_stop_fires_at_the_threshold():
    m, d = model(init_std=0.02), data()
    # watch the rates of an uninterrupted run, then pick a target it crosses after min_iterations
    p1, _ = curriculum(max_iterations=8, min_iterations=1, convergence_rate=1.0, convergence_threshold=0.01).schedule(10)
    _, hist = run_phase(p1, copy.deepcopy(m), d)
    rates = [h["convergence_rate"] for h in hist]
    target = sorted(rates)[len(rates) // 2]
    for min_it in (1, 3):
        p1, _ = curriculum(max_iterations=8, min_iterations=min_it, convergence_rate=max(target, 1e-6),
                           convergence_threshold=0.01).schedule(10)
        state, h2 = run_phase(p1, copy.deepcopy(m), d)
        expected = next(i + 1 for i, r in enumerate(rates) if i + 1 >= min_it and r >= target)
        assert len(h2) == expected == state["iteration"]
        assert [x["convergence_rate"] for x in h2] == rates[:expected]


def test_target_initial_noise_and_sequential_mode():
    d = data(300)
    runs = {}
    for name, kw in {"prev": {}, "init": {"target": "initial"}, "noise": {"noise_std": 0.1},
                     "noise2": {"noise_std": 0.1}, "seq": {"mode": "sequential"}}.items():
        p1, _ = curriculum(max_iterations=3, min_iterations=3, **kw).schedule(10)
        state, hist = run_phase(p1, model(), d)
        runs[name] = (state, hist)
    assert "C0" in runs["init"][0] and "C0" not in runs["prev"][0]
    assert runs["init"][1][1]["mse"] != pytest.approx(runs["prev"][1][1]["mse"])  # iteration 2's target differs
    assert torch.equal(runs["noise"][0]["C_prev"], runs["noise2"][0]["C_prev"])  # seeded per iteration
    assert not torch.equal(runs["noise"][0]["C_prev"], runs["prev"][0]["C_prev"])
    assert runs["seq"][1][0]["mse"] != pytest.approx(runs["prev"][1][0]["mse"])


def test_phase1_resumes_exactly_from_its_state():
    """State + weights + optimizer after step 2, restored into fresh objects, give the same step 3."""
    d = data()
    p1, _ = curriculum(max_iterations=3, min_iterations=3, noise_std=0.1).schedule(10)
    m = model()
    opt = torch.optim.AdamW(m.context_block.parameters(), lr=2e-3, weight_decay=0.0)
    for p in m.token_block.parameters():
        p.requires_grad_(False)
    state = {}
    for i in range(2):
        p1.step(make_context(m, opt, d, state, step=i, phase_step=i))
    saved = copy.deepcopy((m.state_dict(), opt.state_dict(), state))
    a = p1.step(make_context(m, opt, d, state, step=2, phase_step=2))
    m2 = model(seed=5)
    m2.load_state_dict(saved[0])
    for p in m2.token_block.parameters():
        p.requires_grad_(False)
    opt2 = torch.optim.AdamW(m2.context_block.parameters(), lr=2e-3, weight_decay=0.0)
    opt2.load_state_dict(saved[1])
    b = p1.step(make_context(m2, opt2, d, saved[2], step=2, phase_step=2))
    assert a == b
    assert torch.equal(state["C_prev"], saved[2]["C_prev"])


def test_phase2_trains_the_token_block_on_frozen_contexts():
    m, d = model(), data(700, pattern=True)
    p1, p2 = curriculum(max_iterations=2, min_iterations=2, max_epochs=4, phase2_lr=1e-2).schedule(100)
    run_phase(p1, m, d)
    cb = copy.deepcopy(m.context_block.state_dict())
    state, hist = run_phase(p2, m, d, max_steps=500)
    assert all(torch.equal(v, m.context_block.state_dict()[k]) for k, v in cb.items())
    vals = [h["val_loss"] for h in hist if "val_loss" in h]
    assert state["done"] and len(vals) == 4 and len(hist) == 11 * 4  # 699 positions / 64 = 11 minibatches an epoch
    assert vals[-1] < np.log(V) - 1.0 and vals == sorted(vals, reverse=True)  # the cycle is learnable
    ids = torch.tensor(d.tokens("train"))
    assert state["train_contexts"].shape == (2, 700, 16)
    assert torch.allclose(state["train_contexts"][-1], sequential_contexts(m, ids)[-1], atol=1e-6)  # cached from zero


def test_phase2_stops_on_patience_with_the_best_weights():
    """Random tokens: the held-out loss gets worse once the TokenBlock memorises; patience 1 stops
    the phase the first time, and the best epoch's weights are put back."""
    m, d = model(), data(300)
    p1, p2 = curriculum(max_iterations=1, min_iterations=1, max_epochs=30, patience=1, phase2_lr=3e-2).schedule(100)
    run_phase(p1, m, d)
    state, hist = run_phase(p2, m, d, max_steps=2000)
    vals = [h["val_loss"] for h in hist if "val_loss" in h]
    assert state["done"] and 2 <= len(vals) < 30
    assert vals[-1] >= min(vals[:-1]) and vals[:-1] == sorted(vals[:-1], reverse=True)
    now = dict(m.named_parameters())
    assert all(torch.equal(now[k], v) for k, v in state["best"].items()) and any(k.startswith("token_block") for k in state["best"])
