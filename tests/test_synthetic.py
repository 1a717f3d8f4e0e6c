"""The synthetic diagnostic tasks: each task's instances against its definition, determinism, disjoint
splits, the ids tokenizer, the supervised objective's batches and accuracy, the compression read-out,
and one tiny run end to end (eval/accuracy in metrics.jsonl, result.json and kinlm compare)."""

import json

import numpy as np
import pytest
import torch

from helpers import kinlm
from kinlm_core.data.synthetic import (IGNORE, CompressionReadoutConfig, IdsConfig, Supervised, SyntheticConfig,
                                       answer_accuracy)


def data(task, **kw):
    kw.setdefault("n_train", 40)
    kw.setdefault("n_validation", 10)
    kw.setdefault("n_test", 10)
    return SyntheticConfig(task=task, **kw)


def test_mqar_instances_follow_zoology_definition():
    V, T, P = 64, 32, 4
    x, y = data("associative_recall", vocab_size=V, seq_len=T, num_kv_pairs=P).examples("train")
    assert x.shape == y.shape == (40, T)
    for xi, yi in zip(x, y):
        keys, values = xi[0:2 * P:2], xi[1:2 * P:2]
        assert len(set(keys)) == P and len(set(values)) == P
        assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
        pos = np.flatnonzero(yi != IGNORE)
        assert len(pos) == P and (pos >= 2 * P).all() and ((pos - 2 * P) % 2 == 0).all()
        kv = dict(zip(keys.tolist(), values.tolist()))
        assert sorted(xi[pos].tolist()) == sorted(keys.tolist())  # every key queried once
        assert all(kv[int(xi[p])] == yi[p] for p in pos)  # ... and its label is its value


def test_mqar_without_random_fill_is_zero_between_queries():
    x, y = data("associative_recall", vocab_size=64, seq_len=32, num_kv_pairs=4, random_fill=False).examples("test")
    assert (x[:, 8:][y[:, 8:] == IGNORE] == 0).all()


def test_same_seed_same_instances_other_seed_others():
    a = data("noisy_recall", seq_len=32).examples("validation")
    b = data("noisy_recall", seq_len=32).examples("validation")
    c = data("noisy_recall", seq_len=32, seed=1).examples("validation")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_splits_are_disjoint_even_when_collisions_are_likely():
    # memorization with V = 8: 3 keys, 4 pairs a sequence -> 3^4 = 81 distinct sequences
    cfg = data("memorization", vocab_size=8, seq_len=8, n_train=50, n_validation=12, n_test=8)
    sets = {s: {tuple(r) for r in cfg.examples(s)[0]} for s in ("train", "validation", "test")}
    assert not sets["train"] & sets["validation"] and not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    with pytest.raises(ValueError, match="too few distinct instances"):
        data("memorization", vocab_size=8, seq_len=8, n_train=50, n_validation=60).examples("validation")


def test_noisy_recall_scores_values_of_keys_seen_before():
    V, noise = 24, 8
    x, y = data("noisy_recall", vocab_size=V, seq_len=40, noise_vocab_size=noise, frac_noise=0.3).examples("train")
    n = V - noise
    assert ((x >= n) & (x < V)).any()  # noise present
    for xi, yi in zip(x, y):
        for p in np.flatnonzero(yi != IGNORE):
            key = xi[p]  # the label at a key's position is the value that follows it
            assert key < n // 2 and n // 2 <= yi[p] < n
            earlier = [t for t in range(p) if xi[t] == key and t + 1 < len(xi) and xi[t + 1] == yi[p]]
            assert earlier, "a scored value must repeat an earlier pair"
        assert yi[-1] != IGNORE  # the final probe


def test_selective_copy_labels_are_the_tokens_before_the_copy_token():
    V, T, n = 12, 30, 5
    x, y = data("selective_copy", vocab_size=V, seq_len=T, num_tokens_to_copy=n).examples("train")
    for xi, yi in zip(x, y):
        c = int(np.flatnonzero(xi == V - 1)[0])
        assert c == T - n - 1 and (xi[c + 1:] == V - 2).all()
        to_copy = xi[:c][xi[:c] != V - 2]
        assert len(to_copy) == n and np.array_equal(yi[c + 1:], to_copy) and (yi[:c + 1] == IGNORE).all()


