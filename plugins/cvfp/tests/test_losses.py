"""Effective rank on matrices whose answer is known; the diversity loss and regularizer."""

import math

import torch

from kinlm_core import ModelOutput, component

from kinlm_cvfp.config import DiversityConfig
from kinlm_cvfp.losses import convergence_rate, diversity, effective_rank


def test_effective_rank_of_known_matrices():
    assert math.isclose(effective_rank(torch.eye(16)), 16, rel_tol=1e-8)
    assert math.isclose(effective_rank(5 * torch.eye(16)), 16, rel_tol=1e-8)  # scale-free
    u, v = torch.randn(40, 1, dtype=torch.float64), torch.randn(1, 12, dtype=torch.float64)
    assert math.isclose(effective_rank(u @ v), 1, rel_tol=1e-6)  # rank 1
    q, _ = torch.linalg.qr(torch.randn(24, 24, dtype=torch.float64))
    assert math.isclose(effective_rank(q), 24, rel_tol=1e-8)  # orthogonal: all singular values 1
    # two equal singular values and nothing else: ER = 2; unequal (3:1): exp(-sum p log(p + 1e-10)), the source's guard
    assert math.isclose(effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0, 0]))), 2, rel_tol=1e-8)
    h = -(0.75 * math.log(0.75 + 1e-10) + 0.25 * math.log(0.25 + 1e-10))
    assert math.isclose(effective_rank(torch.diag(torch.tensor([3.0, 1.0, 0]))), math.exp(h), rel_tol=1e-12)
    assert effective_rank(torch.zeros(4, 3)) == 0.0


def test_diversity_is_the_frobenius_norm_of_the_centred_matrix_over_n():
    """C = [[1, 0], [0, 1], [2, 2]]: mean [1, 1], centred rows [0, -1], [-1, 0], [1, 1]; Frobenius
    norm sqrt(1 + 1 + 2) = 2, so diversity = -2 / 3 (the mean of the row distances would be
    -(1 + 1 + sqrt 2) / 3)."""
    C = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    assert math.isclose(float(diversity(C)), -2 / 3, rel_tol=1e-7)
    C4 = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, -3.0]])  # mean 0: sqrt(1 + 1 + 9 + 9) / 4
    assert math.isclose(float(diversity(C4)), -math.sqrt(20) / 4, rel_tol=1e-7)
    assert float(diversity(torch.ones(5, 3))) == 0.0
    # a masked row counts neither in the mean, the norm nor N; a (B, T, d) batch is its rows
    padded = torch.cat([C, torch.full((1, 2), 100.0)])[None]  # (1, 4, 2)
    assert math.isclose(float(diversity(padded, torch.tensor([[1, 1, 1, 0]]))), -2 / 3, rel_tol=1e-7)
    C.requires_grad_(True)
    diversity(C).backward()  # d/dC of -||X||_F / N with X = C - mean: -X / (N ||X||_F)
    X = torch.tensor([[0.0, -1.0], [-1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(C.grad, -X / (3 * 2))


def test_convergence_rate():
    old = torch.zeros(4, 2)
    new = torch.tensor([[0.1, 0.1], [0.0, 0.0], [1.0, 1.0], [0.2, 0.0]])  # per-token changes 0.01, 0, 1, 0.02
    assert convergence_rate(new, old, 0.03) == 0.75 and convergence_rate(new, old, 0.015) == 0.5


def test_diversity_regularizer_ignores_padding():
    fn = DiversityConfig().build()
    h = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = fn(ModelOutput(logits=None, hidden_states=(h * 0, h)), {"attention_mask": mask}, 0)["diversity"]
    real = torch.cat([h[0, :3], h[1]])
    assert torch.allclose(got, diversity(real))
    h2 = h.clone()
    h2[0, 3:] = 100.0  # padding positions change nothing
    assert torch.allclose(fn(ModelOutput(logits=None, hidden_states=(h2,)), {"attention_mask": mask}, 0)["diversity"], got)
    assert torch.allclose(fn(ModelOutput(logits=None, hidden_states=(h,)), {}, 0)["diversity"], diversity(h))


def test_diversity_regularizer_on_any_model():
    """On the core's gpt: its gradient spreads the last hidden states apart."""
    torch.manual_seed(0)
    gpt = component("model", "gpt")(n_layer=1, n_head=2, d_model=16, block_size=16, dropout=0.0).build(50)
    fn = DiversityConfig(layer=-1).build()
    ids = torch.randint(0, 50, (2, 16))
    opt = torch.optim.Adam(gpt.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        loss = fn(gpt(ids, output_hidden_states=True), {"input_ids": ids}, 0)["diversity"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first - 0.1  # -0.68 -> -0.84 (the bound sqrt(d) sqrt(N) / N = 0.71 at init norms)
    try:
        fn(gpt(ids), {}, 0)
    except ValueError as e:
        assert "needs a model that returns hidden states" in str(e)
    else:
        raise AssertionError("no error without hidden states")
