"""The trajectory analyzer: kinematics of each layer's hidden-state path over token positions.

For one text and one layer, h (T, d):
    v_t = h_t - h_{t-1}                 t = 1..T-1     speed     |v_t|
    a_t = v_t - v_{t-1}                 t = 2..T-1     accel     |a_t|
    k_t = 1 - cos(v_t, v_{t-1})         t = 2..T-1     curvature (0 straight, 1 right angle, 2 reversal)
Means are over every position of every text (texts are run one at a time: no padding).
"Kinematic concatenation": the same on s_t = [h_t, v_t] (T-1, 2d), t = 1..T-1 (the state the source's
RoBERTa_Kinematic_concatenate feeds its classifier; the source itself measures no kinematics).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from kinlm_core import FIGURE_DPI

METRICS = ("speed", "accel", "curvature")


def kinematics(h: torch.Tensor) -> dict:
    """h (T, d) -> {"speed": (T-1,), "accel": (T-2,), "curvature": (T-2,)} (empty where T is too short).
    A zero velocity has cosine 0 with anything (curvature 1)."""
    h = h.float()
    v = h[1:] - h[:-1]                                                   # (T-1, d)
    a = v[1:] - v[:-1]                                                   # (T-2, d)
    cos = F.cosine_similarity(v[1:], v[:-1], dim=-1, eps=1e-12)          # (T-2,)
    return {"speed": v.norm(dim=-1), "accel": a.norm(dim=-1), "curvature": 1.0 - cos}


def with_velocity(h: torch.Tensor) -> torch.Tensor:
    """s_t = [h_t, h_t - h_{t-1}] for t = 1..T-1: (T, d) -> (T-1, 2d)."""
    return torch.cat([h[1:], h[1:] - h[:-1]], dim=-1)


class Accumulator:
    """Running sums of each metric per layer (and per variant), for position-weighted means."""

    def __init__(self):
        self.sums: dict = {}

    def add(self, variant: str, layer: int, kin: dict) -> None:
        for m, x in kin.items():
            s, n = self.sums.get((variant, m, layer), (0.0, 0))
            self.sums[(variant, m, layer)] = (s + float(x.sum()), n + x.numel())

    def mean(self, variant: str, metric: str, layer: int) -> float:
        s, n = self.sums.get((variant, metric, layer), (0.0, 0))
        return s / n if n else float("nan")


def trajectory_metrics(paths: list[list[torch.Tensor]], concat: bool = True) -> dict:
    """``paths[text][layer]`` = (T, d) tensors -> {"speed/layer_3": ..., "concat/curvature/layer_0": ...,
    "speed_mean": ..., "layers": L+1, "texts": n, "tokens": total}."""
    acc = Accumulator()
    n_layers = len(paths[0])
    for hs in paths:
        for layer, h in enumerate(hs):
            acc.add("", layer, kinematics(h))
            if concat:
                acc.add("concat/", layer, kinematics(with_velocity(h.float())))
    out: dict = {}
    for variant in ("", "concat/") if concat else ("",):
        for m in METRICS:
            vals = [acc.mean(variant, m, l) for l in range(n_layers)]
            out.update({f"{variant}{m}/layer_{l}": v for l, v in enumerate(vals)})
            out[f"{variant}{m}_mean"] = sum(vals) / len(vals)
    out.update(layers=n_layers, texts=len(paths), tokens=sum(hs[0].size(0) for hs in paths))
    return out


def plot(metrics: dict, out_dir: Path, concat: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = metrics["layers"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, m in zip(axes, METRICS):
        ax.plot(range(L), [metrics[f"{m}/layer_{l}"] for l in range(L)], marker="o", label="h")
        if concat:
            ax.plot(range(L), [metrics[f"concat/{m}/layer_{l}"] for l in range(L)], marker="s", label="[h, v]")
        ax.set(title={"speed": "mean speed |v|", "accel": "mean acceleration |a|",
                      "curvature": "mean curvature 1 - cos"}[m], xlabel="layer (0 = embeddings)")
        ax.legend()
    fig.tight_layout()
    path = out_dir / "trajectory.png"
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


@torch.no_grad()
def analyze(cfg, model, tokenizer, texts: list[str], out_dir: Path) -> dict:
    device = next(model.parameters()).device
    limit = min(cfg.max_tokens, getattr(model, "block_size", None) or cfg.max_tokens)
    paths = []
    for text in texts:
        ids = tokenizer.encode(text)[:limit]
        if len(ids) < 3:
            continue
        out = model(torch.tensor([ids], device=device), output_hidden_states=True)
        if not out.hidden_states:
            raise ValueError("trajectory needs a model that returns hidden states")
        paths.append([h[0].float().cpu() for h in out.hidden_states])  # each (T, d)
    if not paths:
        raise ValueError("trajectory: no text with at least 3 tokens")
    metrics = trajectory_metrics(paths, cfg.concat_velocity)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(metrics, out_dir, cfg.concat_velocity)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
