"""The causal LM loss: the chunked float32 cross-entropy (kinlm_core.objectives.token_nll) against the
unchunked ``F.cross_entropy(logits.float())`` it replaced, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kinlm_core.objectives import _ChunkedNLL, token_nll


def reference(logits, labels):
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")


def batch(dtype, B=3, T=11, V=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 4).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :4] = -100  # padding
    labels[2, -1] = -100
    return logits, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows_per_chunk", [None, 1, 5, 33, 1000])
def test_same_gradient_bit_for_bit_and_loss_to_float_error(dtype, rows_per_chunk):
    logits, labels = batch(dtype)
    chunk = None if rows_per_chunk is None else rows_per_chunk * logits.size(-1)
    scale = 1 / 29  # a mean over the targets, as the objective takes it
    ref = reference(logits, labels)
    (g_ref,) = torch.autograd.grad(ref * scale, logits)
    new = token_nll(logits, labels, chunk)
    (g_new,) = torch.autograd.grad(new * scale, logits)
    assert new.dtype == torch.float32 and g_new.dtype == dtype
    # every row's gradient goes through the same float32 operations, then the same cast
    assert torch.equal(g_new, g_ref)
    # one chunk sums as the reference does; several sum their sums
    if rows_per_chunk is None or rows_per_chunk >= 33:
        assert new.item() == ref.item()
    else:
        assert new.item() == pytest.approx(ref.item(), rel=1e-6)


def test_hand_computed_value_and_ignored_rows_get_no_gradient():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]]], requires_grad=True)
    labels = torch.tensor([[0, 1, -100]])
    loss = token_nll(logits, labels, chunk_elements=2)  # one row a chunk
    # -log(1/2) - log(e^0 / (e^2 + e^0)) = log 2 + log(1 + e^2)
    expected = torch.log(torch.tensor(2.0)) + torch.log1p(torch.exp(torch.tensor(2.0)))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert torch.allclose(logits.grad[0, 0], torch.tensor([-0.5, 0.5]))
    assert torch.allclose(logits.grad[0, 1], p - torch.tensor([0.0, 1.0]))
    assert torch.equal(logits.grad[0, 2], torch.zeros(2))


def test_without_gradients_no_autograd_function_and_same_value():
    logits, labels = batch(torch.bfloat16)
    with torch.no_grad():
        assert token_nll(logits, labels).item() == reference(logits, labels).item()
        assert token_nll(logits, labels, 37 * 4).item() == pytest.approx(reference(logits, labels).item(), rel=1e-6)


def test_no_float32_copy_of_bf16_logits_is_saved_for_backward():
    """The unchunked path saves float32 log-probabilities (N x V x 4 bytes) for its backward; the chunked
    one saves only the bf16 logits and the labels."""
    logits, labels = batch(torch.bfloat16, B=4, T=64, V=512)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        token_nll(logits, labels, 512 * 16)
    assert sum(t.numel() * t.element_size() for t in saved if t.dtype == torch.float32) == 0
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        reference(logits, labels)
    assert sum(t.numel() * t.element_size() for t in saved if t.dtype == torch.float32) >= 4 * 64 * 512 * 4


def test_which_path_trains():
    """bf16 logits and float32 logits beyond one chunk take the chunked function; float32 logits in one
    chunk (every CPU spec: 16 x 128 x 2,048) take F.cross_entropy itself."""
    logits, labels = batch(torch.bfloat16)
    assert isinstance(token_nll(logits, labels).grad_fn, _ChunkedNLL._backward_cls)
    logits, labels = batch(torch.float32)
    assert isinstance(token_nll(logits, labels, 37 * 5).grad_fn, _ChunkedNLL._backward_cls)
    assert not isinstance(token_nll(logits, labels).grad_fn, _ChunkedNLL._backward_cls)
