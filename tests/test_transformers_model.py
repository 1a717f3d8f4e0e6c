"""The built-in `transformers` model: any transformers architecture from a config dict."""

import pytest
import torch

from kinlm_core import component
from kinlm_core.sampling import Decoder, generate_ids
from kinlm_core.testing import check_model

GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}
MAMBA = {"model_type": "mamba", "hidden_size": 32, "num_hidden_layers": 2, "state_size": 8, "expand": 2}
T5 = {"model_type": "t5", "d_model": 32, "d_ff": 64, "num_layers": 2, "num_heads": 2, "d_kv": 16}


class Tok:
    vocab_size, eos_id, pad_id, bos_id = 61, 60, 0, None


def build(config, vocab=61):
    torch.manual_seed(0)
    model = component("model", "transformers")(config=config).build(vocab)
    model.bind_tokenizer(Tok())
    return model


@pytest.mark.parametrize("config, block", [(GPT2, 64), (MAMBA, None)], ids=["gpt2", "mamba"])
def test_causal_configs_build_run_and_train(config, block):
    model = build(config)
    assert model.block_size == block  # Mamba has no context limit: the sampler never crops it
    ids = torch.randint(0, 61, (2, 12))
    out = model(ids, output_hidden_states=True)
    assert out.logits.shape == (2, 12, 61)  # the vocabulary comes from the tokenizer
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (2, 12, 32)
    torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), ids.flatten()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.hf.config.eos_token_id == 60 and model.hf.config.pad_token_id == 0


@pytest.mark.parametrize("config, causal", [(GPT2, True), (MAMBA, True), (T5, False)], ids=["gpt2", "mamba", "t5"])
def test_conformance_kit(config, causal):
    model = check_model(component("model", "transformers")(config=config), vocab_size=61, causal=causal)
    assert hasattr(model, "decode") == causal  # an encoder-decoder has no decoding protocol: the sampler re-runs


@pytest.mark.parametrize("config", [GPT2, MAMBA], ids=["gpt2", "mamba"])
def test_decode_through_the_transformers_cache_matches_a_full_forward(config):
    model = build(config).eval()
    ids = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        logits, state = model.decode(ids[:, :6])
        steps = [logits]
        for t in range(6, 10):
            logits, state = model.decode(ids[:, t:t + 1], state)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-4)
    dec = Decoder(model)
    assert dec.stateful


def test_mamba_generates_past_any_length_without_cropping():
    model = build(MAMBA).eval()
    opts = type("O", (), {"temperature": 0.0, "top_k": None, "top_p": None, "seed": 0, "max_new_tokens": 40})
    prompt = torch.randint(0, 61, (1, 5))
    cached = generate_ids(model, prompt, opts)
    rerun = generate_ids(model, prompt, opts, forward=lambda x: model(x).logits)  # the whole history every token
    assert torch.equal(cached, rerun) and cached.shape == (1, 45)


def test_t5_gives_decoder_length_logits_and_encoder_states():
    model = build(T5)
    assert model.is_seq2seq and model.block_size is None
    src, tgt = torch.randint(1, 61, (2, 11)), torch.randint(1, 61, (2, 4))
    out = model(src, attention_mask=torch.ones_like(src), decoder_input_ids=tgt, output_hidden_states=True)
    assert out.logits.shape == (2, 4, 61)
    assert out.hidden_states[-1].shape == (2, 4, 32) and out.encoder_hidden_states[-1].shape == (2, 11, 32)
    assert model(src).logits.shape == (2, 11, 61)  # no decoder input: the decoder reads the input shifted right
    assert model.hf.config.decoder_start_token_id == 0  # T5 starts decoding from pad


def test_bad_configs_fail_with_one_clear_line():
    from pydantic import ValidationError

    cls = component("model", "transformers")
    with pytest.raises(ValidationError, match="model_type"):
        cls(config={"n_layer": 2})
    with pytest.raises(ValueError, match=r"model \(transformers\):.*no-such-arch"):
        cls(config={"model_type": "no-such-arch"}).build(10)
    with pytest.raises(ValueError, match="smaller than the tokenizer's vocabulary"):
        cls(config={**GPT2, "vocab_size": 5}).build(10)
    with pytest.raises(ValueError, match="no config.json"):
        cls(pretrained="/nonexistent/folder").build(10)


def test_pretrained_folder_starts_from_its_weights(tmp_path):
    src = build(GPT2).eval()
    src.hf.save_pretrained(tmp_path)
    torch.manual_seed(123)  # different random init: only loading can make them equal
    model = component("model", "transformers")(pretrained=str(tmp_path)).build(61).eval()
    ids = torch.randint(0, 61, (1, 8))
    assert torch.allclose(model(ids).logits, src(ids).logits, atol=1e-5)
