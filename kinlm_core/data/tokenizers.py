"""Built-in tokenizers: configs (torch-free, light imports) and the Tokenizer objects they build.

``build(train_texts, cache_dir)`` returns a :class:`kinlm_core.api.Tokenizer`. Learning tokenizers
(char, word, bpe) call ``train_texts()`` for the training documents unless ``cache_dir`` already holds
their trained vocabulary (keyed by the config), so give them a cache_dir specific to the data
(``prepare_data`` does). ``tokenizers``/``transformers``/``tiktoken`` are imported only when used.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

from pydantic import Field

from kinlm_core.api import Tokenizer, TokenizerConfig

TrainTexts = Callable[[], Iterator[str]]


def _sha(*parts) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def _cache_file(cfg: TokenizerConfig, cache_dir, name: str) -> Path:
    """``cache_dir/<type>-<hash of the config>/<name>``."""
    return Path(cache_dir) / f"{cfg.type}-{_sha(cfg.model_dump_json())[:16]}" / name


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- byte ---------------------------------------------------------------------------------------


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes 0..255 plus EOS = 256."""

    vocab_size = 257
    eos_id = 256
    fingerprint = "byte-v1"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class ByteConfig(TokenizerConfig):
    """UTF-8 bytes: 256 byte values plus an end-of-text id 256 (vocabulary 257); nothing to train."""

    type: Literal["byte"] = "byte"

    def build(self, train_texts: TrainTexts, cache_dir) -> Tokenizer:
        return ByteTokenizer()


# --- char ---------------------------------------------------------------------------------------


class CharTokenizer(Tokenizer):
    """Characters of a fixed alphabet (ids 0..n-1 in code-point order), then unk = n, eos = n+1."""

    def __init__(self, chars: str):
        import numpy as np

        self.chars = "".join(sorted(set(chars)))
        self._cps = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._index = {c: i for i, c in enumerate(self.chars)}
        self.unk_id, self.eos_id = len(self.chars), len(self.chars) + 1
        self.vocab_size = len(self.chars) + 2
        self.fingerprint = "char-" + _sha(self.chars)[:16]

    def encode(self, text: str) -> list[int]:
        return self._encode_np(text).tolist()

    def _encode_np(self, text: str):
        import numpy as np

        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if not len(self._cps):
            return np.full(len(cps), self.unk_id, dtype=np.int64)
        idx = np.minimum(np.searchsorted(self._cps, cps), len(self._cps) - 1)
        return np.where(self._cps[idx] == cps, idx, self.unk_id)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_np(t).tolist() for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else ("\ufffd" if i == self.unk_id else "") for i in map(int, ids))


class CharConfig(TokenizerConfig):
    """Characters seen in the training split, plus an unknown id and an end-of-text id."""

    type: Literal["char"] = "char"

    def build(self, train_texts: TrainTexts, cache_dir) -> Tokenizer:
        f = _cache_file(self, cache_dir, "chars.json")
        if f.exists():
            return CharTokenizer(json.loads(f.read_text(encoding="utf-8")))
        seen: set[str] = set()
        for doc in train_texts():
            seen.update(doc)
        if not seen:
            raise ValueError("char tokenizer: the training split has no text; check the data source")
        tok = CharTokenizer("".join(seen))
        _atomic_write(f, json.dumps(tok.chars))
        return tok


# --- word ---------------------------------------------------------------------------------------


class WordTokenizer(Tokenizer):
    """Whitespace words: ids 0 pad, 1 unk, 2 bos, 3 eos, then the vocabulary. Decoding joins with spaces
    (original whitespace is not kept)."""

    SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")

    def __init__(self, words: list[str], lowercase: bool):
        self.itos = list(self.SPECIALS) + list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.lowercase = lowercase
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, 1, 2, 3
        self.vocab_size = len(self.itos)
        self.fingerprint = "word-" + _sha(lowercase, *self.itos)[:16]

    def encode(self, text: str) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(w, unk) for w in (text.lower() if self.lowercase else text).split()]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.itos[i] for i in map(int, ids) if i >= 4 or i == self.unk_id)


class WordConfig(TokenizerConfig):
    """Whitespace words: the vocab_size-4 most frequent training words plus pad/unk/bos/eos."""

    type: Literal["word"] = "word"
    vocab_size: int = Field(1000, ge=5, description="total vocabulary including the 4 special tokens")
    lowercase: bool = Field(True, description="lower-case text before splitting into words")

    def build(self, train_texts: TrainTexts, cache_dir) -> Tokenizer:
        f = _cache_file(self, cache_dir, "words.json")
        if f.exists():
            return WordTokenizer(json.loads(f.read_text(encoding="utf-8")), self.lowercase)
        counts: Counter = Counter()
        for doc in train_texts():
            counts.update((doc.lower() if self.lowercase else doc).split())
        if not counts:
            raise ValueError("word tokenizer: the training split has no words; check the data source")
        words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.vocab_size - 4]]
        _atomic_write(f, json.dumps(words, ensure_ascii=False))
        return WordTokenizer(words, self.lowercase)


