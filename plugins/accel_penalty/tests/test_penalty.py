"""The acceleration penalty: zero on straight constant-speed paths, hand computations, masks,
gradients, layer selection, seq2seq stacks, and the config's contract."""

import math

import pytest
import torch

from kinlm_core import ModelOutput
from kinlm_core.testing import check_config, check_imports_without_torch

from kinlm_accel_penalty.config import AccelPenaltyConfig, DiffWrapperConfig, TrajectoryConfig
from kinlm_accel_penalty.penalty import resolve_layers


def penalty(hidden, batch=None, enc=None, **cfg):
    fn = AccelPenaltyConfig(**cfg).build()
    ids = torch.zeros(hidden[0].shape[:2], dtype=torch.long)
    batch = {"input_ids": ids, "labels": ids, **(batch or {})}
    return fn(ModelOutput(logits=None, hidden_states=tuple(hidden), encoder_hidden_states=enc), batch, 0)[
        cfg.get("name", "accel_penalty")]


def line(B=2, T=12, d=8, seed=0):
    """Integer start and velocity: h_t = h_0 + t v is exact in float32."""
    g = torch.Generator().manual_seed(seed)
    h0 = torch.randint(-5, 5, (B, 1, d), generator=g).float()
    v = torch.randint(-3, 3, (B, 1, d), generator=g).float()
    return h0 + torch.arange(T).float()[None, :, None] * v


def test_conformance():
    check_config(AccelPenaltyConfig)
    check_config(TrajectoryConfig)
    check_config(DiffWrapperConfig, inner={"type": "gpt", "n_layer": 2, "d_model": 32, "n_head": 2})
    check_imports_without_torch("kinlm_accel_penalty.plugin", "kinlm_accel_penalty.config")


@pytest.mark.parametrize("mode", ["first_middle_last", "all", "weighted", "last"])
@pytest.mark.parametrize("mask", ["padding_and_documents", "none"])
def test_zero_on_straight_constant_speed_lines(mode, mask):
    hs = [line(seed=s) for s in range(7)]
    assert penalty(hs, layers=mode, mask=mask).item() == 0.0
    bent = [h.clone() for h in hs]
    bent[-1][:, 5] += 1.0  # one kink in the last layer (every mode includes it)
    assert penalty(bent, layers=mode, mask=mask).item() > 0


def test_hand_computation():
    h = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 1.0], [3.0, 3.0]]])  # (1, 4, 2)
    # a_2 = h_2 - 2 h_1 + h_0 = (1, 1) -> 2;  a_3 = h_3 - 2 h_2 + h_1 = (-2, 1) -> 5
    hs = [torch.zeros_like(h), h]
    assert penalty(hs, layers="last").item() == pytest.approx(3.5)
    assert penalty(hs, layers="last", norm="l2").item() == pytest.approx((math.sqrt(2) + math.sqrt(5)) / 2)
    assert penalty(hs, layers="last", normalize="dim").item() == pytest.approx(1.75)
    mean_sq = (0 + 1 + 10 + 18) / 4  # mean ||h_t||^2 over the four (all valid) positions
    assert penalty(hs, layers="last", normalize="scale").item() == pytest.approx(3.5 / mean_sq)
    # the source's formula, verbatim
    e_t, e_t1, e_t2 = h[:, :-2, :], h[:, 1:-1, :], h[:, 2:, :]
    src = torch.mean(torch.norm(e_t2 - 2 * e_t1 + e_t, p=2, dim=2) ** 2)
    assert penalty(hs, layers="last", mask="none").item() == pytest.approx(src.item())


def test_short_sequences_give_zero_with_gradient():
    h = torch.randn(2, 2, 4, requires_grad=True)
    p = penalty([h, h * 2], layers="all")
    assert p.item() == 0.0
    p.backward()
    assert h.grad is not None


def test_padding_does_not_contribute():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 10, 6, generator=g)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    ref0 = penalty([h[:1], h[:1]], layers="last")
    ref1 = penalty([h[1:, :6], h[1:, :6]], layers="last")
    expected = (ref0 * 8 + ref1 * 4) / 12  # 8 and 4 valid second differences
    junk = h.clone()
    junk[1, 6:] = 1e3 * torch.randn(4, 6, generator=g)
    for hh in (h, junk):
        got = penalty([hh, hh], {"attention_mask": mask}, layers="last")
        torch.testing.assert_close(got, expected)
    assert penalty([junk, junk], {"attention_mask": mask}, layers="last", mask="none") > 100 * expected


