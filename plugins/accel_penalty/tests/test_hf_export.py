"""Issue #33: DiffWrapper on gpt exports as transformers custom code that loads without kinlm and
computes what kinlm computes (logits to 1e-5 in float32, the same greedy tokens)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kinlm_core.testing import ByteTokenizer
from kinlm_core.sampling import generate_ids

from kinlm_accel_penalty.config import DiffWrapperConfig

sys.path.insert(0, str(Path(__file__).parent))
from hf_loader_accel import load_elsewhere, write_export  # noqa: E402

PROMPT = [[72, 101, 108, 108, 111, 44, 32, 119]]


class Greedy:
    temperature, top_k, top_p, seed, max_new_tokens = 0.0, None, None, 0, 8


def tiny(block_size: int = 32, **kw):
    torch.manual_seed(0)
    cfg = DiffWrapperConfig(inner={"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 32, "block_size": block_size},
                            **kw)
    model = cfg.build(257).eval()
    with torch.no_grad():  # the mix away from the identity, so the test sees the equation
        model.beta.normal_(0, 0.5)
        model.gamma.normal_(0, 0.5)
    return model


# block_size 12 < 8 prompt + 8 new tokens: generation outgrows the export's KV cache and restarts
@pytest.mark.parametrize("learnable, block_size", [(True, 32), (False, 12)])
def test_diff_wrapper_export_loads_without_kinlm(tmp_path, learnable, block_size):
    model, tok = tiny(block_size, learnable=learnable), ByteTokenizer()
    exp = model.hf_export(tok)
    assert exp.name == "kinlm_diff_wrapper" and "modeling_kinlm_gpt.py" in exp.files
    got = load_elsewhere(write_export(exp, tmp_path / "export"), PROMPT)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        want = model(ids).logits[..., :tok.vocab_size].numpy()
    np.testing.assert_allclose(got["logits"], want, atol=1e-5, rtol=0)
    tokens = generate_ids(model, ids, Greedy(), vocab_size=tok.vocab_size).numpy()
    np.testing.assert_array_equal(got["tokens"], tokens)
    # the KV cache: after the prompt one token per step, until the context outgrows block_size (then it reruns)
    T, n = ids.size(1), Greedy.max_new_tokens
    assert got["steps"].tolist() == [min(T + i, block_size) if T + i > block_size or i == 0 else 1 for i in range(n)]


def test_diff_wrapper_equation_reaches_the_export(tmp_path):
    """The export is not the bare inner gpt: with beta, gamma away from 0 its logits differ from it."""
    model, tok = tiny(), ByteTokenizer()
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        inner = model.inner(ids).logits[..., :tok.vocab_size].numpy()
    got = load_elsewhere(write_export(model.hf_export(tok), tmp_path / "export"), PROMPT, max_new_tokens=1)
    assert np.abs(got["logits"] - inner).max() > 1e-3


def test_no_export_around_a_model_without_one():
    """Around an inner model with no transformers custom code the wrapper offers no hf_export (the core
    then writes safetensors + spec.json)."""
    cfg = DiffWrapperConfig(inner={"type": "transformers", "config": {
        "model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 16}})
    assert not hasattr(cfg.build(257), "hf_export")
