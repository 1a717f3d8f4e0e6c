"""train.batch_size "auto": the largest micro-batch that fits, the sequences per step kept, one back-off."""

import json

import pytest
import torch

from helpers import TermAt, kinlm
from kinlm_core.engine import batchsize
from kinlm_core.engine.train import RunStopped, Trainer, run
from kinlm_core.plugins import get_manager
from kinlm_core.spec import SpecError, validate


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def auto(tiny_spec, target=8):
    tiny_spec["train"].update(batch_size="auto", batch_size_target=target)
    return validate(tiny_spec)


def fixed(tiny_spec, batch=8):
    tiny_spec["train"]["batch_size"] = batch
    return validate(tiny_spec)


class Memory:
    """A device that runs out of memory for micro-batches over ``limit`` rows (``limits``: a new limit
    from an optimizer step on)."""

    def __init__(self, monkeypatch, limit: int, limits: dict | None = None):
        self.limit, self.limits = limit, limits or {}
        orig = Trainer._micro_loss

        def micro_loss(trainer, objective, model, batch, *a, **k):
            limit = self.limit
            for at, lim in sorted(self.limits.items()):
                if getattr(trainer, "step", 0) + 1 >= at:
                    limit = lim
            if batch["input_ids"].shape[0] > limit:
                raise torch.OutOfMemoryError(f"planted: {batch['input_ids'].shape[0]} rows > {limit}")
            return orig(trainer, objective, model, batch, *a, **k)

        monkeypatch.setattr(Trainer, "_micro_loss", micro_loss)