# --- bpe ----------------------------------------------------------------------------------------

EOT = "<|endoftext|>"


class HFTokenizersTokenizer(Tokenizer):
    """Wraps a ``tokenizers.Tokenizer`` (e.g. trained byte-level BPE); eos = ``<|endoftext|>``."""

    def __init__(self, tok, fingerprint: str):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eos_id = tok.token_to_id(EOT)
        self.fingerprint = fingerprint

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


class BPEConfig(TokenizerConfig):
    """Byte-level BPE trained on the training split with the ``tokenizers`` library (GPT-2 style)."""

    type: Literal["bpe"] = "bpe"
    vocab_size: int = Field(4096, ge=257 + 1, description="target vocabulary size (256 byte symbols + merges + <|endoftext|>)")
    min_frequency: int = Field(2, ge=1, description="a pair must occur this often to be merged")

    def build(self, train_texts: TrainTexts, cache_dir) -> Tokenizer:
        from tokenizers import Tokenizer as HFTok
        from tokenizers import decoders, models, pre_tokenizers, trainers

        f = _cache_file(self, cache_dir, "tokenizer.json")
        if not f.exists():
            tok = HFTok(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=self.vocab_size, min_frequency=self.min_frequency,
                                          special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                          show_progress=False)
            tok.train_from_iterator(train_texts(), trainer)
            _atomic_write(f, tok.to_str())
        text = f.read_text(encoding="utf-8")
        return HFTokenizersTokenizer(HFTok.from_str(text), "bpe-" + _sha(text)[:16])


# --- transformers / tiktoken --------------------------------------------------------------------


class TransformersTokenizer(Tokenizer):
    """The one adapter of a ``transformers`` tokenizer to kinlm's :class:`Tokenizer` (the `hf`
    tokenizer, ``load_pretrained`` and ``kinlm analyze --hf-model`` all use it).

    Special ids come from the tokenizer: ``eos_id`` (eos, else sep), ``pad_id``, ``bos_id`` (bos,
    else cls). ``add_special_tokens``: whether ``encode`` adds the model's own special tokens (an
    encoder's [CLS] ... [SEP]); off by default, so a causal LM sees plain text. ``decode`` drops
    special tokens.
    """

    def __init__(self, tok, name: str = "", add_special_tokens: bool = False):
        self.tok = tok
        self.add_special_tokens = add_special_tokens
        self.vocab_size = len(tok)
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        self.pad_id = tok.pad_token_id
        self.bos_id = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
        self.fingerprint = "hf-" + _sha(name, type(tok).__name__, json.dumps(vocab, ensure_ascii=False))[:16]

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=self.add_special_tokens)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=self.add_special_tokens)["input_ids"]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def special_token_ids(self) -> set[int]:
        """Every id the tokenizer marks as special ([CLS], [SEP], [PAD], <eos>, ...)."""
        return set(self.tok.all_special_ids)


class HFTokenizerConfig(TokenizerConfig):
    """A pretrained ``transformers`` tokenizer: a local folder, or a hub id (needs network or the HF cache)."""

    type: Literal["hf"] = "hf"
    path: str = Field(..., description='local tokenizer folder (with tokenizer.json etc.) or a hub id such as "gpt2"')

    def build(self, train_texts: TrainTexts, cache_dir) -> Tokenizer:
        from kinlm_core.data.sources import _env_offline, _hub_reachable, _sync_offline

        local = os.path.isdir(os.path.expanduser(self.path))
        if not local:
            _sync_offline()
            if not _env_offline() and not _hub_reachable():
                raise ValueError(f"hf tokenizer: {self.path!r} is not a local folder and the Hugging Face Hub cannot be "
                                 "reached; give a local folder holding tokenizer.json/tokenizer_config.json "
                                 "(or set HF_HUB_OFFLINE=1 if it is in the HF cache)")
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(os.path.expanduser(self.path) if local else self.path)
        except ImportError:
            raise ValueError("hf tokenizer: needs the transformers package; pip install transformers") from None
        except Exception as e:  # noqa: BLE001 - missing folder / no network -> one line
            msg = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"hf tokenizer: cannot load {self.path!r} ({type(e).__name__}: {msg}); give a local folder "
                             "holding tokenizer.json/tokenizer_config.json, or go online once to fill the HF cache") from None
        return TransformersTokenizer(tok, self.path)


class TiktokenTokenizer(Tokenizer):
    """Wraps a ``tiktoken`` encoding; special tokens in text are encoded as ordinary text."""

    def __init__(self, enc, pad_vocab_to: int | None):
        self.enc = enc
        self.vocab_size = max(enc.n_vocab, pad_vocab_to or 0)
        self.eos_id = enc.eot_token
        self.fingerprint = f"tiktoken-{enc.name}-{self.vocab_size}"

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=max(1, os.cpu_count() or 1))

    def decode(self, ids: Iterable[int]) -> str:
        n = self.enc.n_vocab
        return self.enc.decode([int(i) for i in ids if int(i) < n and int(i) != self.eos_id])