def test_memorization_uses_one_map_for_every_instance_and_split():
    cfg = data("memorization", vocab_size=32, seq_len=16)
    facts = {}
    for s in ("train", "test"):
        x, y = cfg.examples(s)
        assert (x[:, 1::2] == 31).all() and (y[:, 0::2] == IGNORE).all()
        for k, v in zip(x[:, 0::2].ravel(), y[:, 1::2].ravel()):
            assert facts.setdefault(int(k), int(v)) == v


def test_compression_labels_are_the_sequence():
    x, y = data("compression", vocab_size=10, seq_len=12).examples("train")
    assert np.array_equal(x[:, :-1], y[:, :-1]) and (x[:, -1] == 9).all() and (x[:, :-1] < 9).all()
    assert (y[:, -1] == IGNORE).all()  # the compression token's own position is not scored


def test_fuzzy_recall_test_keys_have_the_longest_motif_and_labels_repeat_values():
    x, y = data("fuzzy_recall", vocab_size=16, seq_len=48, k_motif_size=2, v_motif_size=2).examples("test")
    for xi, yi in zip(x, y):
        assert yi[-1] != IGNORE and 7 <= yi[-1] < 15  # the probe's last value token
        # labels are next tokens: a scored label at t is the input at t+1
        pos = np.flatnonzero(yi[:-1] != IGNORE)
        assert np.array_equal(yi[pos], xi[pos + 1])


def test_mad_recall_trains_on_every_next_token_and_evaluates_answers():
    cfg = data("noisy_recall", vocab_size=24, seq_len=16, noise_vocab_size=8)
    train = [list(map(int, d.split())) for d in cfg.documents("train")]
    val = [list(map(int, d.split())) for d in cfg.documents("validation")]
    x, y = np.array(train[0][:16]), np.array(train[0][16:])
    assert np.array_equal(y[1:-1], x[2:]) and y[0] == 24  # train: every next token (MAD) but the first
    assert 24 in val[0][16:]  # validation: unscored labels written as V
    answers = data("noisy_recall", vocab_size=24, seq_len=16, noise_vocab_size=8, train_targets="answers")
    assert [int(t) for t in next(answers.documents("train")).split()][16:].count(24) > 0  # answers only


def test_bad_knobs_name_the_problem():
    with pytest.raises(ValueError, match="4 x num_kv_pairs <= seq_len"):
        SyntheticConfig(task="associative_recall", seq_len=16, num_kv_pairs=5)
    with pytest.raises(ValueError, match="2 x num_tokens_to_copy"):
        SyntheticConfig(task="selective_copy", seq_len=16, num_tokens_to_copy=8)


def test_ids_tokenizer_vocabulary_and_padding():
    docs = ["3 1 4", "1 5 9 2"]
    tok = IdsConfig().build(lambda: iter(docs), None)
    assert tok.vocab_size == 10 and tok.pad_id == 9 and tok.eos_id is None
    assert tok.encode("9 0 2") == [9, 0, 2] and tok.decode([4, 2]) == "4 2"
    with pytest.raises(ValueError, match=r"id 10 is outside the vocabulary \[0, 10\)"):
        tok.encode("1 10")
    assert IdsConfig(vocab_size=32, pad="none").build(lambda: iter(docs), None).pad_id is None


def test_supervised_batch_and_accuracy_by_hand():
    tok = IdsConfig(vocab_size=6).build(lambda: iter([]), None)  # pad = 5
    obj = Supervised(tok)
    b = obj.collate([np.array([1, 2, 3, 5, 4, 5]), np.array([0, 0, 1, 2, 5, 5])])
    assert b["input_ids"].tolist() == [[1, 2, 3], [0, 0, 1]]
    assert b["labels"].tolist() == [[-100, 4, -100], [2, -100, -100]]
    logits = torch.zeros(2, 3, 6)
    logits[0, 1, 4] = 1.0  # right
    logits[1, 0, 3] = 1.0  # wrong (label 2)
    assert answer_accuracy(logits, b["labels"]) == 0.5
    with pytest.raises(ValueError, match="train.block_size to at least 2 x seq_len - 1"):
        obj.collate([np.array([1, 2, 3])])


