"""The transformers export of the cvfp inference network (issue #33): loaded without kinlm, it gives
kinlm's logits (float32, 1e-5) and greedy tokens (tied and untied heads, a frozen table), and generate
carries the O(1) context: the time per generated token does not grow with the prefix.
Helpers: the ``hf_tools`` fixture (conftest.py)."""

import json

import pytest
import torch

from kinlm_core.data.tokenizers import ByteTokenizer
from kinlm_cvfp.config import CvfpConfig

TOK = ByteTokenizer()
V = TOK.vocab_size

VARIANTS = {
    "untied": dict(tie_head=False),                        # the source's 11-29 config
    "tied_frozen": dict(tie_head=True, freeze_embedding=True),  # the table a buffer, the head its transpose
}


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = CvfpConfig(**{**dict(d_model=16, n_layer=2, block_size=64), **kw})
    model = cfg.build(V).eval()
    if model.head is not None:  # zero at init (phase 2 trains it): give it values so greedy tokens differ
        torch.nn.init.normal_(model.head.weight, std=0.5)
        torch.nn.init.normal_(model.head.bias, std=0.1)
    return model


def test_export_fields_rename_only_the_table():
    model = tiny_model(**VARIANTS["tied_frozen"])
    ex = model.hf_export(TOK)
    assert (ex.name, ex.config_class, ex.model_class) == ("kinlm_cvfp", "CvfpConfig", "CvfpForCausalLM")
    assert set(ex.state_dict) == (set(model.state_dict()) - {"embedding"}) | {"embed_tokens.weight"}
    assert torch.equal(ex.state_dict["embed_tokens.weight"], model.embedding)
    assert ex.config["tie_head"] is True and ex.config["block_size"] == 64
    json.dumps(ex.config)
    for text in ex.files.values():
        assert "kinlm_core" not in text and "import kinlm" not in text


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_loads_without_kinlm_and_matches_logits_and_greedy(tmp_path, hf_tools, variant):
    model = hf_tools.train_few_steps(tiny_model(**VARIANTS[variant]), V)
    folder = hf_tools.write_export(model.hf_export(TOK), tmp_path / "export")
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, V, (2, 20), generator=g)
    prompt = batch[:1, :5]
    out = hf_tools.run_isolated(folder, tmp_path, logits=[{"ids": batch.tolist()}],
                                generate=[{"ids": prompt.tolist(), "max_new_tokens": 12},
                                          {"ids": batch.tolist(), "max_new_tokens": 6}],
                                errors=[{"ids": batch.tolist(), "attention_mask": [[1] * 20, [0] * 3 + [1] * 17],
                                         "generate": True}])
    assert "left padding" in out["errors"][0]
    assert out["class"] == "CvfpForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(out["logits"][0]), model(batch).logits, atol=1e-5, rtol=0)
    # both stay within block_size 64, where kinlm's sampler does not crop
    assert out["generate"][0] == hf_tools.kinlm_greedy(model, prompt, 12, V)
    assert out["generate"][1] == hf_tools.kinlm_greedy(model, batch, 6, V)


def test_generate_time_per_token_does_not_grow_with_the_prefix(tmp_path, hf_tools):
    """The state is O(1): a 256-token prefix costs no more per generated token than a 16-token one.
    Prints the ratio to kinlm's sampler (which, past block_size, re-runs the last block_size tokens)."""
    model = tiny_model(d_model=128, n_layer=3, block_size=128)            # specs/cvfp_tiny.json's sizes
    folder = hf_tools.write_export(model.hf_export(TOK), tmp_path / "export")
    g = torch.Generator().manual_seed(0)
    short, long = torch.randint(0, V, (1, 16), generator=g), torch.randint(0, V, (1, 256), generator=g)
    n = 32
    out = hf_tools.run_isolated(folder, tmp_path, timing=[{"ids": short.tolist(), "new_tokens": n},
                                                          {"ids": long.tolist(), "new_tokens": n}])
    t16, t256 = out["timing"]
    assert t256 < 2 * t16, f"per-token time grew with the prefix: {t16 * 1e3:.2f} ms at 16, {t256 * 1e3:.2f} ms at 256"
    k16, k256 = (hf_tools.kinlm_seconds_per_token(model, ids, n, V) for ids in (short, long))
    print(f"cvfp: transformers {t16 * 1e3:.3f} ms/token (prefix 16), {t256 * 1e3:.3f} ms (prefix 256); "
          f"kinlm {k16 * 1e3:.3f} ms (prefix 16), {k256 * 1e3:.3f} ms (prefix 256, re-running block_size 128); "
          f"ratio transformers/kinlm at 16: {t16 / k16:.2f}")
