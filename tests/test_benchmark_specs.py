"""specs/benchmark: every spec validates, shares the data, tokenizer and budget, and builds a model
within 10% of gpt's parameter count (with the vocabulary the run would use: T5's objective adds
sentinels)."""

import json
from pathlib import Path

import torch

from kinlm_core.data import prepare_data
from kinlm_core.engine.runtime import cache_dir
from kinlm_core.engine.train import run_tokenizer, schedule
from kinlm_core.spec import validate

BENCH = Path(__file__).resolve().parents[1] / "specs" / "benchmark"
NAMES = ["gpt", "llama_preln", "llama_postln", "hamiltonian", "context_vector", "cvfp", "gpt_accel_penalty",
         "gpt_diffwrapper", "gpt_vt", "t5_hybrid", "mamba"]


def load(name):
    path = BENCH / f"{name}.json"
    return json.loads(path.read_text()), validate(json.loads(path.read_text()), str(path))


def test_the_benchmark_has_one_spec_per_method():
    assert sorted(p.stem for p in BENCH.glob("*.json")) == sorted(NAMES)


def test_all_specs_share_data_tokenizer_and_budget():
    raw = {n: load(n)[0] for n in NAMES}
    ref = raw["gpt"]
    for n, r in raw.items():
        assert r["data"] == ref["data"] == {"type": "embedded", "corpus": "wiki_sample"}, n
        assert r["tokenizer"] == ref["tokenizer"], n
        t = r["train"]
        assert (t["batch_size"] * t["block_size"], t["max_steps"]) == \
            (ref["train"]["batch_size"] * ref["train"]["block_size"], ref["train"]["max_steps"]), n
        assert t["checkpoint_every"] == t["max_steps"], n
        assert r["eval"] == ref["eval"], n
        assert r["generate"] == [], n
        assert r.get("analyzers") == ref.get("analyzers"), n
        assert r.get("objective", {"type": "causal_lm"})["type"] == ("hybrid_tasks" if n == "t5_hybrid" else "causal_lm"), n


def test_parameter_counts_are_within_ten_percent_of_gpt():
    counts, fingerprints = {}, set()
    for n in NAMES:
        spec = load(n)[1]
        data = prepare_data(spec.data, spec.tokenizer, spec.train.block_size, cache_dir() / "data", log=None)
        fingerprints.add(data.tokenizer.fingerprint)
        tok = run_tokenizer(spec, data.tokenizer, schedule(spec))
        torch.manual_seed(0)
        counts[n] = sum(p.numel() for p in spec.model.build(tok.vocab_size).parameters())
    assert len(fingerprints) == 1
    far = {n: c for n, c in counts.items() if abs(c / counts["gpt"] - 1) > 0.10}
    assert not far, f"gpt has {counts['gpt']:,} parameters; off by more than 10%: {far}"
