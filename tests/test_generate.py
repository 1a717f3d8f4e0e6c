"""The decoding protocol and the one sampler: a state-carrying model generates exactly what the
re-running path generates, never re-reads its history, and is never cropped without a block_size."""

from types import SimpleNamespace

import pytest
import torch

from kinlm_core import ModelOutput, component
from kinlm_core.sampling import Decoder, choose, filter_logits, generate_ids, generate_texts


def opts(**kw):
    base = {"temperature": 0.0, "top_k": None, "top_p": None, "seed": 0, "max_new_tokens": 20, "repetition_penalty": 1.0}
    return SimpleNamespace(**{**base, **kw})


def gpt(block=16, bias=True, vocab=50):
    torch.manual_seed(0)
    return component("model", "gpt")(n_layer=2, n_head=2, d_model=32, block_size=block, bias=bias).build(vocab).eval()


def test_gpt_decode_matches_the_full_forward_for_prompt_chunks_and_single_tokens():
    model = gpt()
    x = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        full = model(x).logits
        logits, state = model.decode(x[:, :5])
        parts = [logits]
        logits, state = model.decode(x[:, 5:8], state)  # several new tokens at once
        parts.append(logits)
        for t in range(8, 12):
            logits, state = model.decode(x[:, t:t + 1], state)
            parts.append(logits)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    assert state.pos == 12 and state.k[0].shape == (2, 2, 16, 16)  # preallocated to block_size
    with pytest.raises(ValueError, match="exceed block_size 16"):
        model.decode(x[:, :5], state)


@pytest.mark.parametrize("kw", [{}, {"temperature": 1.0, "top_p": 0.9, "repetition_penalty": 1.3},
                                {"temperature": 0.7, "top_k": 5}], ids=["greedy", "top_p+penalty", "top_k"])
def test_cached_generation_equals_rerunning_the_cropped_context(kw):
    model = gpt(block=16)
    prompt = torch.randint(0, 50, (3, 6))
    o = opts(max_new_tokens=30, seed=5, **kw)  # 36 tokens > block_size 16: the window slides
    cached = generate_ids(model, prompt, o)
    rerun = generate_ids(model, prompt, o, forward=lambda x: model(x).logits)
    assert torch.equal(cached, rerun) and cached.shape == (3, 36)
    assert torch.equal(cached[:, :6], prompt)


class Recurrent(torch.nn.Module):
    """A model with no context limit: logits from a running sum of embeddings; counts tokens fed."""

    block_size = None

    def __init__(self, vocab=11):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)
        self.fed, self.widths = 0, []

    def forward(self, input_ids, output_hidden_states=False):
        self.widths.append(input_ids.size(1))
        return ModelOutput(logits=self.emb(input_ids).cumsum(1))

    def decode(self, input_ids, state=None):
        self.fed += input_ids.numel()
        h = self.emb(input_ids).cumsum(1) + (0 if state is None else state[:, None])
        return h, h[:, -1]


def test_a_model_without_block_size_is_never_cropped_and_decodes_one_token_per_step():
    torch.manual_seed(0)
    model = Recurrent().eval()
    prompt = torch.randint(0, 11, (1, 4))
    o = opts(max_new_tokens=50, temperature=1.0, seed=3)
    cached = generate_ids(model, prompt, o)
    assert model.fed == 4 + 49  # the prompt once, then each new token once: O(1) per token
    rerun = generate_ids(model, prompt, o, forward=lambda x: model(x).logits)
    assert model.widths[-1] == 53  # the re-running path sees the whole history: never cropped
    assert torch.equal(cached, rerun)


def test_num_samples_draws_independent_rows_in_one_batch():
    model = gpt(block=32, vocab=257)

    class Bytes:
        vocab_size, eos_id = 257, 256

        def encode(self, s):
            return list(s.encode())

        def decode(self, ids):
            return bytes(i for i in ids if i < 256).decode("latin-1")

    sample = component("generator", "sample")
    many = sample(num_samples=4, max_new_tokens=12, temperature=1.0, top_k=None, seed=1).generate_many(model, Bytes(), "ab")
    assert len(many) == 4 and len(set(many)) > 1  # different draws per row
    again = sample(num_samples=4, max_new_tokens=12, temperature=1.0, top_k=None, seed=1).generate_many(model, Bytes(), "ab")
    assert again == many  # one seeded generator, never the global RNG
    greedy = sample(num_samples=3, max_new_tokens=12, temperature=0).generate_many(model, Bytes(), "ab")
    assert len(set(greedy)) == 1
    assert sample(num_samples=2, max_new_tokens=3, temperature=0).generate(model, Bytes(), "ab").count("-----") == 1


def test_padded_vocabulary_rows_are_never_proposed():
    model = gpt(vocab=50)  # padded to 64 rows
    with torch.no_grad():
        model.head.weight[50:] = 100.0  # padding rows would win every argmax
    dec = Decoder(model, vocab_size=50)
    logits = dec.prefill(torch.randint(0, 50, (1, 4)))
    assert logits.shape == (1, 50)
    assert int(generate_ids(model, torch.zeros(1, 2, dtype=torch.long), opts(), vocab_size=50).max()) < 50


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, 1.0, None, 0.6))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.6, so 0.3 is kept too
    assert torch.isfinite(filter_logits(logits, 1.0, None, 0.45)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, 1.0, 2, None)).sum() == 2
    g = torch.Generator().manual_seed(0)
    assert {int(choose(logits, 1.0, None, 0.45, g)) for _ in range(20)} == {0}
    assert int(choose(logits, 0.0)) == 0


def test_hamiltonian_decodes_with_kv_cache_and_momentum_state():
    pytest.importorskip("kinlm_hamiltonian")
    torch.manual_seed(0)
    model = component("model", "hamiltonian")(d_model=32, n_layer=2, n_head=2, block_size=16, dropout=0.0,
                                              eot_token_id=7).build(40).eval()
    x = torch.randint(0, 40, (2, 14))
    x[0, 5] = 7  # an end-of-text reset inside the decoded part
    with torch.no_grad():
        full = model(x).logits
        logits, state = model.decode(x[:, :4])
        parts = [logits]
        for t in range(4, 14):
            logits, state = model.decode(x[:, t:t + 1], state)
            parts.append(logits)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    o = opts(max_new_tokens=25, temperature=0.9, seed=2)
    assert torch.equal(generate_ids(model, x[:1, :5], o), generate_ids(model, x[:1, :5], o, forward=lambda c: model(c).logits))


def test_generate_texts_starts_an_empty_prompt_from_eos():
    model = gpt(vocab=50)

    class Tok:
        vocab_size, eos_id = 50, 49

        def encode(self, s):
            return [ord(c) % 49 for c in s]

        def decode(self, ids):
            return ",".join(map(str, ids))

    texts = generate_texts(model, Tok(), "", opts(max_new_tokens=5, num_samples=2))
    assert len(texts) == 2 and all(len(t.split(",")) == 5 for t in texts)
