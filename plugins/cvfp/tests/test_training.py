"""The two-phase curriculum: its pieces against hand computations (the wrapped shift, one chunk's loss,
the seeded noise, the source's iteration count), and its behaviour through the engine
(``kinlm_core.train`` on a shortened ``specs/cvfp_tiny.json``): only the ContextBlock trains in phase 1,
the context is carried, early stop fires where the logged rates say, the MSE target option
differs, a resumed run equals an uninterrupted one, phase 2 trains on frozen contexts and puts the
best epoch's weights back."""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from kinlm_core import load_run, load_spec, train

from kinlm_cvfp.config import CvfpConfig, TwoPhaseConfig
from kinlm_cvfp.training import (PHASE1, PHASE2, _stream_loss, chunk_loss, noise_for, parallel_iteration,
                                 sequential_contexts, sequential_iteration, shifted_incoming, streams)

SPEC = Path(__file__).resolve().parents[3] / "specs" / "cvfp_tiny.json"
# a small, fast setting of the tiny spec: bytes, d 16, K 2, 600 training and 200 validation tokens
BASE = ['tokenizer={"type": "byte"}', "model.d_model=16", "model.n_layer=2", "curriculum.train_tokens=600",
        'curriculum.validation="split"', "curriculum.validation_tokens=200", "curriculum.chunk_tokens=200",
        "curriculum.batch_tokens=100", "curriculum.max_epochs=3", "curriculum.patience=3", "curriculum.phase2_lr=0.01",
        "train.batch_size=2", "train.block_size=32", "train.checkpoint_every=1000", "train.log_every=1",
        "eval.every=1000", "eval.batches=1", "generate=[]", "analyzers=[]"]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    os.environ.setdefault("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run(rd, *sets, resume=False):
    """Train the shortened tiny spec (plus ``sets``) into rd through the engine; (result, metrics rows)."""
    result = train(load_spec(SPEC, BASE + list(sets)), rd, resume=resume, progress=False, log=lambda *a, **k: None)
    return result, [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]


def phase1_rows(rows):
    return [r for r in rows if "fixed_point/convergence_rate" in r]


def initial_model(rd):
    """The weights the engine started from: the spec's seed, then build (as the engine does)."""
    spec = load_run(rd, device="cpu").spec
    torch.manual_seed(spec.seed)
    return spec.model.build(257)


@pytest.fixture(scope="module")
def phase1_run(tmp_path_factory):
    """Phase 1 only: 4 iterations = 3 optimizer steps, early stop off; the run ends with the phase."""
    rd = tmp_path_factory.mktemp("p1") / "run"
    result, rows = run(rd, "curriculum.max_iterations=4", "curriculum.min_iterations=4", "train.max_steps=3",
                       "curriculum.dist_reg_weight=0.6")
    return rd, result, rows


# --- the pieces, by hand -------------------------------------------------------------------------


def test_schedule_counts_iterations_as_the_source():
    """max_iterations counts iteration 0 (sequential, no step): 40 iterations are 39 optimizer steps."""
    p1, p2 = TwoPhaseConfig().schedule(1000)
    assert (p1.name, p1.steps, p1.trainable, p1.optim["lr"], p1.optim["weight_decay"]) == (PHASE1, 39, ["context_block"], 2e-3, 0.0)
    assert (p2.name, p2.steps, p2.trainable, p2.optim["lr"]) == (PHASE2, None, ["token_block", "head"], 1e-3)
    assert p1.optim["betas"] == p2.optim["betas"] == (0.9, 0.999)  # torch's defaults, as the source's Adam
    cfg = TwoPhaseConfig(min_iterations=5, convergence_rate=0.95)
    assert not p1.until({"iteration": 3, "convergence_rate": 1.0}, {})  # iteration 3 + 1 = 4 < 5
    assert p1.until({"iteration": 4, "convergence_rate": 0.95}, {})    # 4 + 1 = 5: may stop
    assert not TwoPhaseConfig.schedule(cfg, 10)[0].until({"iteration": 9, "convergence_rate": 0.94}, {})
    with pytest.raises(ValueError, match="validation_tokens applies to validation \"split\" only"):
        TwoPhaseConfig(validation_tokens=100)


def test_both_phases_build_adam_with_the_sources_betas(tmp_path, monkeypatch):
    """The source builds torch.optim.Adam with its default betas (0.9, 0.999) in both phases: the
    optimizer the engine hands each phase's step function has them (and no weight decay), even where
    the spec's train.betas says otherwise (the core's default is (0.9, 0.95))."""
    import kinlm_cvfp.training as training

    seen = {}

    def recording(name, step):
        def wrapped(cfg, ctx):
            seen.setdefault(name, [(type(ctx.optimizer).__name__, g["betas"], g["weight_decay"])
                                   for g in ctx.optimizer.param_groups])
            return step(cfg, ctx)
        return wrapped

    monkeypatch.setattr(training, "phase1_step", recording(PHASE1, training.phase1_step))
    monkeypatch.setattr(training, "phase2_step", recording(PHASE2, training.phase2_step))
    run(tmp_path / "run", "curriculum.max_iterations=2", "curriculum.min_iterations=2", "train.max_steps=2",
        "train.betas=[0.8, 0.9]")
    assert set(seen) == {PHASE1, PHASE2}
    for groups in seen.values():
        assert groups and all(g == ("AdamW", (0.9, 0.999), 0.0) for g in groups)
    assert TwoPhaseConfig(betas=(0.5, 0.6)).schedule(10)[1].optim["betas"] == (0.5, 0.6)
    with pytest.raises(ValueError, match=r"curriculum.betas \[0.9, 1.0\]: each must be in \[0, 1\)"):
        TwoPhaseConfig(betas=(0.9, 1.0))


def test_shifted_incoming_wraps_the_last_context_to_token_0():
    C = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert torch.equal(shifted_incoming(C), torch.tensor([[5.0, 6.0], [1.0, 2.0], [3.0, 4.0]]))


def test_chunk_loss_by_hand():
    """C = [[1, 0], [0, 1], [2, 2]], target 0, w 0.6, 2 chunks: mse = (1 + 1 + 8) / 6; centred rows
    [0, -1], [-1, 0], [1, 1] have Frobenius norm 2, so diversity = -2 / 3; loss = (0.4 mse + 0.6 div) / 2."""
    C = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    loss, mse, div = chunk_loss(C, torch.zeros(3, 2), 0.6, 2)
    assert math.isclose(float(mse), 10 / 6, rel_tol=1e-6) and math.isclose(float(div), -2 / 3, rel_tol=1e-6)
    assert math.isclose(float(loss), (0.4 * 10 / 6 - 0.6 * 2 / 3) / 2, rel_tol=1e-6)


def test_equal_chunks_accumulate_the_whole_streams_mse_gradient():
    """With w = 0 and equal chunks, the gradients of the per-chunk losses (each / n_chunks) sum to
    the gradient of one chunk over the whole stream."""
    torch.manual_seed(0)
    m = CvfpConfig(d_model=8, n_layer=2).build(20)
    ids = torch.randint(0, 20, (12,))
    e, inc, target = m.embed(ids).detach(), torch.randn(12, 8), torch.randn(12, 8)
    grads = []
    for size in (12, 4):
        m.zero_grad()
        n = 12 // size
        for a in range(0, 12, size):
            chunk_loss(parallel_iteration(m, e[a:a + size], inc[a:a + size]), target[a:a + size], 0.0, n)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.context_block.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_noise_is_seeded_per_iteration():
    cfg = TwoPhaseConfig(noise_std=0.1)
    a, b, c = noise_for(cfg, 3, (50, 4), "cpu"), noise_for(cfg, 3, (50, 4), "cpu"), noise_for(cfg, 4, (50, 4), "cpu")
    assert torch.equal(a, b) and not torch.equal(a, c) and abs(float(a.std()) - 0.1) < 0.02
    assert noise_for(TwoPhaseConfig(noise_std=0.0), 3, (50, 4), "cpu") is None


def test_validation_is_the_tail_of_the_stream_neither_phase_trains_on():
    class Data:
        def tokens(self, split):
            return list(range(100)) if split == "train" else [7, 7, 7]

    train_ids, val = streams(TwoPhaseConfig(train_tokens=50), Data(), "cpu")
    assert train_ids.tolist() == list(range(45)) and val.tolist() == list(range(45, 50))
    train_ids, val = streams(TwoPhaseConfig(validation="split", validation_tokens=2), Data(), "cpu")
    assert train_ids.tolist() == list(range(100)) and val.tolist() == [7, 7]


def test_parallel_iteration_equals_sequential_given_the_same_incoming_contexts():
    torch.manual_seed(0)
    m = CvfpConfig(d_model=16, n_layer=2).build(31)
    e = m.embed(torch.randint(0, 31, (200,)))
    c_start, noise = torch.randn(16), 0.1 * torch.randn(200, 16)
    C_seq, incoming = sequential_iteration(m, e, c_start, noise)
    assert torch.equal(incoming[0], c_start + noise[0]) and torch.allclose(incoming[1:], C_seq[:-1].detach() + noise[1:])
    assert torch.allclose(parallel_iteration(m, e, incoming), C_seq, atol=1e-5)


def test_sequential_through_time_backpropagates_through_earlier_tokens():
    """through_time (the source's sequential baseline, BPTT): token 2's loss reaches the chunk's
    starting context and token 0's step; detached (kinlm's reference), it reaches neither. The
    forward contexts are the same either way."""
    torch.manual_seed(0)
    m = CvfpConfig(d_model=16, n_layer=2).build(31)
    e = m.embed(torch.randint(0, 31, (5,))).detach()
    grads, outs = {}, {}
    for tt in (False, True):
        c_start = torch.randn(16, generator=torch.Generator().manual_seed(1)).requires_grad_()
        C, incoming = sequential_iteration(m, e, c_start, through_time=tt)
        (C[2] * torch.arange(16.0)).sum().backward()  # weighted: a LayerNorm output's plain sum is constant
        grads[tt], outs[tt] = c_start.grad, C.detach()
        m.zero_grad()
    assert grads[False] is None or not grads[False].any()  # (stacked with the others: zeros)
    assert grads[True] is not None and float(grads[True].abs().sum()) > 0
    assert torch.equal(outs[False], outs[True])


def test_through_time_needs_the_sequential_mode():
    assert TwoPhaseConfig(mode="sequential", through_time=True).through_time
    with pytest.raises(ValueError, match='through_time .* needs curriculum.mode "sequential"'):
        TwoPhaseConfig(through_time=True)


def test_phase1_through_time_steps_differently_from_the_detached_sequential(tmp_path):
    """Through the engine: one phase-1 step of the sequential mode with and without BPTT starts from
    the same contexts (iteration 0) and takes a different gradient."""
    sets = ["curriculum.mode=sequential", "curriculum.max_iterations=2", "curriculum.min_iterations=2",
            "train.max_steps=1", "curriculum.train_tokens=120", "curriculum.chunk_tokens=60"]
    rows = {tt: phase1_rows(run(tmp_path / f"tt{tt}", *sets, f"curriculum.through_time={str(tt).lower()}")[1])
            for tt in (False, True)}
    a, b = rows[False][0], rows[True][0]
    assert a["fixed_point/initial_effective_rank"] == b["fixed_point/initial_effective_rank"]
    assert a["fixed_point/loss"] == pytest.approx(b["fixed_point/loss"], rel=1e-6)  # same forward
    assert a["fixed_point/grad_norm"] != pytest.approx(b["fixed_point/grad_norm"], rel=1e-4)


def test_one_parallel_pass_from_the_sequential_contexts_reproduces_them():
    """The note's reading: with fixed weights the sequential contexts are the parallel update's fixed point,
    so a 'convergence' check started from them measures nothing (MSE zero up to rounding)."""
    torch.manual_seed(0)
    m = CvfpConfig(d_model=16, n_layer=2).build(31)
    ids = torch.randint(0, 31, (300,))
    with torch.no_grad():
        C = sequential_contexts(m, ids)[-1]
        again = parallel_iteration(m, m.embed(ids), torch.cat([torch.zeros(1, 16), C[:-1]]))
    assert (again - C).pow(2).mean(-1).max() < 1e-10


# --- through the engine --------------------------------------------------------------------------


def test_phase1_trains_only_the_context_block_with_the_weighted_loss(phase1_run):
    rd, result, rows = phase1_run
    p1 = phase1_rows(rows)
    assert result["status"] == "finished" and [r["fixed_point/iteration"] for r in p1] == [1.0, 2.0, 3.0]
    for r in p1:  # loss = (1 - w) mse + w diversity, both means over the 3 chunks
        assert r["fixed_point/loss"] == pytest.approx(0.4 * r["fixed_point/mse"] + 0.6 * r["fixed_point/diversity"], rel=1e-5)
        assert r["fixed_point/carry_norm"] > 1.0  # the carried context is never the zero context
        assert 0.0 <= r["fixed_point/convergence_rate"] <= 1.0
    assert "fixed_point/initial_effective_rank_pct" in p1[0] and "fixed_point/initial_effective_rank_pct" not in p1[1]
    assert not any("token_prediction/loss" in r for r in rows)
    before, after = initial_model(rd).state_dict(), load_run(rd, device="cpu").model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("context_block.") for k in changed)  # embedding, embed_norm, token block, head: untouched


