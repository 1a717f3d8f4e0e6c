"""The raw archive (kinlm_core.claims.archive, #30 item 8): what a report reads of its runs is kept
as JSON lines, and the same cards, and tools/results.py's page byte for byte, come back from the
archive alone, with the runs deleted."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from test_claims import REG, fake_run, finals, installed_file, write_claim
from test_results_tool import plant_page_runs

from kinlm_core import claims as cl
from kinlm_core.claims import archive


def test_a_report_read_back_from_its_archive_gives_the_same_cards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inst = installed_file(write_claim(tmp_path, lr_grid={"values": [0.001, 0.002, 0.004]},
                                      registration={**REG, "tuning_seeds": [9], "status": "after_exploratory_runs"},
                                      metric={"kind": "tokens_to_target", "key": "eval/loss", "target": 2.2}))
    out = tmp_path / "out"
    for arm, best in (("base", "0.002"), ("new", "0.002")):
        for lr in ("0.001", "0.002", "0.004"):
            finals(out, inst, arm, [2.0 if lr == best else 2.5], lr=lr, seed0=9, tuning=True)
    finals(out, inst, "base", [2.1, 2.15, 2.12], lr="0.002")
    finals(out, inst, "new", [1.6, 1.62, 1.65], lr="0.002")
    with archive.recording() as rec:
        live = [cl.json_card(c) for c in cl.report([inst], out)]
    lines = archive.lines(rec, [inst], live, {"machine": "x"})
    path = tmp_path / "archive.jsonl"
    archive.write(path, lines)
    back = archive.read(path)
    assert back == json.loads(json.dumps(lines))
    runs = [d for d in back if d["kind"] == "run"]
    verdict = [d for d in runs if "tuning" not in d["run"]]
    assert len(runs) == 12 and len(verdict) == 6  # 3 verdict seeds and 3 grid values on tuning seed 9, per arm
    new = sorted((d for d in verdict if "/new-" not in d["run"] and "new" in d["spec"].get("name", "")),
                 key=lambda d: d["seed"])
    assert [d["seed"] for d in new] == [1, 2, 3]
    assert [d["values"]["test.better"] for d in new] == live[0]["arms"][1]["values"]
    assert {d["tokens_seen"] for d in runs} == {1000}
    assert all("eval/loss" in r for d in runs for r in d["metrics"])
    (claim,) = [d for d in back if d["kind"] == "claim"]
    assert claim["hash"] == cl.registration_hash(inst.claim) and claim["document"]["id"] == "test.better"
    shutil.rmtree(out)  # nothing below reads the runs
    with archive.replaying(back):
        again = [cl.json_card(c) for c in cl.report(archive.installed_from(back), out)]
    assert json.dumps(again, sort_keys=True) == json.dumps(live, sort_keys=True)
    assert again[0]["arms"][1]["lr"]["chosen"] == "0.002" and again[0]["verdict"] == live[0]["verdict"]
    # outside the replay the runs are gone: the cards say so
    assert cl.report([inst], out)[0]["verdict"] == "not testable"


def test_a_replay_never_evaluates_or_trains(tmp_path, monkeypatch):
    from kinlm_core.claims import controls

    calls = []
    monkeypatch.setattr(controls.subprocess, "run", lambda *a, **k: calls.append(a))
    run = tmp_path / "arms" / "k" / "n" / "seed_1"
    with archive.replaying([]):
        data, problem = controls.ensure_eval(run, "test")
    assert data is None and "not in the archive" in problem and calls == []


@pytest.mark.slow
def test_results_page_from_the_archive_is_byte_for_byte_the_same(tmp_path):
    runs = tmp_path / "runs"
    plant_page_runs(runs)
    docs = tmp_path / "docs"
    r = subprocess.run([sys.executable, "tools/results.py", "--no-train", "--runs", str(runs), "--docs", str(docs)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    page, cards = (docs / "results.md").read_bytes(), (docs / "results" / "claims.json").read_bytes()
    lines = archive.read(docs / "results" / "archive.jsonl")
    env = next(d for d in lines if d["kind"] == "page")
    assert {"machine", "cpus", "torch", "python"} <= set(env) and env["runs"] == str(runs)
    assert "seed_1338" in next(d for d in lines if d["kind"] == "compare")["markdown"]  # the runs table
    er = [d for d in lines if d["kind"] == "run" and "cvfp.effective_rank" in d["values"]]
    # the per-seed values of its treatment (55-58%) and of its w = 0 arm (10-12%)
    assert sorted(d["values"]["cvfp.effective_rank"] for d in er) == [10.0, 11.0, 12.0, 55.0, 57.0, 58.0]
    assert (docs / "results" / "archive.jsonl").stat().st_size < 200_000
    shutil.rmtree(runs)
    (docs / "results.md").unlink()
    r = subprocess.run([sys.executable, "tools/results.py", "--from-archive", "--docs", str(docs)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "kinlm claims run" not in r.stdout and "kinlm compare" not in r.stdout
    assert (docs / "results.md").read_bytes() == page
    assert (docs / "results" / "claims.json").read_bytes() == cards


# --- the curves figure (#30 item 9) --------------------------------------------------------------


def _figure_card(tmp_path, n_arms=2):
    """A card of a loss claim whose arms ran 3 seeds of 10 evaluations up to 1.23 M tokens, with a
    bigram control per arm and the untrained weights at step 0."""
    arms = []
    for i in range(n_arms):
        runs = []
        for s in (1, 2, 3):
            curve = [(123_456 * (j + 1), 5.0 - 0.1 * j - 0.05 * s - 0.2 * i) for j in range(10)]
            runs.append(str(fake_run(tmp_path / f"arm{i}" / f"seed_{s}", s, curve)))
        grid = {"0.001": str(fake_run(tmp_path / f"tune{i}" / "seed_9", 9, [(123_456 * (j + 1), 5.5 - 0.1 * j)
                                                                            for j in range(10)]))}
        arms.append({"name": f"arm{i}", "label": f"arm {i}", "role": "treatment" if i == 0 else "baseline",
                     "runs": runs, "grid_runs": grid, "lr": {"chosen": "0.002"}})
    controls = [{"role": "ngram", "label": "bigram", "per_arm": {a["name"]: {"ngram_loss": 4.4} for a in arms}},
                {"role": "untrained", "label": "untrained", "mean": 7.6, "what": "test/loss, step-0 weights"}]
    return {"id": "test.fig", "metric_spec": {"kind": "key", "key": "test/loss"}, "arms": arms, "controls": controls}


def test_the_curves_figure_has_a_band_the_controls_and_tick_labels_that_do_not_overlap(tmp_path):
    from kinlm_core.claims import figures as render

    for n_arms in (1, 2, 5):
        fig = render.curves_fig(_figure_card(tmp_path / str(n_arms), n_arms))
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for labels, lim, i in ((ax.get_xticklabels(), ax.get_xlim(), 0), (ax.get_yticklabels(), ax.get_ylim(), 1)):
                boxes = [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()
                         and lim[0] <= t.get_position()[i] <= lim[1]]
                assert len(boxes) <= 7 and (len(boxes) >= 2 or (i == 1 and ax is not fig.axes[0]))  # shared y
                for i, a in enumerate(boxes):
                    for b in boxes[i + 1:]:
                        assert not a.overlaps(b), [t.get_text() for t in labels]
    ax = fig.axes[0]
    assert {t.get_text() for t in ax.get_xticklabels()} & {"500k", "1M", "1.2M", "400k", "800k"}
    # the band: the 3 verdict seeds' range at each evaluation (seed 1 highest, seed 3 lowest)
    (band,) = [c for c in ax.collections if c.get_label().startswith("verdict seeds' range (3)")]
    ys = band.get_paths()[0].vertices[:, 1]
    assert max(ys) == pytest.approx(5.0 - 0.05) and min(ys) == pytest.approx(5.0 - 0.9 - 0.15)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["verdict seeds' mean"].get_ydata())[0] == pytest.approx(4.9)
    assert list(lines["bigram (test split)"].get_ydata()) == [4.4, 4.4]  # the n-gram beside the arm
    assert list(lines["untrained (step 0)"].get_xydata()[0]) == [0, 7.6]  # the untrained weights at step 0
    assert "untrained (step 0)" not in {ln.get_label() for ln in fig.axes[1].get_lines()}  # the treatment's only
    assert ax.get_ylabel() == "eval/loss"
    # a card says when its curves have fewer than 8 evaluations a run
    card = _figure_card(tmp_path / "n", 1)
    assert render.curves_fig(card) is not None and card["curve_points"] == 10
    for a in card["arms"]:
        for r in a["runs"]:
            lines = (Path(r) / "metrics.jsonl").read_text().splitlines()
            (Path(r) / "metrics.jsonl").write_text("\n".join(lines[:6]) + "\n")
    render.curves_fig(card)
    assert card["curve_points"] == 6
