"""Built-in data sources: configs that yield the text documents of the train/validation/test splits.

Torch-free and light at import: ``datasets``, ``pyarrow`` etc. are imported inside the methods that
need them. Every source implements ``documents(split)`` (an iterator of str) and ``fingerprint()``
(a string that changes when the data changes; the packing cache keys on it).
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import sys
from pathlib import Path
from typing import ClassVar, Iterable, Iterator, Literal

from pydantic import Field

from kinlm_core.api import SPLITS, DataSourceConfig
from kinlm_core.errors import DataError

CORPORA = Path(__file__).parent / "corpora"
_SPLIT_ON = Literal["file", "blank_line", "line"]


# --- helpers -----------------------------------------------------------------------------------


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def _open_text(path: str | Path):
    """Open a text file for reading; ``.gz`` / ``.xz`` are decompressed. Universal newlines (CRLF -> LF)."""
    p = str(path)
    if p.endswith(".gz"):
        return gzip.open(p, "rt", encoding="utf-8", errors="replace")
    if p.endswith(".xz"):
        return lzma.open(p, "rt", encoding="utf-8", errors="replace")
    return open(p, encoding="utf-8", errors="replace")


def _read_text(path: str | Path) -> str:
    with _open_text(path) as f:
        return f.read()


def _split_text(text: str, split_on: str) -> Iterator[str]:
    """Cut a file's text into documents: the whole file, blank-line-separated paragraphs, or lines."""
    if split_on == "file":
        parts: Iterable[str] = [text]
    elif split_on == "blank_line":
        parts = re.split(r"\n\s*\n", text)
    else:
        parts = text.splitlines()
    for p in parts:
        p = p.strip("\n") if split_on != "line" else p
        if p.strip():
            yield p


def _expand(patterns: str | list[str], field: str) -> dict[str, str]:
    """Expand glob patterns (``~`` allowed) into sorted, de-duplicated files, each mapped to the JSON
    path of the pattern that found it (``field``, or ``field[i]`` for a list); :class:`DataError` at
    that path when a pattern matches no file."""
    pats = [(field, patterns)] if isinstance(patterns, str) else [(f"{field}[{i}]", p) for i, p in enumerate(patterns)]
    files: dict[str, str] = {}
    for where, pat in pats:
        hits = sorted(glob.glob(os.path.expanduser(pat), recursive=True))
        hits = [h for h in hits if os.path.isfile(h)]
        if not hits:
            raise DataError(where, f"no file matches {pat!r}; check the path (globs like data/*.txt are allowed)")
        for h in hits:
            files.setdefault(h, where)
    return files


_SNIFF_BYTES = 8192


