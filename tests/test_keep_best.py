"""train.keep_best: best/ holds the best evaluation's weights, through resume and early stopping."""

import json

import pytest
from safetensors.torch import load_file

from helpers import TermAt, kinlm
from kinlm_core.engine.train import Trainer, run
from kinlm_core.plugins import get_manager
from kinlm_core.spec import SpecError, validate


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def planted(monkeypatch, values: dict):
    """Evaluations report ``values[step]`` for their metrics (the real evaluation still runs)."""
    orig = Trainer.run_eval

    def run_eval(self):
        m = orig(self)
        for k, v in values.get(self.step, {}).items():
            m[k] = v
        return m

    monkeypatch.setattr(Trainer, "run_eval", run_eval)


def spec_of(tiny_spec, **train):
    tiny_spec["train"].update({"max_steps": 6, "checkpoint_every": 2, "keep_best": "eval/loss", **train})
    tiny_spec["eval"]["every"] = 2
    return tiny_spec


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def same(a, b) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


LOSSES = {2: {"eval/loss": 5.0}, 4: {"eval/loss": 3.0}, 6: {"eval/loss": 4.0}}


def test_best_holds_exactly_the_best_steps_weights(tmp_path, tiny_spec, monkeypatch):
    planted(monkeypatch, LOSSES)
    rd = tmp_path / "run"
    result = run(validate(spec_of(tiny_spec)), rd, log=lambda m: None)
    assert result["best"] == {"metric": "eval/loss", "step": 4, "value": 3.0}
    assert json.loads((rd / "result.json").read_text())["best"]["step"] == 4
    best = weights(rd / "best")
    assert same(best, weights(rd / "checkpoints" / "step_0000004"))
    assert not same(best, weights(rd / "checkpoints" / "step_0000006"))
    assert json.loads((rd / "best" / "manifest.json").read_text())["step"] == 4


def test_accuracy_is_kept_at_its_highest(tmp_path, tiny_spec, monkeypatch):
    planted(monkeypatch, {2: {"eval/accuracy": 0.2}, 4: {"eval/accuracy": 0.6}, 6: {"eval/accuracy": 0.5}})
    rd = tmp_path / "run"
    result = run(validate(spec_of(tiny_spec, keep_best="eval/accuracy")), rd, log=lambda m: None)
    assert result["best"] == {"metric": "eval/accuracy", "step": 4, "value": 0.6}
    assert same(weights(rd / "best"), weights(rd / "checkpoints" / "step_0000004"))


def test_a_metric_the_run_does_not_evaluate_is_refused_at_the_first_evaluation(tmp_path, tiny_spec):
    with pytest.raises(Exception, match=r"train.keep_best: eval/accuracy is not among this run's evaluation "
                                        r"metrics \(eval/loss, eval/ppl, eval/bpb\)"):
        run(validate(spec_of(tiny_spec, keep_best="eval/accuracy")), tmp_path / "run", log=lambda m: None)



def test_the_best_so_far_survives_a_resume(tmp_path, tiny_spec, monkeypatch):
    planted(monkeypatch, LOSSES)
    spec = validate(spec_of(tiny_spec))
    full = run(spec, tmp_path / "full", log=lambda m: None)
    stopper = TermAt(5)
    get_manager().pm.register(stopper)
    try:
        part = run(spec, tmp_path / "part", log=lambda m: None)
    finally:
        get_manager().pm.unregister(stopper)
    assert part["status"].startswith("preempted") and part["best"]["step"] == 4
    resumed = run(spec, tmp_path / "part", resume=True, log=lambda m: None)
    # step 6 (4.0) does not beat the best before the interruption (3.0 at step 4)
    assert resumed["best"] == full["best"] == {"metric": "eval/loss", "step": 4, "value": 3.0}
    assert same(weights(tmp_path / "part" / "best"), weights(tmp_path / "full" / "best"))


def test_early_stopping_keeps_the_best(tmp_path, tiny_spec, monkeypatch):
    planted(monkeypatch, LOSSES)
    tiny_spec["eval"]["early_stop_patience"] = 1
    rd = tmp_path / "run"
    result = run(validate(spec_of(tiny_spec, max_steps=10)), rd, log=lambda m: None)
    assert result["early_stopped"] and result["step"] == 6
    assert result["best"]["step"] == 4
    assert same(weights(rd / "best"), weights(rd / "checkpoints" / "step_0000004"))


