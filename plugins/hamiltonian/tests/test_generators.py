import pytest
import torch

from kinlm_core import Tokenizer
from kinlm_hamiltonian.config import FlowConfig, HamiltonianConfig, LeastActionConfig, SteerConfig
from kinlm_hamiltonian.generate import sample, sample_next


class ByteTokenizer(Tokenizer):
    """Latin-1 characters 0..255 plus an end-of-text id 256 (decode/encode round-trips)."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text):
        return [ord(c) for c in text if ord(c) < 256]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i < 256)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = HamiltonianConfig(d_model=32, n_layer=2, n_head=2, block_size=16, dropout=0.0, eot_token_id=256)
    return cfg.build(ByteTokenizer.vocab_size)  # 257 -> 320 padded


TOK = ByteTokenizer()


class EosRecordingTokenizer(ByteTokenizer):
    """Reads the text "<eos>" as the end-of-text id and records every id list it decodes."""

    def __init__(self):
        self.decoded = []

    def encode(self, text):
        return [self.eos_id] if text == "<eos>" else super().encode(text)

    def decode(self, ids):
        self.decoded.append([int(i) for i in ids])
        return super().decode(ids)


@pytest.mark.parametrize("steer_target", ["q", "momentum"])
def test_steer_strength_zero_equals_plain_sampling(model, steer_target):
    plain = sample(model, TOK, "hello", max_new_tokens=20, temperature=0.7, top_k=50, repetition_penalty=1.2, seed=7)
    cfg = SteerConfig(prompt="hello", target="cat", strength=0.0, steer_target=steer_target, max_new_tokens=20, seed=7)
    assert cfg.generate(model, TOK) == plain
    # seeded sampling is reproducible, and a strong push changes the text
    assert sample(model, TOK, "hello", max_new_tokens=20, seed=7) == plain
    strong = SteerConfig(prompt="hello", target="c", strength=50.0, steer_target=steer_target, max_new_tokens=20, seed=7)
    assert strong.generate(model, TOK) != plain


def test_steer_defaults_follow_the_note():
    cfg = SteerConfig(target="x")
    assert (cfg.temperature, cfg.top_k, cfg.repetition_penalty, cfg.strength, cfg.steer_target,
            cfg.leading_space) == (0.7, 50, 1.2, 0.5, "q", False)


@pytest.mark.parametrize("cfg", [
    SteerConfig(target="e", max_new_tokens=12, seed=1),
    SteerConfig(target="e", strength=-0.5, steer_target="momentum", top_p=0.9, max_new_tokens=12, seed=1),
    LeastActionConfig(max_new_tokens=12),
    FlowConfig(max_new_tokens=12),
], ids=["steer", "steer-momentum-top_p", "least_action", "flow"])
def test_every_generator_continues_the_prompt(model, cfg):
    tok = EosRecordingTokenizer()
    prompt = "the quick brown fox"  # 19 tokens, longer than block_size 16
    text = cfg.generate(model, tok, prompt=prompt)
    ids = tok.decoded[-1]
    assert text == TOK.decode(ids)  # the continuation only, decoded from the generated ids
    assert 1 <= len(ids) <= cfg.max_new_tokens
    assert all(0 <= i < TOK.vocab_size for i in ids)  # never a padded row (257 -> 320)
    if cfg.type != "flow":  # flow's repeat window also looks at the prompt
        assert cfg.generate(model, tok, prompt=prompt[-model.block_size:]) == text  # the context is cropped
    assert cfg.generate(model, tok, prompt="") == cfg.generate(model, tok, prompt="<eos>")  # "" starts from eos
    assert model.training  # generators restore the mode


def test_planners_are_deterministic_and_avoid_repeats(model):
    a = LeastActionConfig(max_new_tokens=10).generate(model, TOK, "abc")
    assert a == LeastActionConfig(max_new_tokens=10).generate(model, TOK, "abc")
    f = FlowConfig(max_new_tokens=10).generate(model, TOK, "abc")
    assert f == FlowConfig(max_new_tokens=10).generate(model, TOK, "abc")
    # a huge repeat penalty forbids any token from the recent window when there is a choice (20 > 15)
    cfg = LeastActionConfig(max_new_tokens=12, candidates=20, lookahead=0, repeat_penalty=1e6)
    ids = TOK.encode(cfg.generate(model, TOK, "ab"))
    seq = TOK.encode("ab") + ids
    assert all(seq[i] not in seq[max(0, i - 15):i] for i in range(2, len(seq)))


def test_sample_next_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    assert sample_next(logits, [], 0.0, None, None, 1.0) == 1
    assert sample_next(logits, [1], 0.0, None, None, 2.0) == 2  # 3 / 2 < 2
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, [], 1.0, 1, None, 1.0, g) for _ in range(20)} == {1}
    assert {sample_next(logits, [], 1.0, None, 0.5, 1.0, g) for _ in range(20)} == {1}  # p(1) = 0.66 > 0.5
    assert {sample_next(logits, [], 1.0, 2, None, 1.0, g) for _ in range(50)} == {1, 2}
