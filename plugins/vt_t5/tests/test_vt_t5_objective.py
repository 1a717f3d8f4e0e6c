"""The hybrid_tasks objective: batches, levels, shares, the loss; the curriculum's phases; the
representation regularizer; the probe."""

import json

import numpy as np
import pytest
import torch

from kinlm_core import IGNORE_INDEX
from kinlm_core.testing import ByteTokenizer
from kinlm_vt_t5.config import HybridConfig, HybridTasksConfig, ProbeConfig, RepresentationConfig, T5Config, VTEmbeddingsConfig
from kinlm_vt_t5.tasks import DOMAINS, complexity

DOC = ("The children were playing in the garden because the sun was shining. However, their mother had been "
       "watching them carefully from the kitchen window. She decided that they should come inside before the rain "
       "started. Everyone agreed, although the youngest boy complained loudly about it.")
SIMPLE = ("The cat sat on the mat and it was a good day for the cat. The dog sat on the mat and it was a good day "
          "for the dog. The man and the woman had a day at work and it was a good day.")
HARD = ("Notwithstanding institutional considerations, the theoretical conceptualization of epistemological "
        "frameworks, which had been systematically misinterpreted, nevertheless necessitates reconsideration. "
        "Consequently, although methodological disagreements persist, interdisciplinary investigations have "
        "been undertaken whereas multidimensional characterizations remain underdeveloped.")