def test_selecting_on_the_test_split_is_refused(tiny_spec):
    tiny_spec["eval"]["split"] = "test"
    with pytest.raises(SpecError) as e:
        validate(spec_of(tiny_spec), "s.json")
    assert e.value.problems == ['s.json: train.keep_best: selects on eval.split "test"; choosing the best checkpoint '
                                'on the test split leaks it into the result; evaluate on "validation" during training']


def test_cli_eval_and_export_take_the_best_weights(tmp_path, tiny_spec, monkeypatch):
    planted(monkeypatch, LOSSES)
    rd = tmp_path / "run"
    run(validate(spec_of(tiny_spec)), rd, log=lambda m: None)
    r = kinlm("eval", str(rd), "--weights", "best", "--batches", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["step"] == 4 and out["weights"] == "best"
    r = kinlm("export", str(rd), "--weights", "best")
    assert r.returncode == 0, r.stderr
    assert (rd / "export-best" / "model.safetensors").exists()


def test_cli_best_weights_of_a_run_without_keep_best_is_one_line(tmp_path, tiny_spec):
    rd = tmp_path / "run"
    tiny_spec["train"]["max_steps"] = 2
    run(validate(tiny_spec), rd, log=lambda m: None)
    r = kinlm("eval", str(rd), "--weights", "best", "--batches", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"kinlm: {rd}: no best/ weights (the run's spec sets no "
                                             "train.keep_best, or no evaluation has finished yet)"]


def test_cli_compare_reports_the_best_evaluation(tmp_path, tiny_spec, monkeypatch):
    planted(monkeypatch, LOSSES)  # selection follows the planted losses; metrics.jsonl has the real ones
    rd = tmp_path / "run"
    run(validate(spec_of(tiny_spec)), rd, log=lambda m: None)
    logged = {m["step"]: m["eval/loss"] for m in map(json.loads, (rd / "metrics.jsonl").read_text().splitlines())
              if "eval/loss" in m}
    r = kinlm("compare", str(rd), "--json", "--weights", "best")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(str(logged[4])) >= 1 and str(logged[6]) not in r.stdout
    r = kinlm("compare", str(rd), "--json")
    assert r.returncode == 0 and str(logged[6]) in r.stdout
    other = tmp_path / "plain"
    tiny_spec["train"].pop("keep_best")
    run(validate(tiny_spec), other, log=lambda m: None)
    r = kinlm("compare", str(other), "--weights", "best")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"kinlm compare: {other}: --weights best: no best evaluation recorded (the run's spec sets no "
        "train.keep_best, or none has finished)"]


def test_a_full_disk_at_best_stops_the_run_and_keeps_the_previous_best(tmp_path, tiny_spec, monkeypatch):
    import shutil
    from collections import namedtuple

    from kinlm_core.engine import checkpoint as ckpt
    from kinlm_core.errors import RunStopped

    planted(monkeypatch, LOSSES)
    rd = tmp_path / "run"
    real = shutil.disk_usage
    Usage = namedtuple("Usage", "total used free")
    # the run directory's disk (where best/ goes; checkpoints/ is asked apart) fills up after step 2's best/
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: Usage(10**9, 10**9, 0) if p == rd and (rd / "best").exists() else real(p))
    with pytest.raises(RunStopped, match=rf"^{rd / 'best'}: cannot write the best weights \(disk full\); the previous "
                                         r"best/ is kept$"):
        run(validate(spec_of(tiny_spec)), rd, log=lambda m: None)
    assert json.loads((rd / "best" / "manifest.json").read_text())["step"] == 2
    ckpt.verify(rd / "best")
    assert not (rd / ".tmp-best").exists()
    assert json.loads((rd / "result.json").read_text())["status"] == "stopped: cannot write best/ at step 4"


@pytest.mark.slow
def test_a_crash_between_the_renames_leaves_the_old_best_readable(tmp_path, tiny_spec, monkeypatch):
    from kinlm_core.engine import checkpoint as ckpt

    planted(monkeypatch, LOSSES)
    rd = tmp_path / "run"
    run(validate(spec_of(tiny_spec)), rd, log=lambda m: None)
    (rd / "best").rename(rd / ".old-best")  # as if killed after moving the old best aside
    assert ckpt.best_folder(rd) == rd / ".old-best"
    r = kinlm("eval", str(rd), "--weights", "best", "--batches", "1")
    assert r.returncode == 0 and json.loads(r.stdout)["step"] == 4
