"""kinlm_core.nn.CompiledStep: one time step of a recurrence compiled by torch.compile (the GPU's
CUDA-graph path for per-token loops; on the CPU inductor's default mode, which these tests run)."""

import pytest
import torch

from kinlm_core.nn import CompiledStep


def rnn_step(x_t, h, ws: list, scale: float):
    """h' = tanh(h W_0 + x_t) * scale, then tanh(h' W_1): two layers, their outputs in a list."""
    outs = []
    for k, w in enumerate(ws):
        h = torch.tanh(h @ w + (x_t if k == 0 else 0.0)) * scale
        outs.append(h)
    return outs


def loop(step, x, h, ws, scale):
    states = []
    for t in range(x.size(0)):
        outs = step(x[t], h, ws, scale)
        h = outs[-1]
        states.append(torch.stack(outs))
    return torch.stack(states)  # (T, layers, B, d)


@pytest.mark.slow
def test_a_compiled_loop_equals_the_eager_one_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    ws = [torch.randn(4, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    h0 = torch.zeros(3, 4, dtype=torch.float64)
    step = CompiledStep(rnn_step)
    fast = loop(step, x, h0, ws, 0.9)
    (fast * torch.arange(fast.numel()).reshape(fast.shape)).sum().backward()
    g_fast = [w.grad.clone() for w in ws]
    for w in ws:
        w.grad = None
    ref = loop(rnn_step, x, h0, ws, 0.9)
    (ref * torch.arange(ref.numel()).reshape(ref.shape)).sum().backward()
    assert (fast - ref).abs().max() < 1e-12
    assert all((a - w.grad).abs().max() < 1e-10 for a, w in zip(g_fast, ws))
    assert list(step._compiled) == ["cpu"]  # compiled once for the device type, reused by every call
    # a Python constant is part of the compiled function: another value gives its own (correct) result
    with torch.no_grad():
        other = loop(step, x, h0, ws, 0.5)
        assert (other - loop(rnn_step, x, h0, ws, 0.5)).abs().max() < 1e-12
        assert (other - ref).abs().max() > 0.01
