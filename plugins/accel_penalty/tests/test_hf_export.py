"""Issue #33: DiffWrapper on gpt exports as transformers custom code that loads without kinlm and
computes what kinlm computes (logits to 1e-5 in float32, the same greedy tokens, through a KV cache),
checked with kinlm_core.testing.check_hf_export; around a model without custom code the core keeps
safetensors + spec.json and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kinlm_core import load_spec
from kinlm_core.engine.export import export_final
from kinlm_core.testing import ByteTokenizer, check_hf_export, train_briefly

from kinlm_accel_penalty.config import DiffWrapperConfig

pytestmark = pytest.mark.slow  # loads exports in a separate process: seconds each

PROMPT = [[72, 101, 108, 108, 111, 44, 32, 119]]
SPECS = Path(__file__).resolve().parents[3] / "specs"
# specs/accel_penalty_tiny.json (gpt + the accel penalty) with its gpt inside a DiffWrapper
WRAPPED = 'model={"type": "diff_wrapper", "inner": ' \
          '{"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 64, "block_size": 128, "dropout": 0.0}}'


def tiny(block_size: int = 32, **kw):
    torch.manual_seed(0)
    cfg = DiffWrapperConfig(inner={"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 32, "block_size": block_size},
                            **kw)
    model = cfg.build(257).eval()
    with torch.no_grad():  # the mix away from the identity, so the test sees the equation
        model.beta.normal_(0, 0.5)
        model.gamma.normal_(0, 0.5)
    return model


def test_tiny_spec_with_a_diff_wrapper_trained_exports_through_the_core(tmp_path):
    run = train_briefly(SPECS / "accel_penalty_tiny.json", tmp_path / "run", WRAPPED)
    got = check_hf_export(run.model, run.tokenizer, tmp_path, spec=run.spec)
    assert got["class"] == "DiffWrapperGPTForCausalLM" and "custom-code folder" in got["message"]
    assert got["steps"] == [12] + [1] * 7                                 # the KV cache and the blocks' memory
    assert "generate keeps a KV cache" in (got["folder"] / "README.md").read_text()


# block_size 12 < 8 prompt + 8 new tokens: generation outgrows the export's KV cache and restarts
@pytest.mark.parametrize("learnable, block_size", [(True, 32), (False, 12)])
def test_diff_wrapper_export_loads_without_kinlm(tmp_path, learnable, block_size):
    model, tok = tiny(block_size, learnable=learnable), ByteTokenizer()
    exp = model.hf_export(tok)
    assert exp.name == "kinlm_diff_wrapper" and "modeling_kinlm_gpt.py" in exp.files
    ids = torch.tensor(PROMPT)
    with torch.no_grad():  # the export is not the bare inner gpt: the mix changes the logits
        assert (model(ids).logits - model.inner(ids).logits).abs().max() > 1e-3
    got = check_hf_export(model, tok, tmp_path, prompt_ids=PROMPT, max_new_tokens=8)
    # the KV cache: after the prompt one token per step, until the context outgrows block_size (then it reruns)
    T, n = ids.size(1), 8
    assert got["steps"] == [min(T + i, block_size) if T + i > block_size or i == 0 else 1 for i in range(n)]


def test_around_a_model_without_an_export_the_core_keeps_safetensors_and_says_so(tmp_path):
    """Around an inner model with no transformers custom code the wrapper offers no hf_export (its
    property raises AttributeError); export_final writes kinlm's safetensors + spec.json and one line."""
    spec = load_spec(SPECS / "accel_penalty_tiny.json", ['model={"type": "diff_wrapper", "inner": {"type": '
                     '"transformers", "config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, '
                     '"n_positions": 16}}}'])
    model = spec.model.build(257)
    assert not hasattr(model, "hf_export")
    line = export_final(model, spec, ByteTokenizer(), tmp_path / "final")
    assert "model.safetensors + spec.json (the 'diff_wrapper' model has no transformers counterpart and no " \
           "hf_export" in line
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["model.safetensors", "spec.json"]
    assert json.loads((tmp_path / "final" / "spec.json").read_text())["model"]["type"] == "diff_wrapper"
