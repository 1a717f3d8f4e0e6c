"""BLiMP: the shipped data, sentence scores against hand-computed log-probabilities (decoder-only and
seq2seq, padding and block_size truncation), accuracy by pair, the analyzer in a run, `kinlm eval
--blimp`, and agreement with the harness's scoring through the transformers export."""

import gzip
import json

import numpy as np
import pytest
import torch

from helpers import TINY, kinlm
from kinlm_core import ModelOutput, blimp
from kinlm_core.data.tokenizers import ByteTokenizer
from kinlm_core.objectives import with_sentinels
from kinlm_core.spec import SpecError, validate

SENTENCES = ["Who should Derek hug?", "A cat.", "These dogs were barking at the gate again.", "It is."]


class Bigram(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: log p(next | prev) is known in closed form."""

    def __init__(self, table: torch.Tensor, block_size=None):
        super().__init__()
        self.table = torch.nn.Parameter(table)
        self.block_size = block_size

    def forward(self, input_ids):
        return ModelOutput(logits=self.table[input_ids])


def by_hand(table: np.ndarray, ids: list[int]) -> float:
    logp = table - np.log(np.exp(table).sum(-1, keepdims=True))
    return float(sum(logp[a, b] for a, b in zip(ids[:-1], ids[1:])))


@pytest.fixture
def bigram():
    g = torch.Generator().manual_seed(0)
    return Bigram(torch.randn(257, 257, generator=g, dtype=torch.float64) * 2)


def test_shipped_paradigms_are_the_67_files_with_their_fields():
    files = sorted(p.name.removesuffix(".jsonl.gz") for p in blimp.DATA.glob("*.jsonl.gz"))
    assert files == sorted(blimp.PARADIGMS) and len(files) == 67
    counts = {f: sum(v == f for v in blimp.PARADIGMS.values()) for f in blimp.FIELDS}
    assert counts == {"morphology": 18, "syntax": 26, "semantics": 9, "syntax_semantics": 14}
    for name, field in blimp.PARADIGMS.items():
        with gzip.open(blimp.DATA / f"{name}.jsonl.gz", "rt") as fh:
            first = json.loads(fh.readline())
        assert first["UID"] == name and first["field"].replace("/", "_") == field
    assert len(blimp.load_pairs(["passive_1", "wh_island"], max_pairs=7)) == 14
    assert len(blimp.load_pairs(["passive_1"])) == 1000
    with pytest.raises(ValueError, match="unknown BLiMP paradigm 'pasive_1' \\(did you mean 'passive_1'\\?\\)"):
        blimp.load_pairs(["pasive_1"])


def test_sentence_scores_equal_hand_computed_log_probabilities(bigram):
    tok, table = ByteTokenizer(), bigram.table.detach().numpy()
    want = [by_hand(table, [tok.eos_id, *tok.encode(" " + s)]) for s in SENTENCES]
    # a small token budget: several batches, each padded to its longest sentence
    got, truncated = blimp.sentence_logprobs(bigram, tok, SENTENCES, batch_tokens=64, progress=False)
    assert truncated == 0
    np.testing.assert_allclose(got, want, rtol=1e-6)  # logits are scored in float32
    # a context of 8: the harness keeps the last 9 tokens and scores the last 8 of them
    bigram.block_size = 8
    got, truncated = blimp.sentence_logprobs(bigram, tok, SENTENCES, progress=False)
    cut = [by_hand(table, [tok.eos_id, *tok.encode(" " + s)][-9:]) for s in SENTENCES]
    np.testing.assert_allclose(got, cut, rtol=1e-6)  # logits are scored in float32
    assert truncated == 2  # " A cat." and " It is." fit: eos + 7 bytes


def test_accuracy_counts_pairs_by_field_and_paradigm_with_ties_as_correct(bigram):
    tok, table = ByteTokenizer(), bigram.table.detach().numpy()
    names = ["passive_1", "wh_island", "npi_present_1"]
    m = blimp.score(bigram, tok, names, max_pairs=10, progress=False)
    pairs = blimp.load_pairs(names, 10)
    hit = [by_hand(table, [256, *tok.encode(" " + p["good"])]) >= by_hand(table, [256, *tok.encode(" " + p["bad"])])
           for p in pairs]
    assert m["pairs"] == 30 and m["overall"] == pytest.approx(sum(hit) / 30)
    assert m["passive_1"] == pytest.approx(sum(hit[:10]) / 10)
    assert m["syntax"] == pytest.approx(sum(hit[:20]) / 20) and m["semantics"] == m["npi_present_1"]
    assert "morphology" not in m and list(m)[:3] == ["overall", "syntax", "semantics"]

    class Same(torch.nn.Module):  # every token equally likely: same-length pairs tie
        block_size = None

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids):
            return ModelOutput(logits=torch.zeros(*input_ids.shape, 257) + self.w)

    m = blimp.score(Same(), tok, ["passive_1"], max_pairs=20, progress=False)
    same_len = sum(len(p["good"]) == len(p["bad"]) for p in blimp.load_pairs(["passive_1"], 20))
    assert m["ties"] == same_len > 0


def test_seq2seq_scores_the_sentence_as_the_decoder_target():
    from kinlm_core.builtins.hf_config import TransformersConfig

    tok = with_sentinels(ByteTokenizer(), 4)
    cfg = {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_heads": 2,
           "decoder_start_token_id": tok.pad_id if tok.pad_id is not None else tok.eos_id}
    torch.manual_seed(0)
    model = TransformersConfig(config=cfg).build(tok.vocab_size).eval()
    hf, pad, s0 = model.hf, (tok.pad_id if tok.pad_id is not None else tok.eos_id), tok.sentinel_ids[0]
    got, _ = blimp.sentence_logprobs(model, tok, SENTENCES, batch_tokens=80, progress=False)
    for s, g in zip(SENTENCES, got):
        c = tok.encode(" " + s)
        labels = torch.tensor([[s0, *c]])
        dec = torch.tensor([[pad, s0, *c[:-1]]])
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([[s0, tok.eos_id]]), decoder_input_ids=dec).logits
        logp = torch.log_softmax(logits.float(), -1)[0, torch.arange(1, len(c) + 1), labels[0, 1:]]
        assert g == pytest.approx(float(logp.sum()), rel=1e-4)
    with pytest.raises(ValueError, match="needs a tokenizer with sentinel ids"):
        blimp.sentence_logprobs(model, ByteTokenizer(), SENTENCES, progress=False)


def test_analyzer_options_are_validated_where_they_come_from():
    spec = json.loads(json.dumps(TINY))
    spec["analyzers"] = [{"type": "blimp", "paradigms": ["wh_islands"]}]
    with pytest.raises(SpecError) as e:
        validate(spec, "s.json")
    assert "s.json: analyzers[0].paradigms" in str(e.value) and "did you mean 'wh_island'" in str(e.value)


@pytest.mark.slow
def test_blimp_in_a_run_and_kinlm_eval_agree_with_the_harness_scoring_of_the_export(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.loads(json.dumps(TINY))
    spec["train"]["max_steps"] = 3
    spec["analyzers"] = [{"type": "blimp", "paradigms": ["passive_1", "only_npi_scope"], "max_pairs": 30}]
    (tmp_path / "s.json").write_text(json.dumps(spec))
    env = {"KINLM_CACHE": str(tmp_path / "cache")}
    r = kinlm("run", str(tmp_path / "s.json"), "--run-dir", str(tmp_path / "run"), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "run/result.json").read_text())  # the timing compare reads
    assert result["tokens_seen"] == 3 * 4 * 32 and 0 < result["train_seconds"] <= result["wall_seconds"]
    assert result["tokens_per_s"] == pytest.approx(result["tokens_seen"] / result["train_seconds"], rel=1e-3)
    at_end = json.loads((tmp_path / "run/analysis/blimp/step_0000003/metrics.json").read_text())
    assert at_end["pairs"] == 60 and (tmp_path / "run/analysis/blimp/step_0000003/blimp.png").stat().st_size > 5000

    r = kinlm("eval", str(tmp_path / "run"), "--blimp", "--blimp-paradigms", "passive_1,only_npi_scope",
              "--blimp-max-pairs", "30", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert {k: v for k, v in out.items() if k.startswith("blimp/")} == {
        f"blimp/{k}": at_end[k] for k in ("overall", "syntax", "syntax_semantics", "passive_1", "only_npi_scope")}

    # the harness: context [eos], continuation tokenizer(" " + sentence), summed log-softmax
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run/final", local_files_only=True).eval()
    hft = AutoTokenizer.from_pretrained(tmp_path / "run/final", local_files_only=True)
    hits = []
    for p in blimp.load_pairs(["only_npi_scope", "passive_1"], 30):
        lp = []
        for s in (p["good"], p["bad"]):
            ids = [hft.eos_token_id, *hft(" " + s, add_special_tokens=False)["input_ids"]][-33:]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits[0].float(), -1)
            lp.append(float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum()))
        hits.append(lp[0] >= lp[1])
    assert out["blimp/overall"] == pytest.approx(sum(hits) / len(hits))
    assert out["blimp/only_npi_scope"] == pytest.approx(sum(hits[:30]) / 30)

    r = kinlm("eval", str(tmp_path / "run"), "--blimp", "--blimp-paradigms", "passive_1,adjunct_islnd", env=env)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "kinlm eval: --blimp-paradigms: unknown BLiMP paradigm 'adjunct_islnd' (did you mean 'adjunct_island'?)")
