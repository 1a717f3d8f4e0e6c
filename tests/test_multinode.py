"""Several nodes and elastic resume, on this machine.

Two torchrun agents with ``--nnodes 2`` meet through a c10d rendezvous on 127.0.0.1 (gloo), as two
nodes of a cluster would; a run killed there resumes to the eval loss of an uninterrupted run. A run
checkpointed on 2 ranks resumes on 1 (and the other way round) at the same point of the data order.
"""

import json
import os
import socket
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

from helpers import TINY, fixture_site, kinlm, torchrun
from kinlm_core.data import BlockSampler

SPEC = {**TINY, "train": {**TINY["train"], "max_steps": 6, "checkpoint_every": 3}, "eval": {"every": 3, "batches": 2}}
BATCH = SPEC["train"]["batch_size"]


def take(sampler, n):
    return [sampler.next_indices() for _ in range(n)]


# --- elastic resume: the sampler ---------------------------------------------------------------


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 3)])
def test_a_resume_on_another_number_of_ranks_continues_the_data_order(before, after):
    """Ranks take `steps` batches each, the state of rank 0 is saved (as the engine does), and the
    run goes on with `after` ranks: across the two parts every example of an epoch is taken exactly
    once, in the order of the single-rank stream."""
    n, bs, steps = 120, 4, 5
    first = [BlockSampler(n, bs, seed=3, rank=r, world_size=before) for r in range(before)]
    taken = [take(s, steps) for s in first]
    state = json.loads(json.dumps(first[0].state_dict()))
    assert state["consumed"] == steps * before * bs
    rest = [BlockSampler(n, bs, seed=3, rank=r, world_size=after) for r in range(after)]
    for s in rest:
        s.load_state_dict(state)
    remaining = (n - state["consumed"]) // (after * bs)
    later = [take(s, remaining) for s in rest]
    # the global order: step by step, rank 0's batch then rank 1's ...
    order = [b for step in zip(*taken) for b in step] + [b for step in zip(*later) for b in step]
    seen = np.concatenate(order)
    assert len(seen) == len(set(seen.tolist())) == n - (n - state["consumed"]) % (after * bs)
    single = np.concatenate(take(BlockSampler(n, bs, seed=3), n // bs))
    assert np.array_equal(seen, single[:len(seen)])
    assert rest[0].state_dict()["consumed"] == len(seen)


def test_a_checkpoint_from_before_consumed_was_saved_resumes_at_its_position():
    s = BlockSampler(100, 4, seed=1, rank=0, world_size=2)
    old = {"epoch": 0, "position": 3, "seed": 1, "n_blocks": 100, "batch_size": 4, "world_size": 2}
    s.load_state_dict(old)
    assert s.consumed == 24
    want = BlockSampler(100, 4, seed=1, rank=0, world_size=2)
    take(want, 3)
    assert np.array_equal(s.next_indices(), want.next_indices())


def test_a_different_seed_or_dataset_is_still_refused():
    state = BlockSampler(100, 4, seed=1).state_dict()
    with pytest.raises(ValueError, match="n_blocks=100, this run has 90"):
        BlockSampler(90, 4, seed=1).load_state_dict(state)


# --- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    site = fixture_site(tmp_path_factory.mktemp("site"), killer=True)
    return {"PYTHONPATH": str(site), "KINLM_CACHE": str(tmp_path_factory.getbasetemp() / "cache"),
            "OMP_NUM_THREADS": "1"}


def write(tmp_path):
    f = tmp_path / "tiny.json"
    f.write_text(json.dumps(SPEC))
    return f


def last_state(run_dir):
    steps = sorted((run_dir / "checkpoints").glob("step_*"))
    return torch.load(steps[-1] / "state.pt", map_location="cpu", weights_only=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(*args, env, timeout=300):
    """`kinlm ARGS` on two "nodes": two torchrun agents, one process each, c10d rendezvous on
    localhost. Returns (returncode of each agent, stdout of both)."""
    endpoint, rdzv_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", rdzv_id, "--max_restarts", "0",
           "-m", "kinlm_core.cli", *args]
    full_env = {**os.environ, **env}
    agents = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env)
              for _ in range(2)]
    outs = [a.communicate(timeout=timeout)[0] for a in agents]
    return [a.returncode for a in agents], "\n".join(outs)


def result_line(out: str) -> dict:
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


@pytest.mark.slow
def test_two_nodes_killed_and_resumed_reach_the_uninterrupted_eval_loss(tmp_path, env):
    spec = write(tmp_path)
    full = torchrun("run", str(spec), "--run-dir", str(tmp_path / "full"), "--no-progress", env=env)
    assert full.returncode == 0, full.stderr[-3000:]
    want = result_line(full.stdout)
    rd = tmp_path / "killed"
    rcs, out = two_nodes("run", str(spec), "--run-dir", str(rd), "--no-progress", env={**env, "KINLM_TEST_KILL_AT": "4"})
    assert rcs != [0, 0] and not (rd / "result.json").exists(), out[-3000:]
    assert last_state(rd)["step"] == 3
    rcs, out = two_nodes("run", str(spec), "--resume", str(rd), "--no-progress", env=env)
    assert rcs == [0, 0], out[-3000:]
    got = result_line(out)
    assert "2 ranks" in out and got["status"] == "finished" and got["step"] == 6
    assert got["eval/loss"] == want["eval/loss"] and got["tokens_seen"] == want["tokens_seen"]


@pytest.mark.slow
def test_a_run_checkpointed_on_two_ranks_resumes_on_one(tmp_path, env):
    """Killed after the step-3 checkpoint on 2 ranks, resumed on 1: the data order goes on from the
    examples the first part took (the sampler's `consumed`). The other direction saves and loads
    through the same state (its data order is tested on the sampler above)."""
    before, after = 2, 1
    spec, rd = write(tmp_path), tmp_path / "run"

    def launch(n, *args, extra=None):
        e = {**env, **(extra or {})}
        return torchrun(*args, env=e) if n == 2 else kinlm(*args, env=e)

    r = launch(before, "run", str(spec), "--run-dir", str(rd), "--no-progress", extra={"KINLM_TEST_KILL_AT": "4"})
    assert r.returncode != 0 and last_state(rd)["step"] == 3, r.stderr[-3000:]
    assert last_state(rd)["samplers"]["0"]["consumed"] == 3 * before * BATCH
    r = launch(after, "run", str(spec), "--resume", str(rd), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    got = result_line(r.stdout)
    assert got["status"] == "finished" and got["step"] == 6
    assert last_state(rd)["samplers"]["0"]["consumed"] == 3 * before * BATCH + 3 * after * BATCH
    block = SPEC["train"]["block_size"]
    assert got["tokens_seen"] == (3 * before + 3 * after) * BATCH * block
