import math

import pytest
import torch

from kinlm_core import ModelOutput, Tokenizer, component
from kinlm_core.sampling import END_OF_TEXT
from kinlm_hamiltonian.config import FlowConfig, HamiltonianConfig, LeastActionConfig, SteerConfig


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


def plain(**kw):
    """The core's `sample` generator with the steer defaults (what steering at strength 0 must equal)."""
    base = dict(temperature=0.7, top_k=50, repetition_penalty=1.2, stop_at_eos=False)
    return component("generator", "sample")(**{**base, **kw})


@pytest.mark.parametrize("steer_target", ["q", "momentum"])
def test_steer_strength_zero_equals_plain_sampling(model, steer_target):
    ref = plain(prompt="hello", max_new_tokens=20, seed=7).generate(model, TOK)
    cfg = SteerConfig(prompt="hello", target="cat", strength=0.0, steer_target=steer_target, max_new_tokens=20, seed=7)
    assert cfg.generate(model, TOK) == ref
    # seeded sampling is reproducible, and a strong push changes the text
    assert plain(prompt="hello", max_new_tokens=20, seed=7).generate(model, TOK) == ref
    strong = SteerConfig(prompt="hello", target="c", strength=50.0, steer_target=steer_target, max_new_tokens=20, seed=7)
    assert strong.generate(model, TOK) != ref


def test_steering_reaches_every_model_call_through_the_core_sampler(model):
    """The steer generator is the core sampler with the vector as a model keyword argument: the
    same text as sampling from a model whose q rows are all shifted by the vector (q steering)."""
    import copy

    cfg = SteerConfig(prompt="hello", target="c", strength=3.0, max_new_tokens=15, seed=3)
    vec = 3.0 * model.head.weight[ord("c")].detach().clone()
    shifted = copy.deepcopy(model)
    shifted.head = torch.nn.Linear(32, shifted.padded_vocab_size, bias=False)   # untie: the head is unchanged
    with torch.no_grad():
        shifted.head.weight.copy_(model.head.weight)
        shifted.embed.q_emb = torch.nn.Embedding.from_pretrained(model.embed.q_emb.weight.detach() + vec)
    want = plain(prompt="hello", max_new_tokens=15, seed=3).generate(shifted, TOK)
    assert cfg.generate(model, TOK) == want


def test_defaults_follow_the_source():
    """test_mpc.py: mode 1/2 T 0.7, top-k 50, penalty 1.2, 100 tokens; modes 3/4 50 tokens, 5 candidates,
    windows 15 / 32, penalties 10 / 5, w 2; every mode goes on past the end of text; look-ahead passes
    without resets."""
    cfg = SteerConfig(target="x")
    assert (cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty, cfg.strength, cfg.steer_target,
            cfg.leading_space, cfg.max_new_tokens, cfg.stop_at_eos) == (0.7, 50, None, 1.2, 0.5, "q", False, 100, False)
    la = LeastActionConfig()
    assert (la.max_new_tokens, la.candidates, la.lookahead, la.repeat_window, la.repeat_penalty, la.stop_at_eos,
            la.lookahead_resets) == (50, 5, 3, 15, 10.0, False, False)
    fl = FlowConfig()
    assert (fl.max_new_tokens, fl.candidates, fl.momentum_weight, fl.repeat_window, fl.repeat_penalty, fl.stop_at_eos,
            fl.lookahead_resets) == (50, 5, 2.0, 32, 5.0, False, False)


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
    if END_OF_TEXT not in text:
        assert text == TOK.decode(ids)  # the continuation only, decoded from the generated ids
    assert 1 <= len(ids) <= cfg.max_new_tokens
    assert all(0 <= i < TOK.vocab_size for i in ids)  # never a padded row (257 -> 320)
    if cfg.type != "flow":  # flow's repeat window also looks at the prompt
        assert cfg.generate(model, tok, prompt=prompt[-model.block_size:]) == text  # the context is cropped
    assert cfg.generate(model, tok, prompt="") == cfg.generate(model, tok, prompt="<eos>")  # "" starts from eos
    assert model.training  # generators restore the mode


class Bigram(torch.nn.Module):
    """logits = log P[last token]; hidden state = H[last token] (vocabulary 4, no end-of-text id)."""

    block_size = 64

    def __init__(self, P, H):
        super().__init__()
        self.logp = torch.nn.Parameter(torch.tensor(P).log())
        self.H = torch.tensor(H)
        self.calls = []

    def forward(self, input_ids, output_hidden_states=False, resets=True):
        self.calls.append(resets)
        h = self.H[input_ids]                                             # (B, T, 2)
        return ModelOutput(logits=self.logp[input_ids], hidden_states=(h, h) if output_hidden_states else None)


