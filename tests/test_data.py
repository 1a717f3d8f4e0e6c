"""Tests of kinlm's data layer: sources, tokenizers, packing/caching and the block sampler.
Offline, no /work/shared reads; the whole file runs in well under a minute on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import ClassVar, Iterator, Literal

import numpy as np
import pytest
from pydantic import ValidationError

from kinlm_core.api import SPLITS, DataSourceConfig, Tokenizer
from kinlm_core.data import BlockSampler, Prepared, prepare_data
from kinlm_core.data.sources import (EmbeddedConfig, HFConfig, JsonlConfig, ParquetConfig, TextFilesConfig,
                                     DATA_SOURCES)
from kinlm_core.data.tokenizers import (BPEConfig, ByteConfig, CharConfig, HFTokenizerConfig, TiktokenConfig,
                                        WordConfig, TOKENIZERS)

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
        "Caf\u00e9 na\u00efve \u2014 \U0001F600 emoji and unicode.\n")


def docs_of(src, split):
    return list(src.documents(split))


# --- sources ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("corpus", ["tinyshakespeare", "wiki_sample"])
def test_embedded_splits_disjoint_and_deterministic(corpus):
    src = EmbeddedConfig(corpus=corpus)
    splits = {s: docs_of(src, s) for s in SPLITS}
    assert all(splits[s] for s in SPLITS)
    assert splits == {s: docs_of(EmbeddedConfig(corpus=corpus), s) for s in SPLITS}
    sets = {s: set(d) for s, d in splits.items()}
    if corpus == "tinyshakespeare":  # short speeches ("All:\nSpeak.") can repeat, so compare positions
        n = [len(splits[s]) for s in SPLITS]
        assert n[0] > 15 * n[1] and abs(n[1] - n[2]) <= 1
    else:
        assert not (sets["train"] & sets["validation"]) and not (sets["validation"] & sets["test"])
        assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (60, 31, 31)
        assert all(d.startswith("= ") for d in splits["validation"])  # articles start at their title
        assert "\r" not in splits["test"][0]
    assert len(docs_of(EmbeddedConfig(corpus=corpus, max_docs=3), "train")) == 3
    assert src.fingerprint() == EmbeddedConfig(corpus=corpus).fingerprint() != EmbeddedConfig(corpus=corpus, max_docs=3).fingerprint()


def test_embedded_docstring_names_it_not_wikitext():
    assert "NOT WikiText-2" in EmbeddedConfig.__doc__


def test_text_files_holdout_and_explicit(tmp_path):
    for i in range(3):
        (tmp_path / f"a{i}.txt").write_text("\n\n".join(f"doc {i}-{j}" for j in range(30)))
    src = TextFilesConfig(train=[str(tmp_path / "a*.txt")], holdout=0.1)
    got = {s: docs_of(src, s) for s in SPLITS}
    assert len(got["train"]) == 72 and len(got["validation"]) == 9 and len(got["test"]) == 9
    assert not (set(got["train"]) & set(got["validation"])) and not (set(got["validation"]) & set(got["test"]))
    assert sorted(sum(got.values(), [])) == sorted(f"doc {i}-{j}" for i in range(3) for j in range(30))
    fp = src.fingerprint()
    (tmp_path / "v.txt").write_text("valid line one\nvalid line two\n")
    src2 = TextFilesConfig(train=[str(tmp_path / "a0.txt")], validation=[str(tmp_path / "v.txt")], split_on="line")
    assert docs_of(src2, "validation") == ["valid line one", "valid line two"]
    assert len(docs_of(src2, "train")) + len(docs_of(src2, "test")) == 30  # 30 non-empty lines in a0.txt
    (tmp_path / "a0.txt").write_text("changed")
    assert src.fingerprint() != fp
    with pytest.raises(ValueError, match="no file matches"):
        docs_of(TextFilesConfig(train=[str(tmp_path / "missing*.txt")]), "train")


def test_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"document number {i}", "id": i} for i in range(60)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for src in (JsonlConfig(path=str(tmp_path / "d.jsonl")), ParquetConfig(path=str(tmp_path / "d.parquet"))):
        got = {s: docs_of(src, s) for s in SPLITS}
        assert all(got.values()) and sum(map(len, got.values())) == 60
    split_src = ParquetConfig(path={"train": str(tmp_path / "d.parquet"), "validation": str(tmp_path / "d.parquet")})
    assert len(docs_of(split_src, "validation")) == 60 and len(docs_of(split_src, "test")) == 3
    with pytest.raises(ValueError, match="set text_field"):
        docs_of(JsonlConfig(path=str(tmp_path / "d.jsonl"), text_field="body"), "train")


FINEWEB_COLUMNS = ["text", "id", "dump", "url", "file_path", "language", "language_score", "token_count", "score", "int_score"]


def write_fineweb_like(path, n=40):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dict(text=f"Educational text number {i}. Photosynthesis converts light into chemical energy.",
                 id=f"<urn:uuid:{i:08d}>", dump="CC-MAIN-2024-10", url=f"https://example.org/{i}",
                 file_path="s3://x/y.warc.gz", language="en", language_score=0.97, token_count=17,
                 score=3.1, int_score=3) for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_hf_source_on_local_parquet(tmp_path):
    write_fineweb_like(tmp_path / "shard0.parquet")
    src = HFConfig(path="parquet", data_files=str(tmp_path / "*.parquet"), holdout_docs=5)
    src.check_available()
    got = {s: docs_of(src, s) for s in SPLITS}
    assert [len(got[s]) for s in SPLITS] == [30, 5, 5]
    assert got["validation"][0].startswith("Educational text number 0.")
    assert got["test"][0].startswith("Educational text number 5.")
    shuffled = HFConfig(path="parquet", data_files=str(tmp_path / "*.parquet"), holdout_docs=5, streaming=True,
                        shuffle_buffer=8, max_docs=10)
    assert len(docs_of(shuffled, "train")) == 10 and set(docs_of(shuffled, "train")) <= set(got["train"])
    with pytest.raises(ValueError, match="no file matches"):
        HFConfig(path="parquet", data_files=str(tmp_path / "nope*.parquet")).check_available()


def test_hf_source_offline_error_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    src = HFConfig(path="kinlm-test/definitely-not-cached", name="x", streaming=True)
    for call in (src.check_available, lambda: docs_of(src, "train")):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and "kinlm-test/definitely-not-cached" in msg and '"type": "parquet"' in msg


def test_every_source_has_docs_for_all_splits(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(f"line {i}" for i in range(100)))
    write_fineweb_like(tmp_path / "f.parquet", n=100)
    (tmp_path / "f.jsonl").write_text("".join(json.dumps({"text": f"j {i}"}) + "\n" for i in range(100)))
    srcs = [EmbeddedConfig(max_docs=5), EmbeddedConfig(corpus="wiki_sample", max_docs=2),
            TextFilesConfig(train=[str(tmp_path / "t.txt")], split_on="line"), JsonlConfig(path=str(tmp_path / "f.jsonl")),
            ParquetConfig(path=str(tmp_path / "f.parquet")),
            HFConfig(path="parquet", data_files=str(tmp_path / "f.parquet"), holdout_docs=3)]
    assert {type(s) for s in srcs} == set(DATA_SOURCES)
    for src in srcs:
        for s in SPLITS:
            d = docs_of(src, s)
            assert d and all(isinstance(x, str) and x for x in d), (src.type, s)
        assert isinstance(src.fingerprint(), str)


def test_configs_follow_conventions():
    for cls in DATA_SOURCES + TOKENIZERS:
        assert cls.summary() and "\n" not in cls.summary()
        assert cls.model_fields["type"].default == cls.component_name()
        for name, f in cls.model_fields.items():
            assert name == "type" or f.description, (cls.__name__, name)
    with pytest.raises(ValidationError, match=r"corpus\n  Input should be 'tinyshakespeare' or 'wiki_sample'"):
        EmbeddedConfig(corpus="wikitext")
    with pytest.raises(ValidationError, match=r"unknown\n  Extra inputs are not permitted"):
        ByteConfig(unknown=1)


def test_config_modules_do_not_import_heavy_libraries():
    code = ("import sys, kinlm_core.data, kinlm_core.data.sources, kinlm_core.data.tokenizers; "
            "print([m for m in ('torch', 'transformers', 'datasets', 'tokenizers', 'tiktoken', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# --- tokenizers ------------------------------------------------------------------------------------


def train_texts():
    return iter(TEXT.split("\n\n"))


def raising():
    raise AssertionError("train_texts must not be called")


def test_byte_and_char_round_trip(tmp_path):
    for cfg in (ByteConfig(), CharConfig()):
        tok = cfg.build(train_texts, tmp_path)
        assert isinstance(tok, Tokenizer)
        ids = tok.encode(TEXT)
        assert tok.decode(ids) == TEXT and max(ids) < tok.vocab_size and tok.eos_id == tok.vocab_size - 1
        assert tok.encode_batch([TEXT, "ab"]) == [ids, tok.encode("ab")]
    char = CharConfig().build(raising, tmp_path)  # cached vocabulary: no retraining
    assert char.encode("Z")[0] == char.unk_id and ByteConfig().build(raising, tmp_path).vocab_size == 257


def test_word_tokenizer_unk_and_vocab(tmp_path):
    tok = WordConfig(vocab_size=8).build(train_texts, tmp_path)
    assert tok.vocab_size == 8 and (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    ids = tok.encode("ALL: zebra")
    assert ids[1] == tok.unk_id and ids[0] != tok.unk_id  # "all:" is frequent; lowercased
    assert tok.decode(tok.encode("First citizen:")) == "first citizen:"
    cased = WordConfig(vocab_size=50, lowercase=False).build(train_texts, tmp_path)
    assert cased.encode("All:") != [cased.unk_id] and cased.encode("all:") == [cased.unk_id]


def test_bpe_round_trip_and_cache(tmp_path):
    cfg = BPEConfig(vocab_size=300, min_frequency=1)
    tok = cfg.build(train_texts, tmp_path)
    assert tok.vocab_size <= 300 and tok.eos_id is not None
    for text in (TEXT, "unseen \u00fc\u00df text \U0001F680 !"):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(TEXT)) < len(TEXT.encode())
    again = cfg.build(raising, tmp_path)
    assert again.fingerprint == tok.fingerprint and again.encode(TEXT) == tok.encode(TEXT)
    assert list(tmp_path.glob("bpe-*/tokenizer.json"))
    assert BPEConfig(vocab_size=280, min_frequency=1).build(train_texts, tmp_path).fingerprint != tok.fingerprint


def test_hf_tokenizer_local_folder_and_missing(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from transformers import PreTrainedTokenizerFast

    bpe = BPEConfig(vocab_size=300, min_frequency=1).build(train_texts, tmp_path)
    PreTrainedTokenizerFast(tokenizer_object=bpe.tok, eos_token="<|endoftext|>").save_pretrained(tmp_path / "tok")
    tok = HFTokenizerConfig(path=str(tmp_path / "tok")).build(raising, tmp_path)
    assert tok.encode(TEXT) == bpe.encode(TEXT) and tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.eos_id == bpe.eos_id and tok.encode_batch(["ab", TEXT])[1] == bpe.encode(TEXT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="cannot load") as e:
        HFTokenizerConfig(path="kinlm-test/not-a-tokenizer").build(raising, tmp_path)
    assert "\n" not in str(e.value)


def test_tiktoken_offline_error_or_success(tmp_path):
    pytest.importorskip("tiktoken")
    try:
        tok = TiktokenConfig(pad_vocab_to=50304).build(raising, tmp_path)
    except ValueError as e:  # offline and not cached: must be one clear line
        assert "\n" not in str(e) and "go online once" in str(e)
        return
    assert (tok.vocab_size, tok.eos_id) == (50304, 50256) and tok.decode(tok.encode(TEXT)) == TEXT


# --- packing ---------------------------------------------------------------------------------------


class CountingSource(DataSourceConfig):
    """Test source that counts documents() calls."""

    type: Literal["counting"] = "counting"
    calls: ClassVar[list] = []

    def documents(self, split: str) -> Iterator[str]:
        CountingSource.calls.append(split)
        n = {"train": 40, "validation": 6, "test": 5}[split]
        return iter(f"{split} document {i}: " + "lorem ipsum dolor " * (i % 4 + 1) for i in range(n))


def test_prepare_shapes_targets_and_cache(tmp_path):
    B = 16
    logs: list[str] = []
    p = prepare_data(CountingSource(), ByteConfig(), B, tmp_path, log=logs.append)
    assert isinstance(p, Prepared) and not p.cache_hit and p.tokenizer.vocab_size == 257
    stream = np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8).astype(np.int64), 256)
                             for d in CountingSource().documents("train")])
    rows = p.blocks("train")
    assert rows.dtype == np.uint16 and rows.shape == ((len(stream) - 1) // B, B + 1)
    for r in (0, 1, len(rows) - 1):
        assert np.array_equal(rows[r], stream[r * B: r * B + B + 1])
    assert np.array_equal(rows[:-1, -1], rows[1:, 0])  # stride B: the last target is the next row's first input
    assert p.tokenizer.decode(rows[0][:-1]) == stream_text(stream[:B])
    train_bytes = sum(len(d.encode()) for d in CountingSource().documents("train"))
    assert p.bytes_per_token["train"] == pytest.approx(train_bytes / len(stream))
    assert all(p.blocks(s).shape[0] >= 1 for s in SPLITS) and len(logs) == 3

    CountingSource.calls.clear()
    q = prepare_data(CountingSource(), ByteConfig(), B, tmp_path, log=None)
    assert q.cache_hit and CountingSource.calls == [] and q.cache_dir == p.cache_dir
    assert np.array_equal(q.blocks("train"), rows) and q.bytes_per_token == p.bytes_per_token
    assert prepare_data(CountingSource(), ByteConfig(), B + 1, tmp_path, log=None).cache_dir != p.cache_dir
    with pytest.raises(ValueError, match="lower block_size"):
        prepare_data(CountingSource(), ByteConfig(), 10_000, tmp_path, log=None)


def stream_text(ids):
    return bytes(int(i) for i in ids if i < 256).decode()


def test_prepare_bpe_cache_does_not_retokenize_or_retrain(tmp_path, monkeypatch):
    src = EmbeddedConfig(max_docs=200)
    cfg = BPEConfig(vocab_size=400)
    p = prepare_data(src, cfg, 32, tmp_path, log=None)
    assert not p.cache_hit and p.blocks("validation").shape[1] == 33
    assert p.bytes_per_token["train"] > 1.5

    def boom(*a, **k):
        raise AssertionError("must not tokenize or train on a cache hit")

    from kinlm_core.data.tokenizers import HFTokenizersTokenizer

    monkeypatch.setattr(EmbeddedConfig, "documents", boom)
    monkeypatch.setattr(HFTokenizersTokenizer, "encode_batch", boom)
    q = prepare_data(src, cfg, 32, tmp_path, log=None)
    assert q.cache_hit and q.tokenizer.fingerprint == p.tokenizer.fingerprint
    assert np.array_equal(q.blocks("test"), p.blocks("test"))


def test_prepare_uint32_for_big_vocab(tmp_path):
    class BigTok(Tokenizer):
        vocab_size, eos_id, fingerprint = 70_000, 69_999, "big"

        def encode(self, text):
            return [60_000 + (ord(c) % 100) for c in text]

    class BigCfg(ByteConfig):
        def build(self, train_texts, cache_dir):
            return BigTok()

    p = prepare_data(EmbeddedConfig(max_docs=20), BigCfg(), 8, tmp_path, splits=("train",), log=None)
    assert p.blocks("train").dtype == np.uint32 and p.blocks("train").max() == 69_999
    with pytest.raises(ValueError, match="not prepared"):
        p.blocks("test")


# --- sampler ---------------------------------------------------------------------------------------


def take(sampler, n):
    return [sampler.next_indices() for _ in range(n)]


def test_sampler_deterministic_epochs_and_resume():
    a, b = BlockSampler(100, 8, seed=3), BlockSampler(100, 8, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(take(a, 30), take(b, 30)))
    first_epoch = np.concatenate(take(BlockSampler(100, 10, seed=3), 10))
    assert sorted(first_epoch) == list(range(100))  # one epoch = a permutation
    assert not np.array_equal(first_epoch, np.concatenate(take(BlockSampler(100, 10, seed=4), 10)))

    s = BlockSampler(100, 8, seed=7)
    take(s, 5)  # mid-epoch
    state = json.loads(json.dumps(s.state_dict()))
    assert state["epoch"] == 0 and state["position"] == 5
    expected = take(s, 20)
    resumed = BlockSampler(100, 8, seed=7)
    resumed.load_state_dict(state)
    assert all(np.array_equal(x, y) for x, y in zip(expected, take(resumed, 20)))
    with pytest.raises(ValueError, match="batch_size"):
        BlockSampler(100, 4, seed=7).load_state_dict(state)


def test_sampler_two_ranks_disjoint_and_wraparound():
    r0, r1 = BlockSampler(64, 4, seed=1, rank=0, world_size=2), BlockSampler(64, 4, seed=1, rank=1, world_size=2)
    e0, e1 = np.concatenate(take(r0, 8)), np.concatenate(take(r1, 8))  # one full epoch between them
    assert not set(e0) & set(e1) and sorted(np.concatenate([e0, e1])) == list(range(64))
    single = np.concatenate(take(BlockSampler(64, 4, seed=1), 16))
    assert np.array_equal(np.concatenate([np.concatenate(p) for p in zip(e0.reshape(8, 4), e1.reshape(8, 4))]), single)
    small = BlockSampler(3, 8, seed=0)
    batch = small.next_indices()
    assert batch.shape == (8,) and set(batch) == {0, 1, 2}
    assert small.epoch == 2  # the next batch starts at index 8 from a 3-row stream


def test_hf_source_drops_blank_lines_and_joins_chats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": t} for t in ["A heading", " \n", "", "Body text."] * 4]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "wiki.parquet")
    src = HFConfig(path="parquet", data_files=str(tmp_path / "wiki.parquet"), holdout_docs=2)
    assert docs_of(src, "train") == ["A heading", "Body text."] * 3  # WikiText's blank lines are no documents
    chats = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Yes."}]}
             for i in range(6)]
    pq.write_table(pa.Table.from_pylist(chats), tmp_path / "chat.parquet")
    chat = dict(path="parquet", data_files=str(tmp_path / "chat.parquet"), text_field="messages", holdout_docs=1)
    assert docs_of(HFConfig(**chat, messages="content"), "train")[0] == "Question 2?\nYes."  # 0 and 1 are held out
    assert docs_of(HFConfig(**chat, messages="role_content"), "train")[0] == "user: Question 2?\nassistant: Yes."
    with pytest.raises(ValueError, match='holds lists .*set "messages"'):
        docs_of(HFConfig(**chat), "train")
