"""lm-evaluation-harness from kinlm (issue #33, item 3): kinlm's shipped BLiMP paradigms as harness
tasks, `kinlm eval --lm-eval`, `kinlm compare` showing its scores. The harness itself is the optional
extra kinlm-core[lmeval]; tests that run it are skipped where it is not installed."""

import json

import pytest
import torch
import yaml

from helpers import TINY, kinlm
from kinlm_core import blimp, component, lmeval
from kinlm_core.data.tokenizers import ByteTokenizer
from kinlm_core.engine.export import export_final

pytestmark = pytest.mark.slow  # loads exports in a separate process: seconds each

needs_lm_eval = pytest.mark.skipif(lmeval.available() is not None, reason="lm-evaluation-harness is not installed "
                                   "(pip install 'kinlm-core[lmeval]')")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
PARADIGMS = ["adjunct_island", "anaphor_gender_agreement"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))


def gpt(block_size=256):
    torch.manual_seed(0)
    return component("model", "gpt")(n_layer=1, n_head=2, d_model=32, block_size=block_size, bias=False).build(257).eval()


def test_blimp_scores_only_the_tokenizers_vocabulary():
    """gpt pads its vocabulary (257 -> 320 rows); the padded rows are no tokens and must not take
    probability mass, or kinlm's BLiMP differs from the harness's on the export (cut to 257)."""
    model, tok = gpt(), ByteTokenizer()
    sentences = ["The cat sat.", "The cats sat."]
    before, _ = blimp.sentence_logprobs(model, tok, sentences)
    with torch.no_grad():
        model.wte.weight[257:] = 5.0  # the padded rows' logits change, the real tokens' do not
    after, _ = blimp.sentence_logprobs(model, tok, sentences)
    assert before == after


def test_the_blimp_task_yamls_name_every_shipped_paradigm(tmp_path):
    names = lmeval.write_blimp_tasks(tmp_path)
    assert len(names) == 67 and names[0] == "kinlm_blimp_adjunct_island"
    one = yaml.safe_load((tmp_path / "kinlm_blimp_adjunct_island.yaml").read_text())
    data = one["dataset_kwargs"]["data_files"]["train"]
    assert data.endswith("kinlm_core/data/blimp/adjunct_island.jsonl.gz") and (blimp.DATA / "adjunct_island.jsonl.gz").exists()
    assert one["doc_to_choice"] == "{{[sentence_good, sentence_bad]}}" and one["doc_to_target"] == 0
    group = yaml.safe_load((tmp_path / "_kinlm_blimp.yaml").read_text())
    assert group["group"] == "kinlm_blimp" and group["task"] == names


def test_scores_keep_the_metrics_the_harness_reports():
    result = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A", "sample_len": 30},
                          "g": {"acc,none": 0.25, "acc,strict": 1}},
              "higher_is_better": {"t": {"acc": True}}}
    assert lmeval.scores(result) == {"t/acc": 0.5, "g/acc": 0.25, "g/acc,strict": 1.0}


@needs_lm_eval
def test_kinlm_blimp_tasks_give_kinlms_own_blimp_accuracy(tmp_path, offline):
    model, tok = gpt(), ByteTokenizer()
    export_final(model, None, tok, tmp_path / "export")
    result = lmeval.evaluate(tmp_path / "export", [lmeval.BLIMP_PREFIX + p for p in PARADIGMS], limit=30)
    ours = blimp.score(model, tok, PARADIGMS, max_pairs=30)
    theirs = lmeval.scores(result)
    assert {p: theirs[f"kinlm_blimp_{p}/acc"] for p in PARADIGMS} == {p: ours[p] for p in PARADIGMS}
    assert len({ours[p] for p in PARADIGMS}) == 2  # two different accuracies: the comparison can tell them apart


@needs_lm_eval
def test_the_harness_loads_a_custom_code_export(tmp_path, offline):
    """The harness's hf model with trust_remote_code on a custom-code export (tests/test_hf_export.py's toy)."""
    import importlib.util

    from helpers import ROOT

    # by path: under pytest-xdist a plugin's tests/test_hf_export.py may hold the name test_hf_export
    spec = importlib.util.spec_from_file_location("core_test_hf_export", ROOT / "tests" / "test_hf_export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    toy = mod.toy

    model, tok = toy(), ByteTokenizer()
    export_final(model, None, tok, tmp_path / "export")
    result = lmeval.evaluate(tmp_path / "export", ["kinlm_blimp_anaphor_gender_agreement"], limit=20)
    ours = blimp.score(model, tok, ["anaphor_gender_agreement"], max_pairs=20)
    assert lmeval.scores(result)["kinlm_blimp_anaphor_gender_agreement/acc"] == ours["anaphor_gender_agreement"]


@needs_lm_eval
def test_an_unknown_task_is_named(tmp_path, offline):
    export_final(gpt(), None, ByteTokenizer(), tmp_path / "export")
    with pytest.raises(ValueError, match="unknown lm-eval task.*kinlm_blimp_no_such_paradigm"):
        lmeval.evaluate(tmp_path / "export", ["kinlm_blimp_no_such_paradigm"])


def test_lm_eval_options_without_lm_eval_are_refused(tmp_path):
    r = kinlm("eval", str(tmp_path), "--limit", "3")
    assert r.returncode == 2 and "--lm-eval-include and --limit go with --lm-eval" in r.stderr
    r = kinlm("eval", str(tmp_path), "--blimp", "--lm-eval", "kinlm_blimp")
    assert r.returncode == 2 and "give one" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@needs_lm_eval
def test_kinlm_eval_lm_eval_writes_json_and_compare_shows_it(tmp_path):
    spec = json.loads(json.dumps(TINY))
    spec["model"].update(block_size=128)
    spec["train"].update(block_size=128, max_steps=2)
    (tmp_path / "tiny.json").write_text(json.dumps(spec))
    env = {"KINLM_CACHE": str(tmp_path / "cache"), "HF_DATASETS_CACHE": str(tmp_path / "datasets"), **OFFLINE}
    rd = tmp_path / "run"
    assert kinlm("run", str(tmp_path / "tiny.json"), "--run-dir", str(rd), env=env).returncode == 0
    r = kinlm("eval", str(rd), "--lm-eval", "kinlm_blimp_adjunct_island", "--limit", "5", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "kinlm_blimp_adjunct_island" in r.stdout and "acc" in r.stdout
    saved = json.loads((rd / "analysis" / "lm_eval" / "step_0000002" / "results.json").read_text())
    acc = saved["results"]["kinlm_blimp_adjunct_island"]["acc,none"]
    assert saved["kinlm"]["limit"] == 5 and 0.0 <= acc <= 1.0
    r = kinlm("compare", str(rd), env=env)
    assert r.returncode == 0, r.stderr
    assert "lm-eval kinlm_blimp_adjunct_island/acc" in r.stdout and f"{acc:.3f}" in r.stdout
    r = kinlm("eval", str(rd), "--lm-eval", "no_such_task_xyz", "--limit", "5", env=env)
    assert r.returncode == 2 and "unknown lm-eval task(s): no_such_task_xyz" in r.stderr
    assert (rd / "analysis" / "lm_eval" / "step_0000002" / "results.json").exists()  # kept
