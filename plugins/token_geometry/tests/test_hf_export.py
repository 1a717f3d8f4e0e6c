"""Issue #33: llama_like exports as transformers custom code (kinlm_llama_like, not transformers'
LlamaForCausalLM: see LlamaLike.hf_export) that loads without kinlm and computes what kinlm computes
(logits to 1e-5 in float32, the same greedy tokens, through its KV cache), checked with
kinlm_core.testing.check_hf_export; specs/token_geometry_tiny.json trained a few steps through the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kinlm_core.testing import ByteTokenizer, check_hf_export, train_briefly

from kinlm_token_geometry.config import LlamaLikeConfig

pytestmark = pytest.mark.slow  # loads exports in a separate process: seconds each

PROMPT = [[72, 101, 108, 108, 111, 44, 32, 119], [84, 104, 101, 32, 113, 117, 105, 99]]
SMALL = {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32, "dropout": 0.0}
SPECS = Path(__file__).resolve().parents[3] / "specs"


def test_tiny_spec_trained_exports_through_the_core(tmp_path):
    run = train_briefly(SPECS / "token_geometry_tiny.json", tmp_path / "run")
    got = check_hf_export(run.model, run.tokenizer, tmp_path, spec=run.spec)
    assert got["class"] == "LlamaLikeForCausalLM" and "custom-code folder" in got["message"]
    assert got["steps"] == [12] + [1] * 7                                 # the KV cache


@pytest.mark.parametrize("kw", [
    {"preset": "LLaMA-PeriLN", "positions": "rope", "embed_norm": False},
    # mixln with LayerNorm and GELU; a context of 12 < 8 prompt + 8 new tokens: generation outgrows the cache
    {"placement": "mixln", "mixln_split": 0.5, "norm": "layernorm", "mlp": "gelu", "block_size": 12},
])
def test_llama_like_export_loads_without_kinlm(tmp_path, kw):
    torch.manual_seed(0)
    model, tok = LlamaLikeConfig(**{**SMALL, **kw}).build(257).eval(), ByteTokenizer()
    exp = model.hf_export(tok)
    assert exp.name == "kinlm_llama_like" and exp.task == "causal" and exp.config["placements"] == model.placements
    got = check_hf_export(model, tok, tmp_path, prompt_ids=PROMPT, max_new_tokens=8)
    # the KV cache: after the prompt one token per step, until the context outgrows block_size (then it reruns)
    T, n = len(PROMPT[0]), 8
    assert got["steps"] == [min(T + i, model.block_size) if T + i > model.block_size or i == 0 else 1
                            for i in range(n)]
