"""Effective rank on matrices whose answer is known; the diversity loss and regularizer."""

import math

import torch

from kinlm_core import ModelOutput, component

from kinlm_cvfp.config import DiversityConfig
from kinlm_cvfp.losses import convergence_rate, diversity, effective_rank


def test_effective_rank_of_known_matrices():
    assert math.isclose(effective_rank(torch.eye(16)), 16, rel_tol=1e-9)
    assert math.isclose(effective_rank(5 * torch.eye(16)), 16, rel_tol=1e-9)  # scale-free
    u, v = torch.randn(40, 1, dtype=torch.float64), torch.randn(1, 12, dtype=torch.float64)
    assert math.isclose(effective_rank(u @ v), 1, rel_tol=1e-6)  # rank 1
    q, _ = torch.linalg.qr(torch.randn(24, 24, dtype=torch.float64))
    assert math.isclose(effective_rank(q), 24, rel_tol=1e-9)  # orthogonal: all singular values 1
    # two equal singular values and nothing else: ER = 2; unequal (3:1): exp(H(0.75, 0.25))
    assert math.isclose(effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0, 0]))), 2, rel_tol=1e-9)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(effective_rank(torch.diag(torch.tensor([3.0, 1.0, 0]))), math.exp(h), rel_tol=1e-9)


def test_diversity_and_convergence_rate():
    C = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    assert math.isclose(float(diversity(C)), -(1 + 1 + 3 + 3) / 4)
    assert float(diversity(torch.ones(5, 3))) == 0.0
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
    assert float(loss.detach()) < first - 0.3
    try:
        fn(gpt(ids), {}, 0)
    except ValueError as e:
        assert "needs a model that returns hidden states" in str(e)
    else:
        raise AssertionError("no error without hidden states")
