"""The transformers export of the cvfp inference network (issue #33): loaded without kinlm, it gives
kinlm's logits (float32, 1e-5) and greedy tokens (tied and untied heads, a frozen table), and generate
carries the O(1) context: the time per generated token does not grow with the prefix.
Through kinlm_core.testing.check_hf_export; the
tiny spec trained a few steps through the engine."""

import json
from pathlib import Path

import pytest
import torch

from kinlm_core.data.tokenizers import ByteTokenizer
from kinlm_core.testing import check_export_generate_time, check_hf_export, train_briefly
from kinlm_cvfp.config import CvfpConfig

pytestmark = pytest.mark.slow  # loads exports in a separate process: seconds each

TOK = ByteTokenizer()
V = TOK.vocab_size
SPECS = Path(__file__).resolve().parents[3] / "specs"

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
def test_variant_loads_without_kinlm_and_matches_logits_and_greedy(tmp_path, variant):
    batch = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(1))  # within block_size 64, where kinlm's sampler does not crop
    left = {"attention_mask": torch.tensor([[1] * 20, [0] * 3 + [1] * 17])}
    got = check_hf_export(tiny_model(**VARIANTS[variant]), TOK, tmp_path, prompt_ids=batch, max_new_tokens=6,
                          jobs=[{"do": "generate", "ids": batch, "max_new_tokens": 2, "kwargs": left}])
    assert "left padding" in got["jobs"][0]["error"]
    assert got["steps"] == [20] + [1] * 5                                # the state is carried, not the prefix


def test_tiny_spec_trained_exports_and_generate_time_does_not_grow_with_the_prefix(tmp_path):
    """specs/cvfp_tiny.json, 3 steps: kinlm's logits and greedy tokens, one token per generate step, and the
    same time per token after 256 tokens as after 16 (the README states the ratio to kinlm printed here)."""
    run = train_briefly(SPECS / "cvfp_tiny.json", tmp_path / "run")
    got = check_export_generate_time(run.model.float().eval(), run.tokenizer, tmp_path, spec=run.spec)
    print("cvfp:", got["summary"])
