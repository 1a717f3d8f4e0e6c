"""Issue #33: llama_like exports as transformers custom code (kinlm_llama_like, not transformers'
LlamaForCausalLM: see LlamaLike.hf_export) that loads without kinlm and computes what kinlm computes
(logits to 1e-5 in float32, the same greedy tokens, through its KV cache)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kinlm_core.testing import ByteTokenizer
from kinlm_core.sampling import generate_ids

from kinlm_token_geometry.config import LlamaLikeConfig

sys.path.insert(0, str(Path(__file__).parent))
from hf_loader_tg import load_elsewhere, write_export  # noqa: E402

PROMPT = [[72, 101, 108, 108, 111, 44, 32, 119], [84, 104, 101, 32, 113, 117, 105, 99]]
SMALL = {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32, "dropout": 0.0}


class Greedy:
    temperature, top_k, top_p, seed, max_new_tokens = 0.0, None, None, 0, 8


@pytest.mark.parametrize("kw", [
    {},                                                                     # the source's defaults: postln, learned
    {"preset": "LLaMA-PeriLN", "positions": "rope", "embed_norm": False},
    # mixln with LayerNorm and GELU; a context of 12 < 8 prompt + 8 new tokens: generation outgrows the cache
    {"placement": "mixln", "mixln_split": 0.5, "norm": "layernorm", "mlp": "gelu", "block_size": 12},
])
def test_llama_like_export_loads_without_kinlm(tmp_path, kw):
    torch.manual_seed(0)
    model, tok = LlamaLikeConfig(**{**SMALL, **kw}).build(257).eval(), ByteTokenizer()
    exp = model.hf_export(tok)
    assert exp.name == "kinlm_llama_like" and exp.task == "causal" and exp.config["placements"] == model.placements
    got = load_elsewhere(write_export(exp, tmp_path / "export"), PROMPT)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        want = model(ids).logits.numpy()
    np.testing.assert_allclose(got["logits"], want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got["tokens"], generate_ids(model, ids, Greedy()).numpy())
    # the KV cache: after the prompt one token per step, until the context outgrows block_size (then it reruns)
    T, n = ids.size(1), Greedy.max_new_tokens
    want_steps = [min(T + i, model.block_size) if T + i > model.block_size or i == 0 else 1 for i in range(n)]
    assert got["steps"].tolist() == want_steps
