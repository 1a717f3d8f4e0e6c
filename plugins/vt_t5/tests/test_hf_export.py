"""Issue #33: VT embeddings on gpt and on T5 export as transformers custom code that loads without
kinlm (AutoModelForCausalLM / AutoModelForSeq2SeqLM) and computes what kinlm computes (logits to 1e-5
in float32, the same greedy tokens), checked with kinlm_core.testing.check_hf_export; both tiny specs
trained a few steps through the engine. Around a model without custom code the core keeps safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kinlm_core.engine.export import export_final
from kinlm_core.testing import ByteTokenizer, check_hf_export, train_briefly

from kinlm_vt_t5.config import VTEmbeddingsConfig

pytestmark = pytest.mark.slow  # loads exports in a separate process: seconds each

PROMPT = [[72, 101, 108, 108, 111, 44, 32, 119]]
GPT = {"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32}
T5 = {"type": "t5", "preset": "t5-tiny", "overrides": {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 2,
                                                      "num_layers": 1, "num_decoder_layers": 1}}
SPECS = Path(__file__).resolve().parents[3] / "specs"


def build(inner, **kw):
    torch.manual_seed(0)
    model = VTEmbeddingsConfig(inner=inner, **kw).build(257).eval()
    model.bind_tokenizer(ByteTokenizer())
    return model


@pytest.mark.parametrize("spec, cls", [("vt_gpt_tiny.json", "VTGPTForCausalLM"),
                                       ("vt_t5_tiny.json", "VTT5ForConditionalGeneration")])
def test_tiny_spec_trained_exports_through_the_core(tmp_path, spec, cls):
    run = train_briefly(SPECS / spec, tmp_path / "run")
    got = check_hf_export(run.model, run.tokenizer, tmp_path, spec=run.spec)
    assert got["class"] == cls and "custom-code folder" in got["message"]


# block_size 12 < 8 prompt + 8 new tokens: generation outgrows the export's KV cache and restarts
@pytest.mark.parametrize("kw, block_size", [({"mode": "add", "w": 0.4, "learnable": True}, 32),
                                            ({"mode": "concat_project", "acceleration": True}, 12)])
def test_vt_gpt_export_loads_without_kinlm(tmp_path, kw, block_size):
    model, tok = build({**GPT, "block_size": block_size}, **kw), ByteTokenizer()
    exp = model.hf_export(tok)
    assert exp.name == "kinlm_vt_gpt" and exp.task == "causal" and "modeling_kinlm_gpt.py" in exp.files
    ids = torch.tensor(PROMPT)
    with torch.no_grad():  # VT changes the logits: the comparison sees the equation
        assert (model(ids).logits - model.inner(ids).logits).abs().max() > 1e-3
    got = check_hf_export(model, tok, tmp_path, prompt_ids=PROMPT, max_new_tokens=8)
    # the KV cache: after the prompt one token per step, until the context outgrows block_size (then it reruns)
    T, n = ids.size(1), 8
    assert got["steps"] == [min(T + i, block_size) if T + i > block_size or i == 0 else 1 for i in range(n)]


@pytest.mark.parametrize("kw", [{"mode": "add", "w": 0.4}, {"mode": "concat_project"}])
def test_vt_t5_export_loads_as_seq2seq_without_kinlm(tmp_path, kw):
    model, tok = build(T5, **kw), ByteTokenizer()
    exp = model.hf_export(tok)
    assert exp.name == "kinlm_vt_t5" and exp.task == "seq2seq"
    ids = torch.tensor(PROMPT)
    dec = torch.tensor([[model.inner.hf.config.decoder_start_token_id] + PROMPT[0][:-1]])
    with torch.no_grad():  # VT changes the logits: the comparison sees the equation
        diff = model(ids, decoder_input_ids=dec).logits - model.inner(ids, decoder_input_ids=dec).logits
    assert diff.abs().max() > 1e-3
    got = check_hf_export(model, tok, tmp_path, prompt_ids=PROMPT, max_new_tokens=8)
    assert got["class"] == "VTT5ForConditionalGeneration" and got["tokens"].shape == (1, 1 + 8)


def test_around_a_model_without_an_export_the_core_keeps_safetensors_and_says_so(tmp_path):
    """Around a transformers GPT-2 (not gpt, not T5) the wrapper offers no hf_export (its property
    raises AttributeError): export_final writes kinlm's safetensors and says so."""
    model = build({"type": "transformers", "config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 16,
                                                      "n_head": 2, "n_positions": 16}})
    assert not hasattr(model, "hf_export")
    line = export_final(model, None, ByteTokenizer(), tmp_path / "final")
    assert "model.safetensors + spec.json" in line and "no hf_export" in line
    assert [p.name for p in (tmp_path / "final").iterdir()] == ["model.safetensors"]  # spec None: no spec.json