def _sniff_text(path: str) -> str | None:
    """Why the text file ``path`` (``.gz``/``.xz`` decompressed) cannot be read as UTF-8 text, judged by
    its first 8 KB: it is empty, binary (a NUL byte), not UTF-8, or not readable; None when it is text."""
    opener = gzip.open if path.endswith(".gz") else lzma.open if path.endswith(".xz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except (OSError, EOFError, lzma.LZMAError) as e:
        return f"cannot be read ({type(e).__name__}: {str(e)[:100]})"
    if not head:
        return "is empty"
    nul = head.find(b"\0")
    if nul >= 0:
        return f"is binary, not text (a NUL byte at offset {nul})"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if not (e.reason == "unexpected end of data" and len(head) == _SNIFF_BYTES):  # a character cut at 8 KB
            return (f"is not UTF-8 text (byte 0x{head[e.start]:02x} at offset {e.start}); convert it, e.g. "
                    f"iconv -f latin1 -t utf-8")
    return None


def _files_fingerprint(kind: str, cfg_json: str, groups: dict[str, list[str] | dict[str, str]]) -> str:
    """Config + every file's absolute path, size and mtime -> sha256 hex."""
    h = hashlib.sha256(f"{kind}\n{cfg_json}\n".encode())
    for name, files in groups.items():
        for f in files:
            st = os.stat(f)
            h.update(f"{name}\t{os.path.abspath(f)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _stride_holdout(docs: Iterable[str], split: str, holdout: float, held_splits: tuple[str, ...]) -> Iterator[str]:
    """Deterministic hold-out from one document stream: with k = round(1/holdout), document i goes to
    validation when ``i % k == k-1`` and to test when ``i % k == k-2`` (only for the splits in
    ``held_splits``, i.e. those without their own files); the train split gets the rest."""
    k = max(2 if len(held_splits) < 2 else 3, round(1 / holdout))
    slot = {"validation": k - 1, "test": k - 2}
    taken = {slot[s] for s in held_splits}
    for i, d in enumerate(docs):
        r = i % k
        if (split == "train" and r not in taken) or (split != "train" and r == slot[split]):
            yield d


def _capped(docs: Iterable[str], max_docs: int | None) -> Iterator[str]:
    for i, d in enumerate(docs):
        if max_docs is not None and i >= max_docs:
            return
        yield d


# --- embedded corpora --------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _embedded_splits(corpus: str) -> dict[str, tuple[str, ...]]:
    if corpus == "tinyshakespeare":
        docs = list(_split_text(_read_text(CORPORA / "input.txt.gz"), "blank_line"))
        a, b = int(len(docs) * 0.90), int(len(docs) * 0.95)
        return {"train": tuple(docs[:a]), "validation": tuple(docs[a:b]), "test": tuple(docs[b:])}
    train = _wiki_articles(_read_text(CORPORA / "valid.txt.gz"))
    test = _wiki_articles(_read_text(CORPORA / "wiki.test.raw.gz"))
    half = len(test) // 2
    return {"train": tuple(train), "validation": tuple(test[:half]), "test": tuple(test[half:])}


_TITLE = re.compile(r"^ = [^=].* = $")


def _wiki_articles(text: str) -> list[str]:
    """Split WikiText-format text into articles; an article starts at a line `` = Title = `` (one '=' each
    side; `` = = Section = = `` lines stay inside). Lines are stripped, empty ones dropped."""
    articles: list[list[str]] = []
    for line in text.splitlines():
        if _TITLE.match(line.rstrip("\r")) or not articles:
            articles.append([])
        if line.strip():
            articles[-1].append(line.strip())
    return ["\n".join(a) for a in articles if a]


class EmbeddedConfig(DataSourceConfig):
    """A small corpus shipped inside kinlm (works offline): Tiny Shakespeare or a Wikipedia sample.

    ``tinyshakespeare`` (karpathy/char-rnn, 1.1 MB): documents are the blank-line-separated speeches;
    the first 90% of documents are train, the next 5% validation, the last 5% test (contiguous, so
    the splits are disjoint and always the same).

    ``wiki_sample`` (~2.4 MB of Wikipedia text from the WikiText-2 release, CC BY-SA 3.0): documents are
    articles (they start at a `` = Title = `` line). Train = the ~60 articles of WikiText-2's
    *validation* split in its tokenized form (``<unk>`` for rare words, spaces around punctuation);
    validation = the first half and test = the second half of WikiText-2's *test* articles in raw form.
    WikiText-2's training split is not shipped, so this is NOT WikiText-2: call results "wiki_sample";
    perplexities on it are not comparable to published WikiText-2 numbers. Sources and licenses:
    ``kinlm_core/data/corpora/ATTRIBUTION.md``.
    """

    type: Literal["embedded"] = "embedded"
    corpus: Literal["tinyshakespeare", "wiki_sample"] = Field(
        "tinyshakespeare", description='which shipped corpus: "tinyshakespeare" or "wiki_sample" (not WikiText-2; see docs)')
    max_docs: int | None = Field(None, ge=1, description="use at most this many documents per split (None = all)")

    def documents(self, split: str) -> Iterator[str]:
        _check_split(split)
        return _capped(_embedded_splits(self.corpus)[split], self.max_docs)

    def fingerprint(self) -> str:
        sizes = [f"{p.name}:{p.stat().st_size}" for p in sorted(CORPORA.glob("*.gz"))]
        return hashlib.sha256((self.model_dump_json() + "|".join(sizes)).encode()).hexdigest()


# --- local files -------------------------------------------------------------------------------


class _SplitFiles:
    """Shared split logic of the file sources (a plain mixin: the configs declare the fields).
    Subclasses provide ``_patterns()`` (split -> glob or glob list, or None), ``_field(split)`` (the
    JSON path of that split's patterns under ``data``), ``_file_docs(path)``, ``_sniff(path)`` and
    ``holdout``. Every problem with a file is a :class:`DataError` at the pattern that found it."""

    _empty: ClassVar[str] = "holds no documents (it is empty or blank)"

    def _files(self, split: str) -> dict[str, str]:
        return _expand(self._patterns()[split], f"data.{self._field(split)}")

    def _docs_of(self, files: dict[str, str]) -> Iterator[str]:
        for f, where in files.items():
            n = 0
            try:
                for n, doc in enumerate(self._file_docs(f), 1):
                    yield doc
            except DataError:
                raise
            except ValueError as e:  # a bad row, a damaged file: at the pattern that found the file
                raise DataError(where, str(e)) from None
            if not n:
                raise DataError(where, f"{f} {self._empty}")

    def _split_docs(self, split: str) -> Iterator[str]:
        _check_split(split)
        pats = self._patterns()
        held = tuple(s for s in ("validation", "test") if not pats[s])
        if split != "train" and pats[split] or split == "train" and not held:
            return self._docs_of(self._files(split))
        return _stride_holdout(self._docs_of(self._files("train")), split, self.holdout, held)

    def documents(self, split: str) -> Iterator[str]:
        return _capped(self._split_docs(split), getattr(self, "max_docs", None))

    def fingerprint(self) -> str:
        groups = {s: self._files(s) for s, p in self._patterns().items() if p}
        return _files_fingerprint(self.type, self.model_dump_json(), groups)

    def _sniff(self, path: str) -> str | None:
        return _sniff_text(path)

    def check_available(self) -> None:
        """Before anything is built: every pattern matches a file, and no file is empty or binary."""
        for s, p in self._patterns().items():
            if p:
                for f, where in self._files(s).items():
                    problem = self._sniff(f)
                    if problem:
                        raise DataError(where, f"{f} {problem}")


class TextFilesConfig(_SplitFiles, DataSourceConfig):
    """Plain-text files (``.txt``, also ``.gz``/``.xz``) from glob patterns, one pattern list per split.

    Files are read in sorted order and cut into documents by ``split_on``. A split without patterns
    (validation or test) is held out of the train documents deterministically: with k =
    round(1/holdout), every document i with i % k == k-1 is validation and i % k == k-2 is test.
    """

    type: Literal["text_files"] = "text_files"
    train: list[str] = Field(..., min_length=1, description="glob patterns of the training files, e.g. ['data/*.txt']")
    validation: list[str] | None = Field(None, description="glob patterns of the validation files (None: hold out from train)")
    test: list[str] | None = Field(None, description="glob patterns of the test files (None: hold out from train)")
    holdout: float = Field(0.05, gt=0.0, lt=0.5, description="fraction of train documents held out for each split without files")
    split_on: _SPLIT_ON = Field("blank_line", description='document boundaries: "file", "blank_line" or "line"')

    def _patterns(self) -> dict[str, list[str] | None]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def _field(self, split: str) -> str:
        return split

    def _file_docs(self, path: str) -> Iterator[str]:
        return _split_text(_read_text(path), self.split_on)


class _TableFiles(_SplitFiles, DataSourceConfig):
    """Shared fields of the jsonl/parquet sources: ``path`` is one glob/list (train; validation and test
    held out) or a dict split -> glob/list."""

    path: str | list[str] | dict[str, str | list[str]] = Field(
        ..., description='file glob(s) for train (validation/test held out), or {"train": ..., "validation": ..., "test": ...}')
    holdout: float = Field(0.05, gt=0.0, lt=0.5, description="fraction of train documents held out for each split without files")
    text_field: str = Field("text", description="name of the column/key that holds the document text")
    max_docs: int | None = Field(None, ge=1, description="use at most this many documents per split (None = all)")

    def _patterns(self) -> dict[str, str | list[str] | None]:
        if isinstance(self.path, dict):
            bad = set(self.path) - set(SPLITS)
            if bad or "train" not in self.path:
                raise DataError("data.path", f"keys must be train/validation/test with train present, got {sorted(self.path)}")
            return {s: self.path.get(s) or None for s in SPLITS}
        return {"train": self.path, "validation": None, "test": None}

    def _field(self, split: str) -> str:
        return f"path.{split}" if isinstance(self.path, dict) else "path"

    def _missing_field(self, path: str, have) -> ValueError:
        return ValueError(f"{self.type}: {path} has no field {self.text_field!r} (it has {sorted(have)[:10]}); set text_field")


class JsonlConfig(_TableFiles):
    """JSON-lines files (``.jsonl``, also ``.jsonl.gz``): one document per line, text in ``text_field``."""

    type: Literal["jsonl"] = "jsonl"
    _empty: ClassVar[str] = "holds no documents (it is empty, or no row has a non-empty text field)"

    def _file_docs(self, path: str) -> Iterator[str]:
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"jsonl: {path}:{n} is not valid JSON ({e.msg}); fix or remove that line") from None
                except RecursionError:
                    row = None
                if not isinstance(row, dict):
                    raise ValueError(f"jsonl: {path}:{n} is not a JSON object (nested too deep, or another "
                                     f"value); each line holds one object with a {self.text_field!r} field")
                if self.text_field not in row:
                    raise self._missing_field(path, row)
                if row[self.text_field]:
                    yield str(row[self.text_field])


class ParquetConfig(_TableFiles):
    """Parquet files (e.g. FineWeb-Edu shards): one document per row, text in column ``text_field``."""

    type: Literal["parquet"] = "parquet"

    def _sniff(self, path: str) -> str | None:
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            return f"cannot be read ({e.strerror or e})"
        if not magic:
            return "is empty"
        return None if magic == b"PAR1" else "is not a Parquet file (it does not start with PAR1)"

    def _file_docs(self, path: str) -> Iterator[str]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if self.text_field not in pf.schema_arrow.names:
            raise self._missing_field(path, pf.schema_arrow.names)
        for batch in pf.iter_batches(batch_size=1024, columns=[self.text_field]):
            for t in batch.column(0).to_pylist():
                if t:
                    yield t


# --- Hugging Face datasets ---------------------------------------------------------------------

_OFFLINE_HINT = ('to work offline, point the spec at local files: {"type": "parquet", "path": "shards/*.parquet"} '
                 'or {"type": "hf", "path": "parquet", "data_files": "shards/*.parquet"}')


def _env_offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _sync_offline() -> None:
    """Make ``datasets``/``huggingface_hub`` honour offline env vars set after they were imported."""
    if _env_offline():
        for mod, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
            if mod in sys.modules:
                setattr(sys.modules[mod], attr, True)


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class HFConfig(DataSourceConfig):
    """A dataset loaded with ``datasets.load_dataset`` (hub id, or a builder such as "parquet"/"json"
    with local ``data_files``); streaming supported.

    Without ``validation_split``/``test_split`` the first ``holdout_docs`` documents of the train stream
    are validation and the next ``holdout_docs`` test; train skips them. Example, FineWeb-Edu:
    ``{"type": "hf", "path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "streaming": true}``;
    offline from downloaded shards: ``{"type": "hf", "path": "parquet", "data_files": "shards/*.parquet"}``.
    """

    type: Literal["hf"] = "hf"
    path: str = Field(..., description='dataset id on the hub (e.g. "HuggingFaceFW/fineweb-edu"), a local folder, or a builder ("parquet", "json", "text")')
    name: str | None = Field(None, description='dataset configuration name (e.g. "sample-10BT")')
    split: str = Field("train", description="the dataset split used for training")
    validation_split: str | None = Field(None, description="dataset split used for validation (None: hold out holdout_docs from train)")
    test_split: str | None = Field(None, description="dataset split used for test (None: hold out holdout_docs from train)")
    holdout_docs: int = Field(1000, ge=1, description="documents held out from the start of the train stream per missing split")
    streaming: bool = Field(False, description="stream instead of downloading the whole dataset")
    text_field: str = Field("text", description="column holding the document text")
    messages: Literal["none", "content", "role_content"] = Field(
        "none", description='a column of chat messages ([{"role", "content"}, ...]) joined into one document a '
                            'conversation: "content" one message a line, "role_content" as "role: content"')
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="local files passed to datasets.load_dataset(data_files=...), globs allowed")
    shuffle_buffer: int = Field(0, ge=0, description="shuffle training documents with this buffer size (0 = keep order)")
    seed: int = Field(0, description="seed of the shuffle")
    max_docs: int | None = Field(None, ge=1, description="use at most this many documents per split (None = all)")

    def _where(self) -> str:
        return self.path + (f" ({self.name})" if self.name else "")

    def _fail(self, e: Exception) -> ValueError:
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        return DataError("data.path", f"cannot load dataset {self._where()}: {type(e).__name__}: {msg}; {_OFFLINE_HINT}")

    def _local_files(self) -> dict[str, dict[str, str]]:
        df = self.data_files
        groups = df if isinstance(df, dict) else {"train": df}
        return {k: _expand(v, "data.data_files" + (f".{k}" if isinstance(df, dict) else "")) for k, v in groups.items()}

    def _is_hub_id(self) -> bool:
        if self.data_files is None and self.path in ("parquet", "json", "csv", "text", "arrow"):
            raise DataError("data.path", f'"{self.path}" is a file-format builder: also give data_files, e.g. "shards/*.{self.path}"')
        return self.data_files is None and not os.path.exists(os.path.expanduser(self.path))

    def check_available(self) -> None:
        """Cheap probe before anything is built: local files exist, or the hub answers (short timeout)."""
        if not self._is_hub_id():
            if self.data_files is not None:
                self._local_files()
            return
        _sync_offline()
        if not _env_offline() and not _hub_reachable():
            raise DataError("data.path", f"cannot reach the Hugging Face Hub for dataset {self._where()} (no network?); "
                             f"if it is cached set HF_HUB_OFFLINE=1, else {_OFFLINE_HINT}")
        try:
            import datasets

            datasets.load_dataset_builder(self.path, self.name, data_files=self.data_files)
        except Exception as e:  # noqa: BLE001 - any hub/connection error becomes one clear line
            raise self._fail(e) from None

    def _load(self, split: str):
        import datasets

        _sync_offline()
        if self._is_hub_id() and not _env_offline() and not _hub_reachable():
            self.check_available()  # raises the one-line error instead of minutes of retries
        kw = {"data_files": self.data_files} if self.data_files is not None else {}
        try:
            return datasets.load_dataset(self.path, self.name, split=split, streaming=self.streaming, **kw)
        except Exception as e:  # noqa: BLE001
            raise self._fail(e) from None

    def _text(self, value) -> str:
        """A cell as one document: a string as it is; a chat (a list of {"role", "content"} messages,
        as UltraChat's ``messages``) joined one message a line, per ``messages``."""
        if isinstance(value, list):
            if self.messages == "content":
                return "\n".join(str(m.get("content", "")) for m in value)
            if self.messages == "role_content":
                return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in value)
            raise DataError("data.messages", f"column {self.text_field!r} of {self._where()} holds lists (a chat?); "
                             f'set "messages": "content" or "role_content" to join them')
        return value if isinstance(value, str) else ("" if value is None else str(value))

    def _texts(self, ds) -> Iterator[str]:
        try:
            for row in ds:
                if self.text_field not in row:
                    raise DataError("data.text_field", f"dataset {self._where()} has no column {self.text_field!r} "
                                     f"(it has {sorted(row)[:10]}); set text_field")
                text = self._text(row[self.text_field])
                if text.strip():  # WikiText-style blank lines are not documents
                    yield text
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - streaming errors surface during iteration
            raise self._fail(e) from None

    def documents(self, split: str) -> Iterator[str]:
        _check_split(split)
        own = {"train": self.split, "validation": self.validation_split, "test": self.test_split}
        if own[split] and split != "train":
            return _capped(self._texts(self._load(own[split])), self.max_docs)
        held = [s for s in ("validation", "test") if not own[s]]
        ds = self._load(self.split)
        if split == "train":
            ds = ds.skip(len(held) * self.holdout_docs) if held else ds
            if self.shuffle_buffer:
                ds = (ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer) if self.streaming
                      else ds.shuffle(seed=self.seed))
            return _capped(self._texts(ds), self.max_docs)
        start = held.index(split) * self.holdout_docs
        return _capped(_capped(self._texts(ds.skip(start)), self.holdout_docs), self.max_docs)

    def fingerprint(self) -> str:
        groups = self._local_files() if self.data_files is not None else {}
        if not groups and os.path.isdir(os.path.expanduser(self.path)):
            groups = {"dir": sorted(str(p) for p in Path(os.path.expanduser(self.path)).rglob("*") if p.is_file())}
        return _files_fingerprint(self.type, self.model_dump_json(), groups)


DATA_SOURCES = [EmbeddedConfig, TextFilesConfig, JsonlConfig, ParquetConfig, HFConfig]
"""The built-in data source configs (for the builtins plugin's ``kinlm_register_data_sources``)."""
