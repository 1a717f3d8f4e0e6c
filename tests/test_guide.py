"""docs/writing-a-plugin.md's worked examples are real: its "# guide:" code blocks, put together,
are a plugin, and a spec that uses every component of it trains."""

import json
import os
import re

from helpers import ROOT, kinlm, make_dist


def guide_module() -> str:
    doc = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    blocks = re.findall(r"```python\n(# guide: [^\n]+\n.*?)```", doc, flags=re.S)
    assert len(blocks) == 9, f"expected imports, 7 kinds and hooks; found {len(blocks)} guide blocks"
    return "\n\n".join(blocks)


def test_every_kind_of_the_guide_trains(tmp_path):
    make_dist(tmp_path / "site", "kinlm-guide", "kinlm_guide", guide_module())
    text = ["The quick brown fox jumps over the lazy dog. " * 4, "Pack my box with five dozen liquor jugs. " * 4]
    spec = {
        "name": "guide", "seed": 1,
        "data": {"type": "inline", "train": text * 10},
        "tokenizer": {"type": "lower_bytes"},
        "model": {"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 32},
        "objective": {"type": "second_half_lm"},
        "regularizers": [{"type": "hidden_l2", "weight": 0.01}],
        "curriculum": {"type": "embeddings_first", "until_loss": 100.0},
        "train": {"max_steps": 4, "batch_size": 4, "block_size": 32, "warmup_steps": 1, "log_every": 1},
        "eval": {"every": 4, "batches": 2},
        "analyzers": [{"type": "logit_entropy"}],
        "generate": [{"type": "greedy_line", "prompt": "The quick", "max_new_tokens": 20}],
    }
    (tmp_path / "s.json").write_text(json.dumps(spec))
    env = {"PYTHONPATH": str(tmp_path / "site"), "KINLM_CACHE": os.environ.get("KINLM_CACHE", str(tmp_path / "cache"))}
    rd = tmp_path / "run"
    r = kinlm("run", str(tmp_path / "s.json"), "--run-dir", str(rd), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ms = [json.loads(l) for l in (rd / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in ms if "train/phase" in m]
    # the first phase's loss is below 100 at once: it ends after one step, and the regularizer runs in phase 2
    assert [m["train/phase"] for m in steps] == [0, 1, 1, 1]
    assert "embeddings/grad_norm" in steps[0] and all("reg/hidden_l2" in m for m in steps[1:])
    metrics = json.loads(next((rd / "analysis" / "logit_entropy").glob("step_*/metrics.json")).read_text())
    assert 0 < metrics["mean_entropy"] < 6  # at most ln(257) nats
    assert (next((rd / "analysis" / "logit_entropy").glob("step_*")) / "entropy.png").stat().st_size > 1000
    assert "**greedy_line" in (rd / "samples.md").read_text()
