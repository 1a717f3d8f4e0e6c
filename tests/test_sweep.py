"""`kinlm sweep`: one run directory per point, finished points skipped, interrupted ones resumed
by running the same command again; the parallel scheduler with faked devices."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from helpers import TINY, kinlm
from kinlm_core import sweep as sw

SPEC = {**TINY, "data": {**TINY["data"], "max_docs": 100},
        "train": {**TINY["train"], "max_steps": 4, "checkpoint_every": 2},
        "eval": {"every": 4, "batches": 1}}
GRID = ["--set-grid", "model.n_layer=1,2"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep of 2 seeds x a 2-value grid, shared by the tests below (they run in order)."""
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "tiny.json").write_text(json.dumps(SPEC))
    env = {"KINLM_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}

    def again():  # two points at once on the two CPU cores (no CUDA: no device per slot)
        return kinlm("sweep", "tiny.json", "--seeds", "2", *GRID, "--out", "out", "--parallel", "2",
                     cwd=tmp, env=env)

    return tmp, again(), again


def _snapshot(out: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")
            if p.is_file() and p.name != "sweep.json" and "logs" not in p.parts}


@pytest.mark.slow
def test_sweep_runs_every_point_with_its_seed_and_value(swept):
    tmp, r, _ = swept
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp / "out"
    dirs = sorted(p.parent for p in out.glob("tiny/*/seed_*/result.json"))
    assert [str(d.relative_to(out)) for d in dirs] == [
        "tiny/model.n_layer=1/seed_1", "tiny/model.n_layer=1/seed_2",
        "tiny/model.n_layer=2/seed_1", "tiny/model.n_layer=2/seed_2"]
    for d in dirs:
        spec = json.loads((d / "spec.json").read_text())
        assert spec["seed"] == int(d.name.split("_")[1])
        assert f"model.n_layer={spec['model']['n_layer']}" == d.parent.name
        result = json.loads((d / "result.json").read_text())
        assert (result["status"], result["step"]) == ("finished", 4)
    table = json.loads((out / "sweep.json").read_text())["points"]
    assert [(p["seed"], p["grid"], p["status"]) for p in table] == [
        (1, ["model.n_layer=1"], "finished"), (2, ["model.n_layer=1"], "finished"),
        (1, ["model.n_layer=2"], "finished"), (2, ["model.n_layer=2"], "finished")]
    assert all(p["seconds"] > 0 for p in table)
    assert "[4/4] tiny model.n_layer=2 seed_2 ... finished in" in r.stdout
    assert "next: kinlm compare out  (runs that differ only in seed are grouped" in r.stdout
    assert "CUDA_VISIBLE_DEVICES" not in r.stdout


@pytest.mark.slow
def test_running_the_same_sweep_again_runs_nothing(swept):
    tmp, _, again = swept
    before = _snapshot(tmp / "out")
    r = again()
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("skip (finished)") == 4 and "starting" not in r.stdout
    assert _snapshot(tmp / "out") == before


@pytest.mark.slow
def test_an_interrupted_sweep_is_finished_by_running_it_again(swept):
    """Point 4 as a killed sweep leaves it: a checkpoint at step 2, no result; the rerun resumes
    it from there and leaves the finished points alone."""
    tmp, _, again = swept
    out = tmp / "out"
    half = out / "tiny" / "model.n_layer=2" / "seed_2"
    (half / "result.json").unlink()
    shutil.rmtree(half / "final")
    shutil.rmtree(half / "checkpoints" / "step_0000004")
    before = {k: v for k, v in _snapshot(out).items() if str(half) not in k}
    r = again()
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("skip (finished)") == 3
    assert "[4/4] tiny model.n_layer=2 seed_2 ... resuming" in r.stdout
    assert "resuming" in (out / "logs" / "tiny" / "model.n_layer=2" / "seed_2.log").read_text()
    assert json.loads((half / "result.json").read_text())["step"] == 4
    assert {k: v for k, v in _snapshot(out).items() if str(half) not in k} == before


def test_a_bad_grid_key_names_the_point_and_runs_nothing(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(SPEC))
    r = kinlm("sweep", "tiny.json", "--seeds", "2", "--set-grid", "model.n_layerz=1,2", "--out", "out", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("kinlm sweep: tiny.json --set-grid model.n_layerz=1:")
    assert not (tmp_path / "out").exists()


def test_what_a_point_directory_asks_for(tmp_path):
    p = sw.Point(spec="s.json", name="s", seed=1, grid=[], overrides=[], run_dir=str(tmp_path / "r"), log="")
    assert sw.action(p) == "start"
    d = tmp_path / "r"
    d.mkdir()
    (d / "spec.json").write_text(json.dumps({"train": {"max_steps": 4}}))
    assert sw.action(p) == "start"  # no checkpoint: cleared and started again
    (d / "checkpoints" / "step_0000002").mkdir(parents=True)
    assert sw.action(p) == "resume"
    (d / "result.json").write_text(json.dumps({"status": "finished", "step": 2}))
    assert sw.action(p) == "resume"  # "finished" short of max_steps: it crashed
    (d / "result.json").write_text(json.dumps({"status": "finished", "step": 4}))
    assert sw.action(p) == "skip"


def test_device_slots():
    assert sw.device_groups("auto", 1, device_count=0) == [None]
    assert sw.device_groups("3", 1, device_count=0) == [None, None, None]
    assert sw.device_groups("auto", 1, device_count=4) == ["0", "1", "2", "3"]
    assert sw.device_groups("auto", 2, device_count=4) == ["0,1", "2,3"]
    with pytest.raises(sw.SweepError, match="needs 6 CUDA devices; 4 found"):
        sw.device_groups("3", 2, device_count=4)


class FakeProc:
    """A point that ends after a few polls (or with 75 when signalled)."""

    def __init__(self, polls, on_poll=None):
        self.polls, self.returncode, self.signals, self.on_poll = polls, None, [], on_poll

    def poll(self):
        if self.on_poll:
            self.on_poll()
        if self.returncode is None:
            self.polls -= 1
            if self.polls <= 0:
                self.returncode = 0
        return self.returncode

    def send_signal(self, sig):
        self.signals.append(sig)
        self.returncode = 75


def _points(tmp_path, n):
    return [sw.Point(spec="s.json", name="s", seed=i, grid=[], overrides=[f"seed={i}"],
                     run_dir=str(tmp_path / f"seed_{i}"), log=str(tmp_path / f"seed_{i}.log")) for i in range(n)]


def test_parallel_points_get_distinct_devices(tmp_path):
    points = _points(tmp_path, 7)
    live, seen = [], []

    def launch(p, resume, nproc):
        assert p.devices not in [q.devices for q in live]
        live.append(p)
        seen.append(p.devices)
        proc = FakeProc(polls=1 + p.seed % 3)
        poll = proc.poll

        def tracked():
            rc = poll()
            if rc is not None and p in live:
                live.remove(p)
            return rc
        proc.poll = tracked
        return proc

    slots = sw.device_groups("auto", 1, device_count=3)
    rc = sw.run(tmp_path, points, slots, echo=lambda m: None, launch=launch, poll_s=0)
    assert rc == 0 and not live
    assert sorted(set(seen)) == ["0", "1", "2"] and len(seen) == 7
    assert seen[:3] == ["0", "1", "2"]  # the first three start at once, one per device
    assert [p["status"] for p in json.loads((tmp_path / "sweep.json").read_text())["points"]] == ["finished"] * 7


def test_sigterm_is_forwarded_and_stops_the_sweep(tmp_path):
    points, procs, lines = _points(tmp_path, 3), [], []

    def launch(p, resume, nproc):
        procs.append(FakeProc(polls=100, on_poll=lambda: os.kill(os.getpid(), signal.SIGTERM)))
        return procs[-1]

    rc = sw.run(tmp_path, points, [None], echo=lines.append, launch=launch, poll_s=0)
    assert rc == 75
    assert len(procs) == 1 and procs[0].signals == [signal.SIGTERM]  # forwarded once; nothing else started
    assert "run the same command again to continue" in lines[-1].lower()
    assert [p.status for p in points] == ["preempted", "pending", "pending"]


def test_points_at_once_share_the_cores():
    assert sw.point_threads(2, 1, cores=2, environ={}) == "1"
    assert sw.point_threads(3, 1, cores=16, environ={}) == "5"
    assert sw.point_threads(2, 2, cores=16, environ={}) == "4"  # 2 points x 2 processes
    assert sw.point_threads(8, 1, cores=2, environ={}) == "1"  # never 0
    assert sw.point_threads(1, 1, cores=16, environ={}) is None  # one point has the machine
    assert sw.point_threads(4, 1, cores=16, environ={"OMP_NUM_THREADS": "3"}) is None  # the user's is kept


def test_each_parallel_point_process_gets_its_thread_share(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sw, "cpu_count", lambda: 6)
    seen, lines = [], []

    def launch(p, resume, nproc):
        seen.append(sw.point_env(p))
        return FakeProc(polls=1)

    assert sw.run(tmp_path, _points(tmp_path, 3), [None, None, None], echo=lines.append, launch=launch, poll_s=0) == 0
    assert seen == [{"OMP_NUM_THREADS": "2"}] * 3
    assert "[1/3] s seed_0 ... starting with OMP_NUM_THREADS=2" in lines
    seen.clear()
    assert sw.run(tmp_path / "b", _points(tmp_path / "b", 2), [None, None], echo=lines.append, launch=launch,
                  poll_s=0, share_cores=False) == 0
    assert seen == [{}, {}]  # jobs on a cluster: their scheduler gives them cores


@pytest.mark.slow
def test_sweep_through_submitit_local_executor_skips_and_resumes(tmp_path):
    """--launcher submitit (no sbatch here: submitit's local executor): every point a job, then the
    same skip/resume bookkeeping as the local launcher on the rerun."""
    pytest.importorskip("submitit")
    (tmp_path / "tiny.json").write_text(json.dumps(SPEC))
    env = {"KINLM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env["PATH"] = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                                  if not (Path(d) / "sbatch").exists())

    def again():
        return kinlm("sweep", "tiny.json", "--seeds", "2", "--out", "out", "--launcher", "submitit",
                     "--timeout-min", "10", cwd=tmp_path, env=env)

    r = again()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitting points through submitit (local executor, 0 GPU(s), 10 min each)" in r.stdout
    out = tmp_path / "out"
    for seed in (1, 2):
        result = json.loads((out / "tiny" / f"seed_{seed}" / "result.json").read_text())
        assert (result["status"], result["step"]) == ("finished", 4)
    assert [p["status"] for p in json.loads((out / "sweep.json").read_text())["points"]] == ["finished"] * 2
    assert len(list((out / "submitit").glob("*_result.pkl"))) == 2  # each point ran as a submitit job
    half = out / "tiny" / "seed_2"  # as a job killed after its step-2 checkpoint leaves it
    (half / "result.json").unlink()
    shutil.rmtree(half / "final")
    shutil.rmtree(half / "checkpoints" / "step_0000004")
    r = again()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[1/2] tiny seed_1 ... skip (finished)" in r.stdout
    assert "[2/2] tiny seed_2 ... resuming" in r.stdout
    assert "resuming" in (out / "logs" / "tiny" / "seed_2.log").read_text()
    assert json.loads((half / "result.json").read_text())["step"] == 4
