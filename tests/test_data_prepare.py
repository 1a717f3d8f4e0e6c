"""`kinlm data prepare --workers N`: parallel tokenization into the run's data cache (same tokens as the
serial path), resumable from its shard files, and found by `kinlm run` as a cache hit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kinlm_core.data import packing, prepare_data
from kinlm_core.data.sources import EmbeddedConfig
from kinlm_core.data.tokenizers import ByteConfig

SPEC = "specs/quickstart.json"  # the bundled tinyshakespeare corpus


def _files(p):
    return {f.name: np.load(f) for f in sorted(p.cache_dir.glob("*.npy"))}


def _same(a, b):
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys() == {f"{s}{x}.npy" for s in ("train", "validation", "test")
                                      for x in ("", ".tokens", ".offsets")}
    for name in fa:
        assert fa[name].dtype == fb[name].dtype and np.array_equal(fa[name], fb[name]), name


@pytest.mark.slow
def test_workers_give_the_serial_tokens_on_the_bundled_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(packing, "_CHUNK_CHARS", 40_000)                 # ~25 chunks: every worker busy
    src = EmbeddedConfig(corpus="tinyshakespeare")
    serial = prepare_data(src, ByteConfig(), 64, tmp_path / "serial", log=None)
    par = prepare_data(src, ByteConfig(), 64, tmp_path / "par", log=None, workers=3)
    assert serial.n_tokens == par.n_tokens and serial.n_tokens["train"] > 900_000
    _same(serial, par)
    assert not list(par.cache_dir.glob(".*.parts"))                       # shards removed once joined
    assert prepare_data(src, ByteConfig(), 64, tmp_path / "par", log=None, workers=3).cache_hit


_real_encode_shard = packing._encode_shard


def _encode_but_fail_on_shard_5(task):
    if task[0] == 5:
        raise RuntimeError("worker killed")
    return _real_encode_shard(task)


def test_an_interrupted_prepare_resumes_from_its_finished_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(packing, "_CHUNK_CHARS", 40_000)
    src = EmbeddedConfig(corpus="tinyshakespeare")
    monkeypatch.setattr(packing, "_encode_shard", _encode_but_fail_on_shard_5)
    with pytest.raises(RuntimeError, match="worker killed"):
        prepare_data(src, ByteConfig(), 64, tmp_path, splits=["train"], log=None, workers=2)
    parts = next(tmp_path.glob("*/.train.parts"))
    done = sorted(parts.glob("[0-9]*.npz"))
    assert parts.joinpath("0000000.npz") in done and not parts.joinpath("0000005.npz").exists()
    # mark a finished shard: a resumed prepare must take it as it is, not tokenize its chunk again
    with np.load(done[0]) as z:
        marked = {k: z[k] for k in z.files}
    marked["tokens"] = np.full_like(marked["tokens"], 7)
    np.savez(done[0], **marked)
    monkeypatch.setattr(packing, "_encode_shard", _real_encode_shard)
    p = prepare_data(src, ByteConfig(), 64, tmp_path, splits=["train"], log=None, workers=2)
    tokens = np.load(p.cache_dir / "train.tokens.npy")
    n0 = len(marked["tokens"])
    assert (tokens[:n0] == 7).all() and not (tokens[n0:n0 + 100] == 7).all()
    assert not parts.exists()


def _kinlm(args, env):
    return subprocess.run([sys.executable, "-m", "kinlm_core.cli", *args], capture_output=True, text=True,
                          env=env, timeout=240)


def test_cli_prepare_then_run_finds_the_cache(tmp_path):
    env = {**os.environ, "KINLM_CACHE": str(tmp_path)}
    byte = ["--set", 'tokenizer={"type": "byte"}']
    r = _kinlm(["data", "prepare", SPEC, *byte, "--workers", "2"], env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cache_hit"] is False and out["workers"] == 2 and out["tokens_per_s"] > 0
    assert out["tokens"]["train"] > 900_000
    from kinlm_core.spec import load_spec
    from kinlm_core.plugins import get_manager

    spec = load_spec(SPEC, ['tokenizer={"type": "byte"}'], get_manager())
    # what `kinlm run` calls at its start: a cache hit, nothing tokenized again
    assert prepare_data(spec.data, spec.tokenizer, spec.train.block_size, tmp_path / "data", log=None).cache_hit
    again = _kinlm(["data", "prepare", SPEC, *byte], env)
    assert again.returncode == 0 and json.loads(again.stdout)["cache_hit"] is True


def test_cli_prepare_bad_workers_is_one_line_exit_2(tmp_path):
    r = _kinlm(["data", "prepare", SPEC, "--workers", "0"], {**os.environ, "KINLM_CACHE": str(tmp_path)})
    assert r.returncode == 2 and "--workers" in r.stderr and "Traceback" not in r.stderr