class TiktokenConfig(TokenizerConfig):
    """An OpenAI ``tiktoken`` encoding (default GPT-2: vocabulary 50257, eos 50256); fetched once, then cached."""

    type: Literal["tiktoken"] = "tiktoken"
    encoding: str = Field("gpt2", description='tiktoken encoding name: "gpt2", "r50k_base", "cl100k_base", "o200k_base"')
    pad_vocab_to: int | None = Field(None, ge=1, description="report a larger vocab_size (e.g. 50304, a multiple of 64, for speed)")

    def build(self, train_texts: TrainTexts, cache_dir) -> Tokenizer:
        try:
            import tiktoken

            enc = tiktoken.get_encoding(self.encoding)
        except ImportError:
            raise ValueError("tiktoken tokenizer: needs the tiktoken package; pip install tiktoken") from None
        except ValueError as e:
            raise ValueError(f"tiktoken: unknown encoding {self.encoding!r}: {str(e).splitlines()[0][:150]}") from None
        except Exception as e:  # noqa: BLE001 - download failed (offline)
            raise ValueError(f"tiktoken: cannot load encoding {self.encoding!r} ({type(e).__name__}); it is downloaded on "
                             "first use: go online once (cached in TIKTOKEN_CACHE_DIR), or use a \"bpe\" or \"byte\" "
                             "tokenizer offline") from None
        if self.pad_vocab_to is not None and self.pad_vocab_to < enc.n_vocab:
            raise ValueError(f"tiktoken: pad_vocab_to={self.pad_vocab_to} is smaller than the encoding's "
                             f"{enc.n_vocab} tokens; use a value >= {enc.n_vocab} or leave it unset")
        return TiktokenTokenizer(enc, self.pad_vocab_to)


# --- export as a transformers tokenizer -----------------------------------------------------------


def _byte_backend(tok: ByteTokenizer):
    """Byte-level BPE without merges: id b is byte b (as GPT-2's byte-to-unicode character), 256 = eos."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    vocab[EOT] = tok.eos_id
    t = HFTok(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    return t, {"eos_token": EOT}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (as the ByteLevel pre-tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _char_backend(tok: CharTokenizer):
    """BPE without merges over single characters (no pre-tokenizer: whitespace is a character too)."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models

    vocab = {c: i for i, c in enumerate(tok.chars)}
    unk = "\ufffd" if "\ufffd" not in vocab else "<unk>"  # decodes as kinlm's does
    vocab[unk], vocab[EOT] = tok.unk_id, tok.eos_id
    t = HFTok(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    t.decoder = decoders.Fuse()
    return t, {"eos_token": EOT}


def _word_backend(tok: WordTokenizer):
    """Word-level vocabulary over whitespace-split (and, as configured, lower-cased) words."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models, normalizers, pre_tokenizers

    t = HFTok(models.WordLevel(vocab=dict(tok.stoi), unk_token="<unk>"))
    if tok.lowercase:
        t.normalizer = normalizers.Lowercase()
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return t, {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>"}  # <unk> is shown, as kinlm does


def to_transformers(tokenizer: Tokenizer):
    """The run's tokenizer as a ``transformers.PreTrainedTokenizerFast`` with the same ids (bpe, byte,
    char, word; an `hf` tokenizer is returned as it is), or None when it has no counterpart (tiktoken).
    ``save_pretrained(folder)`` then writes tokenizer.json for ``AutoTokenizer.from_pretrained``."""
    from transformers import PreTrainedTokenizerFast

    base = getattr(tokenizer, "base", None)
    if base is not None and tokenizer.sentinel_ids:  # an objective's sentinels (span corruption) on a base tokenizer
        fast = to_transformers(base)
        if fast is None or len(fast) != base.vocab_size:
            return None
        added = [f"<extra_id_{i}>" for i in range(len(tokenizer.sentinel_ids))]
        fast.add_special_tokens({"additional_special_tokens": added})
        if base.pad_id is None and tokenizer.pad_id == len(fast):
            fast.add_special_tokens({"pad_token": "<pad>"})
        return fast if len(fast) == tokenizer.vocab_size else None
    if isinstance(tokenizer, TransformersTokenizer):
        return tokenizer.tok
    if isinstance(tokenizer, HFTokenizersTokenizer):
        from tokenizers import Tokenizer as HFTok

        backend, special = HFTok.from_str(tokenizer.tok.to_str()), {"eos_token": EOT}
    elif isinstance(tokenizer, ByteTokenizer):
        backend, special = _byte_backend(tokenizer)
    elif isinstance(tokenizer, CharTokenizer):
        backend, special = _char_backend(tokenizer)
    elif isinstance(tokenizer, WordTokenizer):
        backend, special = _word_backend(tokenizer)
    else:
        return None
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **special)
    if fast.pad_token is None:
        fast.pad_token = fast.eos_token
    return fast


TOKENIZERS = [ByteConfig, CharConfig, WordConfig, BPEConfig, HFTokenizerConfig, TiktokenConfig]
"""The built-in tokenizer configs (for the builtins plugin's ``kinlm_register_tokenizers``)."""