class Interrupted(Exception):
    pass


def test_phase1_resumes_exactly_through_the_engine(phase1_run, tmp_path):
    """A run interrupted at step 3 (after step 2's checkpoint) and resumed: the same weights and
    logged rates as 3 steps in one go."""
    full_rd, _, full_rows = phase1_run
    rd = tmp_path / "run"
    sets = ["curriculum.max_iterations=4", "curriculum.min_iterations=4", "curriculum.dist_reg_weight=0.6",
            "train.max_steps=3", "train.checkpoint_every=1"]

    def interrupt(msg, *a, **k):
        if str(msg).startswith("step 3/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        train(load_spec(SPEC, BASE + sets), rd, progress=False, log=interrupt)
    assert sorted(p.name for p in (rd / "checkpoints").glob("step_*"))[-1] == "step_0000002"
    _, rows = run(rd, *sets, resume=True)
    a, b = load_run(full_rd, device="cpu").model.state_dict(), load_run(rd, device="cpu").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["fixed_point/convergence_rate"] for r in phase1_rows(rows)][-1] == \
        [r["fixed_point/convergence_rate"] for r in phase1_rows(full_rows)][-1]


def test_early_stop_fires_where_the_logged_rates_say(tmp_path):
    """A run with early stop off logs the rates; with a target among them, phase 1 ends at the first
    step n with n + 1 >= min_iterations and rate >= target."""
    sets = ["curriculum.max_iterations=8", "curriculum.convergence_threshold=0.01", "train.max_steps=7"]
    _, rows = run(tmp_path / "all", *sets, "curriculum.min_iterations=1", "curriculum.convergence_rate=1.0")
    rates = [r["fixed_point/convergence_rate"] for r in phase1_rows(rows)]
    assert len(rates) == 7
    target = max(sorted(rates)[len(rates) // 2], 1e-6)
    for min_it in (1, 5):
        _, rows = run(tmp_path / f"min{min_it}", *sets, f"curriculum.min_iterations={min_it}",
                      f"curriculum.convergence_rate={target}")
        got = [r["fixed_point/convergence_rate"] for r in phase1_rows(rows)]
        expected = next((n for n, r in enumerate(rates, 1) if n + 1 >= min_it and r >= target), 7)
        assert got == rates[:expected]


def test_the_initial_target_differs_from_the_previous_iteration(phase1_run, tmp_path):
    _, _, base = phase1_run
    sets = ["curriculum.max_iterations=4", "curriculum.min_iterations=4", "train.max_steps=3", "curriculum.dist_reg_weight=0.6"]
    mse = {"base": [r["fixed_point/mse"] for r in phase1_rows(base)]}
    _, rows = run(tmp_path / "initial", *sets, "curriculum.target=initial")
    mse["initial"] = [r["fixed_point/mse"] for r in phase1_rows(rows)]
    assert mse["initial"][0] == pytest.approx(mse["base"][0])  # iteration 1: C_0 is the previous iteration
    assert mse["initial"][2] != pytest.approx(mse["base"][2])  # iteration 3: C_0 vs C_2


def test_phase2_trains_the_token_block_on_frozen_contexts_and_keeps_the_best_epoch(tmp_path):
    """Phase 1 (1 step), then phase 2 on 599 positions in minibatches of 100 (6 an epoch) until patience 1
    or 12 epochs. The ContextBlock ends as phase 1 left it; the final weights give the best epoch's
    validation loss (recomputed here from the validation stream), not the last one's."""
    sets = ["curriculum.max_iterations=2", "curriculum.min_iterations=2", "curriculum.max_epochs=12",
            "curriculum.patience=1", "curriculum.phase2_lr=0.03"]
    result, rows = run(tmp_path / "both", *sets, "train.max_steps=200")
    _, _ = run(tmp_path / "p1", *sets, "train.max_steps=1")
    p2 = [r for r in rows if "token_prediction/loss" in r]
    vals = [r["token_prediction/val_loss"] for r in rows if "token_prediction/val_loss" in r]
    assert result["status"] == "finished" and len(p2) == 6 * len(vals) and [r["step"] for r in p2][0] == 2
    assert len(vals) >= 2 and vals[0] < math.log(257) - 1.0  # below uniform over the 257 byte ids
    model = load_run(tmp_path / "both", device="cpu").model
    p1_model = load_run(tmp_path / "p1", device="cpu").model
    assert all(torch.equal(a, b) for a, b in zip(model.context_block.parameters(), p1_model.context_block.parameters()))
    spec = load_run(tmp_path / "both", device="cpu")
    _, val_ids = streams(spec.spec.curriculum, spec.data, "cpu")
    got = _stream_loss(model, val_ids, sequential_contexts(model, val_ids), 100, "cpu")
    best = [r["token_prediction/best_val_loss"] for r in rows if "token_prediction/best_val_loss" in r][-1]
    assert got == pytest.approx(min(vals), rel=1e-5) and best == pytest.approx(min(vals))
    if len(vals) < 12:  # stopped on patience: the last epoch was worse than the best
        assert vals[-1] > min(vals)
