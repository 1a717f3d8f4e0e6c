"""The training contract end to end, on the two fixture plugins in tests/fixtures (public API only):
a tiny T5 trained with span corruption, and a two-phase curriculum whose first phase owns its step,
keeps state across steps and ends on a condition. Each runs with `kinlm run`, survives SIGKILL +
--resume with the same final eval loss, and runs under torchrun with 2 ranks."""

import json
import signal

import pytest

from helpers import fixture_site, kinlm, torchrun

T5_SPEC = {
    "name": "t5-fixture", "seed": 1,
    "data": {"type": "embedded", "corpus": "tinyshakespeare", "max_docs": 400},
    "tokenizer": {"type": "byte"},
    "model": {"type": "fixture_t5", "d_model": 32, "n_layer": 1, "n_head": 2},
    "objective": {"type": "span_corruption"},
    "train": {"max_steps": 6, "batch_size": 4, "block_size": 32, "lr": 3e-3, "warmup_steps": 1,
              "checkpoint_every": 2, "log_every": 1},
    "eval": {"every": 3, "batches": 2},
}

PHASES_SPEC = {
    "name": "two-phase-fixture", "seed": 1,
    "data": {"type": "embedded", "corpus": "tinyshakespeare", "max_docs": 400},
    "tokenizer": {"type": "byte"},
    "model": {"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 32},
    "curriculum": {"type": "fixture_two_phase", "rows": 1, "stop_after_tokens": 150},
    "train": {"max_steps": 6, "batch_size": 4, "block_size": 32, "lr": 3e-3, "warmup_steps": 1, "grad_accum": 2,
              "checkpoint_every": 1, "log_every": 1},
    "eval": {"every": 3, "batches": 2},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    site = fixture_site(tmp_path_factory.mktemp("site"), "kinlm_fixture_t5", "kinlm_fixture_phases", killer=True)
    return {"PYTHONPATH": str(site), "KINLM_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}


def write(tmp_path, spec):
    f = tmp_path / f"{spec['name']}.json"
    f.write_text(json.dumps(spec))
    return f


def result(r):
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def killed_then_resumed(tmp_path, spec_file, env, kill_at):
    rd = tmp_path / "killed"
    r = kinlm("run", str(spec_file), "--run-dir", str(rd), env={**env, "KINLM_TEST_KILL_AT": str(kill_at)})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not (rd / "result.json").exists()
    return result(kinlm("run", str(spec_file), "--resume", str(rd), env=env)), rd


@pytest.mark.slow
def test_t5_span_corruption(tmp_path, env):
    spec_file = write(tmp_path, T5_SPEC)
    full = result(kinlm("run", str(spec_file), "--run-dir", str(tmp_path / "full"), env=env))
    assert full["status"] == "finished" and full["objective"] == "span_corruption"
    # bits per byte of the target spans: finite, and the loss is over sentinel-prefixed spans, not every token
    assert 0 < full["eval/bpb"] < 20 and full["eval/loss"] > 0
    losses = [m["train/loss"] for m in metrics(tmp_path / "full") if "train/loss" in m]
    assert len(losses) == 6 and losses[-1] < losses[0]
    resumed, _ = killed_then_resumed(tmp_path, spec_file, env, kill_at=3)
    assert resumed["eval/loss"] == full["eval/loss"]


@pytest.mark.slow
def test_two_phase_curriculum(tmp_path, env):
    import torch
    from safetensors.torch import load_file

    spec_file = write(tmp_path, PHASES_SPEC)
    rd = tmp_path / "full"
    full = result(kinlm("run", str(spec_file), "--run-dir", str(rd), env=env))
    assert full["status"] == "finished" and full["step"] == 6
    ms = [m for m in metrics(rd) if "train/phase" in m]
    # 33 tokens x 2 micro-batches = 66 read per step: the condition (>= 150) ends phase 1 after step 3
    assert [m["train/phase"] for m in ms] == [0, 0, 0, 1, 1, 1]
    assert [m["stream/tokens_read"] for m in ms[:3]] == [66, 132, 198]
    assert "stream/relative_change" in ms[0] and "reg/relative_change" not in ms[0]
    assert ms[0]["train/lr"] == 3e-3 and ms[3]["train/lr"] == 1e-3  # each phase its own optimizer settings
    state = torch.load(rd / "checkpoints" / "step_0000006" / "state.pt", weights_only=True)
    assert state["phase_states"]["0"]["ended_at_step"] == 3 and len(state["phase_states"]["0"]["losses"]) == 3
    # phase 2 trains only the blocks: the embeddings are those phase 1 left
    w5 = load_file(rd / "checkpoints" / "step_0000005" / "model.safetensors")
    w6 = load_file(rd / "checkpoints" / "step_0000006" / "model.safetensors")
    emb = "wte.weight" if "wte.weight" in w5 else "head.weight"  # tied: safetensors keeps one name
    assert torch.equal(w5[emb], w6[emb]) and torch.equal(w5["wpe.weight"], w6["wpe.weight"])
    assert not torch.equal(w5["blocks.0.mlp.fc.weight"], w6["blocks.0.mlp.fc.weight"])
    resumed, killed = killed_then_resumed(tmp_path, spec_file, env, kill_at=2)  # inside phase 1, resumes from step 1
    assert resumed["eval/loss"] == full["eval/loss"]
    assert [m["stream/tokens_read"] for m in metrics(killed) if "stream/tokens_read" in m][-3:] == [66, 132, 198]


@pytest.mark.slow
@pytest.mark.parametrize("spec", [T5_SPEC, PHASES_SPEC], ids=["t5", "two_phase"])
def test_torchrun_two_ranks(tmp_path, env, spec):
    rd = tmp_path / "run"
    r = torchrun("run", str(write(tmp_path, spec)), "--run-dir", str(rd), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(results) == 1 and results[0]["status"] == "finished"
    if spec is PHASES_SPEC:  # two ranks read twice as much: phase 1 ends after step 2 (132, 264 tokens)
        phases = [m["train/phase"] for m in metrics(rd) if "train/phase" in m]
        assert phases == [0, 0, 1, 1, 1, 1]