class Digits(Tokenizer):
    vocab_size, eos_id = 4, None

    def encode(self, text):
        return [int(c) for c in text]

    def decode(self, ids):
        return "".join(map(str, ids))


def test_least_action_by_hand():
    """From 0: candidates 1 (p .5) and 2 (p .4). 1 rolls out to 3 with p .4, 2 to 0 with p .9 but 0
    repeats the context: actions (-ln .5 - ln .4) / 2 = 0.80 and (-ln .4 - ln .9 + 10) / 2 = 5.51:
    1 wins. Without the penalty 2 would win: (0.92 + 0.11) / 2 = 0.51."""
    P = [[0.05, 0.5, 0.4, 0.05], [0.2, 0.1, 0.3, 0.4], [0.9, 0.05, 0.04, 0.01], [0.1, 0.1, 0.1, 0.7]]
    H = [[1.0, 0.0]] * 4
    cfg = LeastActionConfig(candidates=2, lookahead=1, max_new_tokens=1)
    m = Bigram(P, H)
    assert cfg.generate(m, Digits(), "0") == "1"
    assert False in m.calls  # the roll-outs run without resets (the source's)
    assert LeastActionConfig(candidates=2, lookahead=1, max_new_tokens=1, repeat_penalty=0.0).generate(
        m, Digits(), "0") == "2"
    a1 = (-math.log(0.5) - math.log(0.4)) / 2
    a2 = (-math.log(0.4) - math.log(0.9)) / 2
    assert a2 < a1 < a2 + 10 / 2  # the hand numbers of the docstring


def test_flow_by_hand():
    """From 0 (h = (1, 0)): candidates 1 (p .5, h (0, 1): turn 1) and 2 (p .4, h (1, 1): turn 1 - 1/sqrt 2).
    Energies -ln .5 + 2 * 1 = 2.69 and -ln .4 + 2 * 0.29 = 1.50: 2 wins; with w = 0, 1 wins."""
    P = [[0.05, 0.5, 0.4, 0.05]] * 4
    H = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]
    m = Bigram(P, H)
    assert FlowConfig(candidates=2, max_new_tokens=1).generate(m, Digits(), "0") == "2"
    assert m.calls == [True, False]  # the candidates' pass runs without resets (the source's)
    assert FlowConfig(candidates=2, max_new_tokens=1, momentum_weight=0.0).generate(m, Digits(), "0") == "1"
    m.calls.clear()
    FlowConfig(candidates=2, max_new_tokens=1, lookahead_resets=True).generate(m, Digits(), "0")
    assert m.calls == [True, True]
    # a candidate repeating one of the last 32 tokens pays 5: with 2 in the context, 1 wins
    assert FlowConfig(candidates=2, max_new_tokens=1).generate(m, Digits(), "20") == "1"


class EosBiasedHead(torch.nn.Module):
    """The model's head with ``bias`` added to the end-of-text logit (256)."""

    def __init__(self, head, bias):
        super().__init__()
        self.inner, self.bias = head, bias

    @property
    def weight(self):
        return self.inner.weight

    def forward(self, h):
        logits = self.inner(h)
        logits[..., 256] += self.bias
        return logits


def test_end_of_text_stops_or_is_shown(model):
    """Every hamiltonian generator goes on past the end of text by default (the source does) and
    shows the boundary; stop_at_eos=True ends the continuation there."""
    import copy

    m = copy.deepcopy(model)
    m.head = EosBiasedHead(m.head, 3.0)
    for cfg in (SteerConfig(target="e", strength=0.0, max_new_tokens=40, seed=0, temperature=1.0, top_k=None,
                            repetition_penalty=1.0), LeastActionConfig(max_new_tokens=8, candidates=1, lookahead=1),
                FlowConfig(max_new_tokens=8, candidates=1)):
        on = cfg.generate(m, TOK, "ab")
        assert END_OF_TEXT in on, cfg.type
        stopped = cfg.model_copy(update={"stop_at_eos": True}).generate(m, TOK, "ab")
        assert stopped == on.split(END_OF_TEXT)[0] and len(stopped) < len(on), cfg.type
        if cfg.type == "steer":
            assert stopped and on.count(END_OF_TEXT) >= 2, on  # text before the first boundary, and after it