def losses(rd):
    return [json.loads(line)["train/loss"] for line in (rd / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in line]


@pytest.mark.slow
def test_auto_takes_the_largest_fitting_micro_batch_and_keeps_the_step(tmp_path, tiny_spec, monkeypatch):
    ref = run(fixed(json.loads(json.dumps(tiny_spec))), tmp_path / "fixed", log=lambda m: None)
    Memory(monkeypatch, limit=3)
    said = []
    r = run(auto(tiny_spec), tmp_path / "auto", log=said.append)
    assert r["batch"] == {"batch_size": "auto", "batch_size_target": 8, "micro_batch": 2, "grad_accum": 4,
                          "chosen_by": "estimated against the available memory, then tried", "backed_off": []}
    assert json.loads((tmp_path / "auto" / "env.json").read_text())["batch"]["micro_batch"] == 2
    assert ("train.batch_size auto: micro-batch 2 x grad_accum 4 = 8 sequences per step (estimated against the "
            "available memory, then tried)") in said
    # the same sequences per step: the same run as batch_size 8, up to float rounding
    assert r["tokens_seen"] == ref["tokens_seen"]
    assert losses(tmp_path / "auto") == pytest.approx(losses(tmp_path / "fixed"), rel=1e-5)
    assert r["eval/loss"] == pytest.approx(ref["eval/loss"], rel=1e-5)
    # spec.json keeps what the spec asked for
    assert json.loads((tmp_path / "auto" / "spec.json").read_text())["train"]["batch_size"] == "auto"


def test_an_oom_during_training_backs_off_once_and_redoes_the_step(tmp_path, tiny_spec, monkeypatch):
    ref = run(fixed(json.loads(json.dumps(tiny_spec))), tmp_path / "fixed", log=lambda m: None)
    Memory(monkeypatch, limit=8, limits={3: 4})  # from step 3 on, 8 rows no longer fit
    said = []
    r = run(auto(tiny_spec), tmp_path / "auto", log=said.append)
    assert r["status"] == "finished" and r["step"] == 6
    assert r["batch"]["backed_off"] == [{"step": 3, "from": 8, "to": 4}]
    assert (r["batch"]["micro_batch"], r["batch"]["grad_accum"]) == (4, 2)
    assert "step 3: out of memory with micro-batch 8; backing off to 4 x grad_accum 2 and redoing the step" in said
    steps = [json.loads(line)["step"] for line in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == [2, 4, 6]
    assert r["tokens_seen"] == ref["tokens_seen"]
    assert losses(tmp_path / "auto") == pytest.approx(losses(tmp_path / "fixed"), rel=1e-5)


def test_a_second_oom_stops_the_run(tmp_path, tiny_spec, monkeypatch):
    Memory(monkeypatch, limit=8, limits={3: 4, 5: 2})
    rd = tmp_path / "auto"
    with pytest.raises(RunStopped, match=r"^step 5: out of memory with micro-batch 4 after backing off once; stopped\. "
                                         r"The last checkpoint is kept: .*step_0000003$"):
        run(auto(tiny_spec), rd, log=lambda m: None)
    assert json.loads((rd / "result.json").read_text())["status"] == "stopped: out of memory at step 5"



def test_resume_keeps_the_checkpoints_micro_batch_and_is_exact(tmp_path, tiny_spec, monkeypatch):
    Memory(monkeypatch, limit=2)
    spec = auto(tiny_spec)
    full = run(spec, tmp_path / "full", log=lambda m: None)
    stopper = TermAt(4)
    get_manager().pm.register(stopper)
    try:
        assert run(spec, tmp_path / "part", log=lambda m: None)["status"].startswith("preempted")
    finally:
        get_manager().pm.unregister(stopper)
    resumed = run(spec, tmp_path / "part", resume=True, log=lambda m: None)
    assert resumed["batch"]["chosen_by"] == "checkpoint" and resumed["batch"]["micro_batch"] == 2
    assert resumed["eval/loss"] == full["eval/loss"]


def test_on_cpu_an_estimate_against_the_available_memory_limits_the_candidates(tmp_path, tiny_spec, monkeypatch):
    per_seq = 10**9  # far above the tiny model's weights, so the estimate is about the activations
    monkeypatch.setattr(batchsize, "saved_bytes", lambda fn: per_seq)
    monkeypatch.setattr(batchsize, "available_memory", lambda: int(2 * (2 * 2 * per_seq + 10**8)))
    r = run(auto(tiny_spec), tmp_path / "auto", log=lambda m: None)
    assert r["batch"]["micro_batch"] == 2  # 4 would need 8 GB of the 4.1 GB allowed


def test_saved_bytes_grows_with_the_batch():
    lin = torch.nn.Linear(16, 16)
    one = batchsize.saved_bytes(lambda: torch.relu(lin(torch.randn(1, 16))).sum())
    eight = batchsize.saved_bytes(lambda: torch.relu(lin(torch.randn(8, 16))).sum())
    assert one > 0 and eight >= 8 * 16 * 4 > one


def test_candidates_divide_the_target():
    assert batchsize.candidates(12) == [12, 6, 4, 3, 2, 1]
    assert batchsize.smaller(12, 6) == 4 and batchsize.smaller(12, 1) is None


@pytest.mark.parametrize("train, problem", [
    ({"batch_size": "auto"}, 'train: batch_size "auto" needs batch_size_target (sequences per optimizer step, '
                             'per rank)'),
    ({"batch_size": "auto", "batch_size_target": 8, "grad_accum": 2},
     'train: batch_size "auto" chooses grad_accum itself (batch_size_target / micro-batch); leave grad_accum out'),
    ({"batch_size_target": 8}, 'train: batch_size_target is only used with batch_size "auto"; the step is '
                               'batch_size x grad_accum sequences'),
])
def test_bad_auto_settings_are_one_line_each(tiny_spec, train, problem):
    tiny_spec["train"].update(train)
    with pytest.raises(SpecError) as e:
        validate(tiny_spec, "s.json")
    assert e.value.problems == [f"s.json: {problem}"]


def test_cli_run_with_fp16_keep_best_and_auto_batch(tmp_path, tiny_spec):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(tiny_spec))
    rd = tmp_path / "run"
    r = kinlm("run", str(spec), "--run-dir", str(rd), "--set", "train.precision=fp16", "--set",
              "train.keep_best=eval/loss", "--set", "train.batch_size=auto", "--set", "train.batch_size_target=4")
    assert r.returncode == 0, r.stderr
    assert "train.batch_size auto: micro-batch 4 x grad_accum 1 = 4 sequences per step" in r.stderr
    result = json.loads((rd / "result.json").read_text())
    assert result["precision"]["used"] == "fp16" and result["batch"]["micro_batch"] == 4
    assert result["best"]["step"] in (3, 6) and (rd / "best" / "manifest.json").exists()
