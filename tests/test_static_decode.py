"""Issue 34 item 5: static decoding (gpt's decode_step at a device position over the preallocated
cache, a seen-token mask for the repetition penalty, end-of-text read every EOS_CHECK_EVERY tokens):
the same tokens as the growing-cache path, without a host read per token."""
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import torch

from kinlm_core.builtins.gpt import KVCache
from kinlm_core.builtins.models import GPTConfig
from kinlm_core.sampling import EOS_CHECK_EVERY, can_decode_static, generate_ids

V = 50
GREEDY = dict(temperature=0, top_k=None, top_p=None, seed=1)
SAMPLED = dict(temperature=0.9, top_k=20, top_p=0.95, seed=7)


def gpt(block=24):
    torch.manual_seed(0)
    return GPTConfig(n_layer=2, n_head=2, d_model=32, block_size=block).build(V).eval()


def both(model, ids, eos=None, **opts):
    o = NS(**opts)
    old = generate_ids(model, ids, o, vocab_size=V, eos_id=eos, static=False)
    new = generate_ids(model, ids, o, vocab_size=V, eos_id=eos)
    return old, new


def test_gpt_decodes_statically_by_default_and_not_with_steering():
    m = gpt()
    assert can_decode_static(m) and not can_decode_static(m, model_kwargs={"steer": 1})
    assert not can_decode_static(m, forward=lambda x: m(x).logits)

    class Changed(type(m)):  # a subclass whose decode differs: the inherited step would not match it
        def decode(self, input_ids, state=None):
            return super().decode(input_ids, state)

    m.__class__ = Changed
    assert not can_decode_static(m)


@pytest.mark.parametrize("opts", [GREEDY, SAMPLED, {**GREEDY, "repetition_penalty": 1.5},
                                  {**SAMPLED, "repetition_penalty": 1.3}], ids=["greedy", "sampled", "greedy-penalty",
                                                                                 "sampled-penalty"])
def test_static_decoding_gives_todays_tokens(opts):
    """3 rows, 40 tokens past a 24-position cache (so the cache fills and is prefilled again)."""
    ids = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(2))
    old, new = both(gpt(), ids, max_new_tokens=40, **opts)
    assert old.shape == (3, 45) and torch.equal(new, old)


def test_end_of_text_cuts_where_the_last_row_ended_though_read_every_16_tokens():
    m = gpt(block=128)
    for seed in range(50):  # prompts whose rows share a generated id, the later one at a step no multiple of 16
        ids = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(seed))
        free = generate_ids(m, ids, NS(max_new_tokens=60, **SAMPLED), vocab_size=V, static=False)[:, 4:]
        common = [t for t in set(free[0].tolist()) & set(free[1].tolist())
                  if max(r.tolist().index(t) for r in free) % EOS_CHECK_EVERY != EOS_CHECK_EVERY - 1]
        if common:
            break
    eos = common[0]
    old, new = both(m, ids, eos=eos, max_new_tokens=60, **SAMPLED)
    assert old.size(1) == 4 + max(r.tolist().index(eos) for r in free) + 1 < 64
    assert torch.equal(new, old)


def test_decode_step_logits_equal_the_growing_cache():
    m = gpt(block=32)
    ids = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        _, grow = m.decode(ids, None)
        _, fixed = m.decode(ids, None)
        tok = torch.tensor([[3], [9]])
        want, _ = m.decode(tok, grow)
        got = m.decode_step(tok, torch.tensor(6), fixed)
    assert torch.allclose(got, want[:, -1], atol=1e-6)
    assert torch.allclose(fixed.k[1][:, :, :7], grow.k[1][:, :, :7])


def test_static_decoding_reads_the_device_once_per_16_tokens(monkeypatch):
    """64 tokens with an end-of-text id that never comes: 4 reads (steps 16, 32, 48, 64); the growing-cache
    path reads once per token."""
    torch_dir = str(Path(torch.__file__).parent)
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__format__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, **k):
            if not sys._getframe(1).f_code.co_filename.startswith(torch_dir):
                reads.append(1)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    m = gpt(block=128)
    ids = torch.zeros(1, 4, dtype=torch.long)
    never = V + 1
    generate_ids(m, ids, NS(max_new_tokens=64, **GREEDY, repetition_penalty=1.2), vocab_size=V, eos_id=never)
    assert len(reads) == 64 // EOS_CHECK_EVERY
    reads.clear()
    generate_ids(m, ids, NS(max_new_tokens=64, **GREEDY, repetition_penalty=1.2), vocab_size=V, eos_id=never,
                 static=False)
    assert len(reads) >= 64


@pytest.mark.slow
def test_the_compiled_step_gives_the_same_tokens():
    m = gpt()
    ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(5))
    o = NS(max_new_tokens=30, **GREEDY)
    old = generate_ids(m, ids, o, vocab_size=V, static=False)
    assert torch.equal(generate_ids(m, ids, o, vocab_size=V, compile_step=True), old)


def test_kv_cache_starts_zeroed():
    c = KVCache(1, 8)
    k = torch.randn(1, 2, 3, 4)
    c.update(0, k, k)
    assert torch.equal(c.k[0][:, :, 3:], torch.zeros(1, 2, 5, 4))


def test_the_testing_kit_checks_decode_step():
    """kinlm_core.testing.check_decoding also runs check_static_decoding; a step at the wrong position fails."""
    from kinlm_core.testing import check_decoding, check_static_decoding

    m = gpt(block=32)
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(6))
    check_decoding(m, ids)
    real = m.decode_step
    m.decode_step = lambda tok, pos, state: real(tok, pos - 1, state)  # writes and reads one position early
    with pytest.raises(AssertionError, match="decode_step at position 6 differs from the full forward"):
        check_static_decoding(m, ids)
