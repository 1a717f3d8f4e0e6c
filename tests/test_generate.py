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

    from kinlm_core.sampling import END_OF_TEXT, prompt_ids

    assert prompt_ids(Tok(), "", "cpu", 2).tolist() == [[49], [49]]
    texts = generate_texts(model, Tok(), "", opts(max_new_tokens=5, num_samples=2, stop_at_eos=False))
    assert len(texts) == 2
    for t in texts:  # 5 tokens: ids, and end-of-text ids shown as boundaries
        assert sum(len([x for x in piece.split(",") if x]) for piece in t.split(END_OF_TEXT)) + t.count(END_OF_TEXT) == 5


# --- end of text --------------------------------------------------------------------------------


class Bytes:
    """Bytes 0..255 and an end-of-text id 256 that decode drops (as a real tokenizer's decode does)."""

    vocab_size, eos_id, bos_id, pad_id = 257, 256, None, None

    def encode(self, s):
        return list(s.encode("latin-1"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("latin-1")


class EosBias(torch.nn.Module):
    """A head with +3 on the end-of-text logit (256): about one token in ten ends a text."""

    def __init__(self, head):
        super().__init__()
        self.inner = head
        self.weight = head.weight

    def forward(self, h):
        logits = self.inner(h)
        logits[..., 256] += 3.0
        return logits


def eos_likely(model):
    model.head = EosBias(model.head)
    return model


def test_continuation_text_ends_at_end_of_text_or_shows_each_boundary():
    from kinlm_core.sampling import END_OF_TEXT, continuation_text

    ids = [ord("a"), ord("b"), 256, ord("c"), 256, 256, ord("d")]
    assert continuation_text(Bytes(), ids) == "ab"
    assert continuation_text(Bytes(), ids, stop_at_eos=False) == "ab" + END_OF_TEXT + "c" + 2 * END_OF_TEXT + "d"
    assert continuation_text(Bytes(), [256]) == "" and continuation_text(Bytes(), [97, 98]) == "ab"
    no_eos = type("NoEos", (Bytes,), {"eos_id": None})()
    assert continuation_text(no_eos, [97, 256, 98], stop_at_eos=False) == "ab"  # no end-of-text id: nothing to show


def test_generation_stops_when_every_row_has_ended_its_text():
    """A row that draws eos_id is finished (later positions hold eos_id), the others draw exactly what
    they draw without stopping, and generation ends once every row is finished."""
    model = gpt(block=64)
    prompt = torch.randint(0, 50, (3, 4))
    o = opts(max_new_tokens=40, temperature=1.0, seed=11)
    free = generate_ids(model, prompt, o)
    eos = int(free[0, 4 + 2])  # the token row 0 draws third: call it end of text
    ended = generate_ids(model, prompt, o, eos_id=eos)
    first = [(row[4:] == eos).nonzero()[0, 0].item() if (row[4:] == eos).any() else 40 for row in free]
    assert ended.shape[1] == 4 + max(first) + 1 if max(first) < 40 else ended.shape[1] == 44
    assert first[0] <= 2
    for r, f in enumerate(first):
        n = min(f + 1, ended.shape[1] - 4)
        assert torch.equal(ended[r, :4 + n], free[r, :4 + n])  # the same draws up to its end of text
        assert torch.all(ended[r, 4 + n:] == eos)  # then padding with the end-of-text id


def test_greedy_generation_stops_at_end_of_text_as_transformers_does():
    """transformers' generate with an eos_token_id: a finished row is padded, the batch ends when every
    row has ended. Same tokens, same length, for the end-of-text id set to a token either row reaches."""
    pytest.importorskip("transformers")
    from kinlm_core.engine.export import gpt_to_transformers

    model = gpt(block=64, vocab=50)
    prompt = torch.randint(0, 50, (2, 5))
    free = generate_ids(model, prompt, opts(max_new_tokens=30), vocab_size=50)
    for eos in {int(free[0, 5]), int(free[1, 5]), int(free[1, -1])}:
        tok = type("Tok", (), {"vocab_size": 50, "eos_id": eos, "bos_id": None, "pad_id": eos})()
        hf = gpt_to_transformers(model, tok)
        for rows in (prompt, prompt[1:]):
            with torch.inference_mode():
                theirs = hf.generate(rows, attention_mask=torch.ones_like(rows), max_new_tokens=30,
                                     do_sample=False, eos_token_id=eos, pad_token_id=eos)
            ours = generate_ids(model, rows, opts(max_new_tokens=30), vocab_size=50, eos_id=eos)
            assert torch.equal(ours, theirs), (eos, ours, theirs)
    one = generate_ids(model, prompt[1:], opts(max_new_tokens=30), vocab_size=50, eos_id=int(free[1, 5]))
    assert one.shape == (1, 6)  # the row's first token ended its text: nothing more is generated


def test_sample_generator_stops_at_end_of_text_unless_told_to_go_on():
    from kinlm_core.sampling import END_OF_TEXT

    model = eos_likely(gpt(block=32, vocab=257))
    sample = component("generator", "sample")
    on = sample(max_new_tokens=60, temperature=1.0, top_k=None, seed=0, stop_at_eos=False).generate(model, Bytes(), "ab")
    assert on.count(END_OF_TEXT) >= 2 and on.split(END_OF_TEXT)[0], on
    stopped = sample(max_new_tokens=60, temperature=1.0, top_k=None, seed=0).generate(model, Bytes(), "ab")
    assert stopped == on.split(END_OF_TEXT)[0]  # stop_at_eos is the default


class _Logger:
    def __init__(self):
        self.texts = []

    def text(self, tag, text, step):
        self.texts.append((tag, text, step))


def test_samples_md_headers_list_every_option_used_and_show_boundaries(tmp_path):
    from kinlm_core.engine.outputs import write_samples
    from kinlm_core.sampling import END_OF_TEXT

    model = eos_likely(gpt(block=32, vocab=257))
    sample = component("generator", "sample")
    gens = [sample(prompt="ab", max_new_tokens=60, temperature=1.0, top_k=None, stop_at_eos=False),
            sample(prompt="ab", max_new_tokens=60, temperature=1.0, top_k=None, seed=5)]
    write_samples(SimpleNamespace(generate=gens, seed=7), model, Bytes(), tmp_path, 12, _Logger())
    md = (tmp_path / "samples.md").read_text()
    headers = [line for line in md.splitlines() if line.startswith("**")]
    assert headers == [
        "**sample (repetition_penalty=1.0, num_samples=1, max_new_tokens=60, temperature=1.0, seed=7, "
        "stop_at_eos=False)** `ab` ->",  # the run's seed filled in; top_k None (off) left out
        "**sample (repetition_penalty=1.0, num_samples=1, max_new_tokens=60, temperature=1.0, seed=5, "
        "stop_at_eos=True)** `ab` ->"]
    blocks = md.split("```")
    assert md.startswith("## step 12") and END_OF_TEXT in blocks[1] and END_OF_TEXT not in blocks[3]


@pytest.mark.slow
def test_kinlm_generate_stops_at_end_of_text_or_shows_the_boundaries(tmp_path):
    """End to end: a 2-step byte-level run; hot sampling meets the end-of-text id; the default
    output ends there, `--opt stop_at_eos=false` goes on and prints each boundary."""
    import json

    from helpers import TINY, kinlm
    from kinlm_core.sampling import END_OF_TEXT

    spec = {**TINY, "train": {**TINY["train"], "max_steps": 2, "checkpoint_every": 2}, "eval": {"every": 2, "batches": 1}}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    env = {"KINLM_CACHE": str(tmp_path / "cache")}
    assert kinlm("run", str(tmp_path / "s.json"), "--run-dir", str(tmp_path / "run"), env=env).returncode == 0
    args = ["generate", str(tmp_path / "run"), "--prompt", "AB", "--opt", "temperature=20", "--opt", "top_k=257",
            "--opt", "max_new_tokens=1500", "--opt", "seed=3"]
    on = kinlm(*args, "--opt", "stop_at_eos=false", env=env)
    assert on.returncode == 0, on.stderr
    assert on.stdout.startswith("AB") and on.stdout.count(END_OF_TEXT) >= 2
    off = kinlm(*args, env=env)
    assert off.returncode == 0 and off.stdout == on.stdout.split(END_OF_TEXT)[0] + "\n"