T5_TINY = {"type": "t5", "preset": "t5-tiny", "overrides": {"d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16}}


class Data:
    """The two things bind_data reads: documents(split) (token arrays) and the tokenizer."""

    def __init__(self, texts, tok):
        self.tokenizer, self._docs = tok, [np.asarray(tok.encode(t) + [tok.eos_id]) for t in texts]

    def documents(self, split):
        return self._docs


def build(**kw):
    cfg = HybridTasksConfig(**kw)
    tok = cfg.extend_tokenizer(ByteTokenizer())
    return cfg, tok, cfg.build(tok)


def test_collate_makes_a_valid_seq2seq_batch():
    cfg, tok, obj = build()
    data = Data([DOC, SIMPLE + " " + SIMPLE, HARD + " " + HARD], tok)
    obj.bind_data(data)
    b = obj.collate(data.documents("train"), np.random.default_rng(0))
    B = b["input_ids"].shape[0]
    assert b["task_domain"].tolist().count(0) == 3 and B >= 9         # a general task per document, and more
    assert b["attention_mask"].shape == b["input_ids"].shape and b["decoder_input_ids"].shape == b["labels"].shape
    for i in range(B):
        n, m = int(b["attention_mask"][i].sum()), int(b["decoder_attention_mask"][i].sum())
        assert b["input_ids"][i, n - 1] == tok.eos_id and (b["input_ids"][i, n:] == tok.pad_id).all()
        assert b["labels"][i, m - 1] == tok.eos_id and (b["labels"][i, m:] == IGNORE_INDEX).all()
        assert b["decoder_input_ids"][i, 0] == tok.pad_id
        assert torch.equal(b["decoder_input_ids"][i, 1:m], b["labels"][i, :m - 1])
        if b["task_domain"][i] == 0:  # general: the same sentinels, in order, in input and target
            s_in = [t for t in b["input_ids"][i].tolist() if t in tok.sentinel_ids]
            s_out = [t for t in b["labels"][i].tolist() if t in tok.sentinel_ids]
            assert s_in == s_out == list(tok.sentinel_ids[:len(s_in)]) and s_in
    # target bytes: the UTF-8 bytes of every target text (byte tokenizer: one byte per scored text token)
    text_targets = sum(int(((b["labels"][i] >= 0) & (b["labels"][i] < 256)).sum()) for i in range(B))
    assert float(b["target_bytes"]) == text_targets


def test_levels_progress_and_general_share_filter_tasks():
    texts = [SIMPLE + " " + SIMPLE, DOC, HARD + " " + HARD] * 2
    cfg, tok, obj = build(progress=0.0, general_share=0.0)
    data = Data(texts, tok)
    obj.bind_data(data)
    assert set(obj.cuts) == {"morphological", "syntactic", "semantic"}
    kept = [obj.tasks_of(t, np.random.default_rng(0)) for t in texts]
    assert all(t.domain != "general" for ts in kept for t in ts)
    for text, ts in zip(texts, kept):   # level 0 only: the simplest third (morphology) of the documents
        c = complexity(text)
        for t in ts:
            assert c[t.domain] <= max(complexity(x)[t.domain] for x in texts)
            assert c[t.domain] < obj.cuts[t.domain][0]
    full = HybridTasksConfig().build(tok)
    full.bind_data(data)
    assert sum(map(len, kept)) < sum(len(full.tasks_of(t, np.random.default_rng(0))) for t in texts)
    _, _, quarter = build(general_share="dataset_quarter")
    quarter.bind_data(data)
    assert quarter.general_p == pytest.approx(min(1.0, (sum(quarter.counts.values()) // 4) / quarter.counts["general"]))
    one = HybridTasksConfig(per_document="one").build(tok)
    one.bind_data(data)
    assert one.collate(data.documents("train"), np.random.default_rng(0))["input_ids"].shape[0] == len(texts)


def test_loss_on_t5_counts_targets_logs_the_task_mix_and_tolerates_an_empty_batch():
    cfg, tok, obj = build()
    data = Data([DOC, HARD + " " + HARD], tok)
    obj.bind_data(data)
    torch.manual_seed(0)
    model = T5Config.model_validate(T5_TINY).build(tok.vocab_size)
    model.bind_tokenizer(tok)
    b = obj.collate(data.documents("train"), np.random.default_rng(1))
    r = obj.loss(model, b)
    assert r.targets == int((b["labels"] != IGNORE_INDEX).sum()) and r.bytes == float(b["target_bytes"])
    assert r.loss.item() == pytest.approx(float(r.nats) / r.targets, rel=1e-5)
    assert abs(r.loss.item() - np.log(tok.vocab_size)) < 1.0                    # random init: ~uniform
    shares = [float(r.metrics[f"task_{d}"]) for d in DOMAINS]
    assert sum(shares) == pytest.approx(1.0) and float(r.metrics["loss_general"]) > 0
    n_rows = (b["labels"] != IGNORE_INDEX).sum(1)
    per_domain = sum(float(r.metrics[f"loss_{d}"]) * int(n_rows[b["task_domain"] == i].sum())
                     for i, d in enumerate(DOMAINS) if f"loss_{d}" in r.metrics)
    assert per_domain == pytest.approx(float(r.nats), rel=1e-5)                  # the domains' losses add up
    assert float(r.metrics["rows"]) == int((n_rows > 0).sum())
    assert not any(k.startswith(("task_", "loss_", "rows")) for k in r.output.metrics)  # the model output is untouched
    empty = obj.collate([np.asarray(tok.encode("Too short.") + [tok.eos_id])], np.random.default_rng(0))
    r = obj.loss(model, empty)
    assert r.targets == 0 and r.loss.item() == 0.0
    with pytest.raises(ValueError, match="seq2seq model"):
        obj.loss(VTEmbeddingsConfig(inner={"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16,
                                           "block_size": 600}).build(tok.vocab_size), b)


def test_the_core_seq2seq_batch_on_hand_rows():
    from kinlm_core.objectives import seq2seq_batch

    b = seq2seq_batch([np.array([5, 6, 1]), np.array([7, 1])], [np.array([9, 1]), np.array([1])], 0, 3.0)
    assert b["input_ids"].tolist() == [[5, 6, 1], [7, 1, 0]] and b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].tolist() == [[9, 1], [1, IGNORE_INDEX]] and b["decoder_attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert b["decoder_input_ids"].tolist() == [[0, 9], [0, 1]]                 # shifted right, T5's pad start
    assert b["target_bytes"].item() == 3.0 and b["target_bytes"].dtype == torch.float64


def test_t5_token_noise_comes_from_the_core_span_corruption():
    cfg, tok, obj = build(general="t5_tokens", tasks=["general"])
    data = Data([DOC], tok)
    obj.bind_data(data)
    b = obj.collate(data.documents("train"), np.random.default_rng(0))
    assert b["input_ids"].shape[0] == 1
    n_mask = int(((b["labels"][0] >= 0) & (b["labels"][0] < 256)).sum())
    assert n_mask == round(0.15 * len(DOC.encode()))                          # T5: round(length * density) tokens


def test_hybrid_schedule_described_and_faithful():
    ph = HybridConfig().schedule(1000)
    assert [p.name for p in ph] == ["foundation", "curriculum-1", "curriculum-2", "curriculum-3", "curriculum-4",
                                    "integration"]
    assert [p.epochs for p in ph] == [3, 1, 1, 1, 1, 3]
    assert [p.order for p in ph] == ["sequential", "shuffle", "shuffle", "shuffle", "shuffle", "shuffle"]
    assert [p.objective.progress for p in ph] == [None, 0.0, 1 / 3, 2 / 3, 1.0, None]
    assert [p.objective.general_share for p in ph] == [1.0, 0.25, 0.25, 0.25, 0.25, 1.0]
    assert all(p.objective.unit() == "documents" and p.optim is None for p in ph)
    fc = HybridConfig(faithful_to_code=True, regularizers={"foundation": ["accel_penalty"]}).schedule(1000)
    assert [p.order for p in fc] == ["shuffle", "sequential", "sequential", "sequential", "sequential", "shuffle"]
    assert fc[1].objective.general_share == "dataset_quarter"
    assert fc[0].regularizers == ["accel_penalty"] and fc[1].regularizers is None
    with pytest.raises(ValueError, match="unknown phase"):
        HybridConfig(regularizers={"warmup": []})


def test_representation_is_lower_for_spread_states_than_for_collapsed_ones():
    from kinlm_core import ModelOutput

    fn = RepresentationConfig(require_vt_input=False).build()
    torch.manual_seed(0)
    spread = torch.randn(2, 16, 32)
    collapsed = torch.randn(1, 1, 32) + 0.05 * torch.randn(2, 16, 32)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    terms = [fn(ModelOutput(logits=None, hidden_states=(h,), encoder_hidden_states=(h,)),
                {"attention_mask": mask}, 0)["anti_collapse"] for h in (spread, collapsed)]
    assert terms[0] < 0.1 < 0.9 < terms[1]
    with pytest.raises(ValueError, match="no learnable VT input"):
        RepresentationConfig().build()(ModelOutput(logits=None, hidden_states=(spread,)), {}, 0)
    noop = RepresentationConfig(source_noop=True, weight=0.01).build()(ModelOutput(logits=None), {}, 0)
    assert noop["alpha_l2"].item() == pytest.approx(0.01) and not noop["alpha_l2"].requires_grad


def test_probe_separates_a_separable_toy_set(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"text": " ".join(rng.choice(["red", "apple", "fire", "rose"], 6)), "label": "warm"} for _ in range(40)]
    rows += [{"text": " ".join(rng.choice(["blue", "sea", "ice", "sky"], 6)), "label": "cold"} for _ in range(40)]
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    model = VTEmbeddingsConfig(inner={"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16, "block_size": 64}).build(257)
    out = ProbeConfig(path=str(path)).analyze(model, ByteTokenizer(), [], tmp_path / "probe")
    assert out["n_test"] == 24 and out["dim"] == 32
    assert out["base_accuracy"] >= 0.9 and out["vt_accuracy"] >= 0.9 and out["vt_f1_weighted"] >= 0.9
    assert json.loads((tmp_path / "probe" / "probe.json").read_text()) == out
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": "a", "label": "x"}) + "\n")
    with pytest.raises(ValueError, match="at least two labels"):
        ProbeConfig(path=str(tmp_path / "one.jsonl")).analyze(model, ByteTokenizer(), [], tmp_path)