def test_compression_readout_sees_only_the_last_hidden_state():
    torch.manual_seed(0)
    cfg = CompressionReadoutConfig(inner={"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16, "block_size": 16})
    m = cfg.build(11).eval()
    x = torch.randint(0, 10, (2, 8))
    out = m(x)
    assert out.logits.shape == (2, 8, 11)
    code = m.inner(x, output_hidden_states=True).hidden_states[-1][:, -1]  # (B, C)
    by_hand = m.unembed(m.norm(m.decoder(code[:, None, :] + m.positions[:8])))
    assert torch.allclose(out.logits, by_hand, atol=1e-6)
    out.logits.sum().backward()
    grads = {n: p.grad for n, p in m.inner.named_parameters() if p.grad is not None}
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("blocks"))  # the encoder trains


SPEC = {
    "name": "syn", "seed": 3,
    "data": {"type": "synthetic", "task": "associative_recall", "vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2,
             "n_train": 64, "n_validation": 16, "n_test": 16},
    "tokenizer": {"type": "ids"}, "objective": {"type": "supervised"},
    "model": {"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16, "block_size": 16},
    "train": {"max_steps": 4, "batch_size": 8, "block_size": 32, "lr": 3e-3, "warmup_steps": 1,
              "checkpoint_every": 4, "log_every": 2},
    "eval": {"every": 2, "batches": 2}, "generate": [], "analyzers": [],
}


@pytest.mark.slow
def test_run_reports_eval_accuracy_everywhere(tmp_path):
    spec = tmp_path / "syn.json"
    spec.write_text(json.dumps(SPEC))
    env = {"KINLM_CACHE": str(tmp_path / "cache")}
    r = kinlm("run", str(spec), "--run-dir", str(tmp_path / "run"), "--threads", "1", env=env)
    assert r.returncode == 0, r.stderr
    evals = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "eval/loss" in ln]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(0.0 <= e["eval/accuracy"] <= 1.0 and "eval/bpb" not in e for e in evals)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["eval/accuracy"] == evals[-1]["eval/accuracy"]
    # 16 validation examples x 2 answers = 32 scored targets
    assert result["objective"] == "supervised"
    c = kinlm("compare", str(tmp_path / "run"), "--json", env=env)
    assert c.returncode == 0, c.stderr
    md = kinlm("compare", str(tmp_path / "run"), env=env).stdout
    header = next(ln for ln in md.splitlines() if ln.startswith("| rank"))
    assert header.rstrip(" |").endswith("accuracy")
    row = next(ln for ln in md.splitlines() if ln.startswith("| 1 "))
    assert row.rstrip(" |").split("|")[-1].strip() == f"{result['eval/accuracy']:.3f}"


def test_bad_task_knobs_in_a_spec_exit_2(tmp_path):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({**SPEC, "data": {**SPEC["data"], "num_kv_pairs": 5}}))
    r = kinlm("validate", str(spec))
    assert r.returncode == 2 and "data" in r.stderr and "4 x num_kv_pairs <= seq_len" in r.stderr
    assert "Traceback" not in r.stderr


def test_conv_attention_is_causal_and_uses_order_without_position_embeddings():
    from kinlm_core.data.synthetic import ConvAttentionConfig

    torch.manual_seed(0)
    m = ConvAttentionConfig(d_model=16, n_layer=2, n_head=2).build(11).eval()
    x = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
    y = x.clone()
    y[0, 6] = 0
    a, b = m(x).logits, m(y).logits
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6) and not torch.allclose(a[:, 6:], b[:, 6:])
    # the convolution gives order: swapping two earlier tokens changes the last position's logits
    z = x.clone()
    z[0, [2, 3]] = x[0, [3, 2]]
    assert not torch.allclose(m(z).logits[:, -1], a[:, -1])


@pytest.mark.parametrize("task", ["associative_recall", "noisy_recall", "fuzzy_recall", "selective_copy",
                                  "compression", "memorization"])
def test_ids_tokenizer_built_on_train_reads_every_split(task):
    # whatever training scores (MAD's recall tasks: every next token), the training documents hold
    # the unscored marker V, so the vocabulary found there covers validation and test
    small = {"associative_recall": dict(vocab_size=64, seq_len=32), "noisy_recall": dict(vocab_size=24, seq_len=16),
             "fuzzy_recall": dict(vocab_size=16, seq_len=32, k_motif_size=2, v_motif_size=2),
             "selective_copy": dict(vocab_size=12, seq_len=16, num_tokens_to_copy=4),
             "compression": dict(vocab_size=10, seq_len=8), "memorization": dict(vocab_size=32, seq_len=8)}[task]
    cfg = data(task, **small)
    tok = IdsConfig().build(lambda: cfg.documents("train"), None)
    assert tok.vocab_size == small["vocab_size"] + 1 and tok.pad_id == small["vocab_size"]
    for split in ("validation", "test"):
        for d in cfg.documents(split):
            tok.encode(d)