def test_document_boundaries_do_not_contribute():
    a, b = line(B=1, T=7, seed=3), line(B=1, T=5, seed=4)   # two straight documents, different lines
    h = torch.cat([a, b], dim=1)                            # (1, 12, d): packed into one row
    docs = torch.tensor([[0] * 7 + [1] * 5])
    assert penalty([h, h], {"document_ids": docs}, layers="last").item() == 0.0
    assert penalty([h, h], {"document_ids": docs}, layers="last", mask="padding").item() > 0
    assert penalty([h, h], {"document_ids": docs}, layers="last", mask="none").item() > 0


def test_gradients_reach_hidden_states_and_skip_masked_positions():
    h = torch.randn(2, 9, 5, requires_grad=True)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 7:] = 0
    docs = torch.tensor([[0] * 9, [0] * 4 + [1] * 5])
    penalty([h.detach(), h], {"attention_mask": mask, "document_ids": docs}, layers="last").backward()
    g = h.grad.norm(dim=-1)
    assert (g[0, :7] > 0).all() and (g[0, 7:] == 0).all()  # padding gets no gradient
    assert (g[1] > 0).all()  # every position is in some valid triple of its document
    # the l2 norm has a zero gradient (not NaN) where a_t = 0
    s = line(B=1, T=6).requires_grad_(True)
    penalty([s, s], layers="last", norm="l2").backward()
    assert torch.isfinite(s.grad).all() and (s.grad == 0).all()


def paths_with_known_penalties(n_layers, B=2, T=9, d=3):
    """Layer l: h_t = t^2/2 sqrt(l) e_1, so a_t = sqrt(l) e_1 and P_l = l (embeddings: l = 0)."""
    t = torch.arange(T).float()
    hs = []
    for l in range(n_layers + 1):
        h = torch.zeros(B, T, d)
        h[..., 0] = 0.5 * t ** 2 * math.sqrt(l)
        hs.append(h)
    return hs


@pytest.mark.parametrize("L, expected", [
    (1, {"first_middle_last": [1], "all": [1], "last": [1]}),
    (2, {"first_middle_last": [1, 2], "all": [1, 2], "last": [2]}),
    (6, {"first_middle_last": [1, 4, 6], "all": [1, 2, 3, 4, 5, 6], "last": [6]}),
])
def test_layer_selection(L, expected):
    for mode, idx in expected.items():
        assert resolve_layers(mode, L + 1) == idx
        assert penalty(paths_with_known_penalties(L), layers=mode).item() == pytest.approx(
            sum(idx) if mode != "all" else sum(idx) / len(idx), rel=1e-5)
    assert resolve_layers([0, -1, L], L + 1) == [0, L]  # -1 and L are one layer, counted once


def test_weighted_uses_the_source_weights_and_falls_back_to_equal():
    w = [1.5, 1.3, 1.1, 1.0, 0.8, 0.6]
    hs = paths_with_known_penalties(6)
    expected = sum(wi * (i + 1) for i, wi in enumerate(w)) / sum(w)
    assert penalty(hs, layers="weighted").item() == pytest.approx(expected, rel=1e-5)
    assert penalty(paths_with_known_penalties(4), layers="weighted").item() == pytest.approx(2.5, rel=1e-5)
    assert penalty(hs, layers="weighted", reduce="sum").item() == pytest.approx(expected * sum(w), rel=1e-5)


def test_seq2seq_stacks_are_averaged_then_added():
    enc = paths_with_known_penalties(2)                      # P = 1, 2
    dec = [10 * h for h in paths_with_known_penalties(2)]    # P = 100, 200
    got = penalty(dec, {"decoder_input_ids": torch.zeros(2, 9, dtype=torch.long)}, enc=tuple(enc))
    assert got.item() == pytest.approx(1.5 + 150.0, rel=1e-5)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="index 9 is out of range for a model with 2 layers"):
        penalty(paths_with_known_penalties(2), layers=[9])
    with pytest.raises(ValueError, match="at least one layer"):
        AccelPenaltyConfig(layers=[])
    with pytest.raises(ValueError, match="returns hidden states"):
        AccelPenaltyConfig().build()(ModelOutput(logits=None), {"input_ids": torch.zeros(1, 4)}, 0)
    with pytest.raises(ValueError, match="cannot be aligned"):
        penalty([torch.zeros(1, 5, 2)] * 2, {"attention_mask": torch.ones(1, 4), "input_ids": torch.zeros(1, 4)})
