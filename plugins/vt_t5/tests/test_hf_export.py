"""Issue #33: VT embeddings on gpt and on T5 export as transformers custom code that loads without
kinlm (AutoModelForCausalLM / AutoModelForSeq2SeqLM) and computes what kinlm computes (logits to 1e-5
in float32, the same greedy tokens)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kinlm_core.testing import ByteTokenizer
from kinlm_core.sampling import generate_ids

from kinlm_vt_t5.config import VTEmbeddingsConfig

sys.path.insert(0, str(Path(__file__).parent))
from hf_loader_vt import load_elsewhere, write_export  # noqa: E402

PROMPT = [[72, 101, 108, 108, 111, 44, 32, 119]]
GPT = {"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32}
T5 = {"type": "t5", "preset": "t5-tiny", "overrides": {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 2,
                                                      "num_layers": 1, "num_decoder_layers": 1}}


class Greedy:
    temperature, top_k, top_p, seed, max_new_tokens = 0.0, None, None, 0, 8


def build(inner, **kw):
    torch.manual_seed(0)
    model = VTEmbeddingsConfig(inner=inner, **kw).build(257).eval()
    model.bind_tokenizer(ByteTokenizer())
    return model


# block_size 12 < 8 prompt + 8 new tokens: generation outgrows the export's KV cache and restarts
@pytest.mark.parametrize("kw, block_size", [({"mode": "add", "w": 0.4, "learnable": True}, 32),
                                            ({"mode": "concat_project", "acceleration": True}, 12)])
def test_vt_gpt_export_loads_without_kinlm(tmp_path, kw, block_size):
    model, tok = build({**GPT, "block_size": block_size}, **kw), ByteTokenizer()
    exp = model.hf_export(tok)
    assert exp.name == "kinlm_vt_gpt" and exp.task == "causal" and "modeling_kinlm_gpt.py" in exp.files
    got = load_elsewhere(write_export(exp, tmp_path / "export"), PROMPT)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        want = model(ids).logits[..., :tok.vocab_size].numpy()
        inner = model.inner(ids).logits[..., :tok.vocab_size].numpy()
    assert np.abs(want - inner).max() > 1e-3  # VT changes the logits: the comparison sees the equation
    np.testing.assert_allclose(got["logits"], want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got["tokens"], generate_ids(model, ids, Greedy(), vocab_size=tok.vocab_size).numpy())
    # the KV cache: after the prompt one token per step, until the context outgrows block_size (then it reruns)
    T, n = ids.size(1), Greedy.max_new_tokens
    assert got["steps"].tolist() == [min(T + i, block_size) if T + i > block_size or i == 0 else 1 for i in range(n)]


def kinlm_greedy_seq2seq(model, ids, start: int, n: int) -> torch.Tensor:
    """Greedy decoding through kinlm's forward: the decoder's inputs grow from ``start`` one argmax at a time."""
    dec = torch.tensor([[start]] * ids.size(0))
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids, decoder_input_ids=dec).logits[:, -1].argmax(-1, keepdim=True)
            dec = torch.cat([dec, nxt], dim=1)
    return dec


@pytest.mark.parametrize("kw", [{"mode": "add", "w": 0.4}, {"mode": "concat_project"}])
def test_vt_t5_export_loads_as_seq2seq_without_kinlm(tmp_path, kw):
    model, tok = build(T5, **kw), ByteTokenizer()
    exp = model.hf_export(tok)
    assert exp.name == "kinlm_vt_t5" and exp.task == "seq2seq"
    got = load_elsewhere(write_export(exp, tmp_path / "export"), PROMPT, task="seq2seq")
    assert str(got["cls"]) == "VTT5ForConditionalGeneration"
    ids = torch.tensor(PROMPT)
    start = model.inner.hf.config.decoder_start_token_id
    tokens = kinlm_greedy_seq2seq(model, ids, start, 8)
    np.testing.assert_array_equal(got["tokens"], tokens.numpy())
    with torch.no_grad():
        want = model(ids, decoder_input_ids=tokens).logits.numpy()
        inner = model.inner(ids, decoder_input_ids=tokens).logits.numpy()
    assert np.abs(want - inner).max() > 1e-3  # VT changes the logits: the comparison sees the equation
    np.testing.assert_allclose(got["logits"], want, atol=1e-5, rtol=0)


def test_no_export_around_a_model_without_one():
    """Around a transformers GPT-2 (not gpt, not T5) the wrapper offers no hf_export: the core then
    writes safetensors + spec.json."""
    model = build({"type": "transformers", "config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 16,
                                                      "n_head": 2, "n_positions": 16}})
    assert not hasattr(model, "hf_export")
