"""Bad input of every kind ends in one line that names where it came from, exit 2, and nothing
written where it should not be (issue #31, "Inputs"): non-finite numbers, unsafe run names, JSON
nested too deep for the parser, data files that are missing, empty or binary, a refused --run-dir,
a run that fails before its first step."""

import json
import os
from pathlib import Path

import pytest

from helpers import ROOT, TINY, kinlm, make_dist

from kinlm_core import rundir
from kinlm_core.errors import DataError, SpecError
from kinlm_core.spec import load_spec

QUICKSTART = str(ROOT / "specs/quickstart.json")
DEEP = 30_000  # far past Python's recursion limit (1,000): json.loads raises RecursionError


@pytest.fixture
def env(tmp_path_factory):
    return {"KINLM_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}


def deep(n: int) -> str:
    return "[" * n + "]" * n


def one_line(r, code: int = 2) -> str:
    """The only line of a failed command's stderr (no traceback), after checking its exit code."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr
    return lines[0]


def write(tmp_path: Path, text: str, name: str = "spec.json") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --- non-finite numbers ---------------------------------------------------------------------------

TINY_TEXT = json.dumps(TINY)


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e309", "-2e400"])
def test_a_non_finite_number_in_a_spec_file_is_refused_with_its_json_path(tmp_path, literal):
    p = write(tmp_path, TINY_TEXT.replace('"lr": 0.003', f'"lr": {literal}'))
    assert f'"lr": {literal}' in p.read_text()
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert e.value.problems == [f"{p}: train.lr: {literal} is not a finite number"]


def test_a_non_finite_number_anywhere_in_the_file_is_refused_even_where_no_float_is_expected(tmp_path):
    # "requires" holds strings: the loader refuses the number before validation could say "string expected"
    p = write(tmp_path, TINY_TEXT.replace('"seed": 1', '"seed": 1, "requires": {"x": [1, NaN]}'))
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert e.value.problems == [f"{p}: requires.x[1]: NaN is not a finite number"]


@pytest.mark.parametrize("item,expected", [
    ("train.lr=inf", '--set train.lr=inf: train.lr: input should be a finite number (got "inf")'),
    ("train.lr=1e309", "--set train.lr=1e309: train.lr: 1e309 is not a finite number"),
    ("model.dropout=NaN", "--set model.dropout=NaN: model.dropout: NaN is not a finite number"),
    ('train.betas=[0.9, "-inf"]', '--set train.betas=[0.9, "-inf"]: train.betas[1]: input should be a finite number (got "-inf")'),
    ('generate=[{"type": "sample", "prompt": "a", "temperature": "nan"}]',
     '--set generate=[{"type": "sample", "prompt": "a", "temperature": "nan"}]: generate[0].temperature: input should be '
     'a finite number (got "nan")'),
    # a plain pydantic model nested in a component config (a phase's optim): the spec's own check finds it
    ('curriculum={"type": "phases", "phases": [{"name": "a", "optim": {"lr": "inf"}}]}',
     '--set curriculum={"type": "phases", "phases": [{"name": "a", "optim": {"lr": "inf"}}]}: '
     "curriculum.phases[0].optim.lr: inf is not a finite number"),
])
def test_a_non_finite_number_through_set_is_refused(tmp_path, item, expected):
    p = write(tmp_path, TINY_TEXT)
    with pytest.raises(SpecError) as e:
        load_spec(p, [item])
    assert e.value.problems == [expected]


@pytest.mark.slow
def test_validate_and_run_refuse_an_infinite_learning_rate_in_one_line(tmp_path):
    p = write(tmp_path, TINY_TEXT.replace('"lr": 0.003', '"lr": 1e309'))
    for cmd in ("validate", "run"):
        r = kinlm(cmd, str(p), cwd=tmp_path)
        assert one_line(r) == f"{p}: train.lr: 1e309 is not a finite number"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["spec.json"]  # run wrote nothing
    p.write_text(TINY_TEXT)
    r = kinlm("run", str(p), "--set", "train.lr=inf", cwd=tmp_path)
    assert one_line(r) == '--set train.lr=inf: train.lr: input should be a finite number (got "inf")'


@pytest.mark.slow
def test_generate_opt_refuses_a_non_finite_number_before_loading_the_run(tmp_path):
    r = kinlm("generate", str(tmp_path / "nowhere"), "--prompt", "a", "--opt", "temperature=inf")
    assert one_line(r) == "kinlm generate: --opt temperature: Input should be a finite number"
    r = kinlm("generate", str(tmp_path / "nowhere"), "--prompt", "a", "--opt", "temperature=1e999")
    assert one_line(r) == ("kinlm generate: --opt temperature=1e999: temperature: 1e999 is not a finite number")


# --- run names ------------------------------------------------------------------------------------

SEP = "holds a path separator; a name is one folder name in the runs folder, e.g. \"my-run\""
DOT = "starts with '.'; a name is a visible folder name in the runs folder, e.g. \"my-run\""


@pytest.mark.parametrize("name,why", [
    ("../../escaped", SEP), ("/tmp/abs", SEP), ("a/b", SEP), ("a\\b", SEP), ("..", DOT), (".", DOT), (".hidden", DOT),
    ("a\nb", "holds a control character ('\\n'); a name is one folder name in the runs folder, e.g. \"my-run\""),
    ("a\x00b", "holds a control character ('\\x00'); a name is one folder name in the runs folder, e.g. \"my-run\""),
    ("x" * 101, "101 characters; at most 100 (it names the run's directory)"),
    ("é" * 100 + "", None),  # 100 characters, 200 bytes: allowed
    ("\U0001F600" * 51, "204 bytes in UTF-8; at most 200 (it names the run's directory)"),
])
def test_spec_names_that_are_not_one_safe_folder_name_are_refused(tmp_path, name, why):
    p = write(tmp_path, json.dumps({**TINY, "name": name}))
    if why is None:
        assert load_spec(p).name == name
        return
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert e.value.problems == [f"{p}: name: {why} (got {json.dumps(name)[:60]})"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/kinlm-test-absolute-name", "x" * 300])
def test_run_with_an_unsafe_name_writes_nothing_anywhere(tmp_path, name):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    p = write(work, json.dumps({**TINY, "name": name}))
    for cmd in ("validate", "run"):
        r = kinlm(cmd, str(p), cwd=work)
        assert one_line(r).startswith(f"{p}: name: ")
    assert sorted(str(q.relative_to(tmp_path)) for q in tmp_path.rglob("*")) == ["a", "a/b", "a/b/spec.json"]
    assert not Path("/tmp/kinlm-test-absolute-name").exists()
    r = kinlm("run", str(p), "--set", "name=ok", "--set", f"name={name}", cwd=work)
    assert one_line(r).startswith(f"--set name={name[:40]}")


def test_a_name_with_a_newline_set_on_the_command_line_stays_one_line(tmp_path):
    r = kinlm("validate", QUICKSTART, "--set", "name=a\nb")
    assert one_line(r) == ("--set name=a\\nb: name: holds a control character ('\\n'); a name is one folder name in "
                           "the runs folder, e.g. \"my-run\" (got \"a\\nb\")")


# --- JSON nested too deep -------------------------------------------------------------------------


@pytest.mark.slow
def test_validate_refuses_a_100000_deep_file_in_one_line(tmp_path):
    p = write(tmp_path, deep(100_000), "deep.json")
    assert one_line(kinlm("validate", str(p))) == f"{p}: nesting 100000 levels deep; at most 64 allowed"
    claim = write(tmp_path, '{"claim": ' + deep(100_000) + "}", "claim.json")
    ok = tmp_path / "ok.json"
    ok.write_text(TINY_TEXT)
    r = kinlm("validate", str(claim), str(ok))  # every file is checked: the good one still says ok
    assert one_line(r) == f"{claim}: nesting 100001 levels deep; at most 64 allowed"
    assert r.stdout.strip() == f"ok: {ok}"


@pytest.mark.slow
def test_a_deep_value_through_set_opt_and_set_grid_is_refused_in_one_line(tmp_path):
    value = deep(DEEP)
    shown = f"train.lr={value}"[:60] + f"... ({len(value) + 9:,} characters)"
    assert one_line(kinlm("validate", QUICKSTART, "--set", f"train.lr={value}")) == (
        f"--set {shown}: nesting {DEEP} levels deep; at most 64 allowed")
    assert one_line(kinlm("run", QUICKSTART, "--set", f"train.lr={value}", cwd=tmp_path)) == (
        f"--set {shown}: nesting {DEEP} levels deep; at most 64 allowed")
    r = kinlm("generate", str(tmp_path / "nowhere"), "--prompt", "a", "--opt", f"temperature={value}")
    assert one_line(r) == (f"kinlm generate: --opt {f'temperature={value}'[:60]}... ({len(value) + 12:,} characters): "
                           f"nesting {DEEP} levels deep; at most 64 allowed")
    r = kinlm("sweep", QUICKSTART, "--set-grid", f"train.lr={value}", "--out", str(tmp_path / "sw"))
    assert one_line(r) == f"kinlm sweep: --set-grid train.lr: nesting {DEEP} levels deep; at most 64 allowed"
    key = ".".join(["a"] * DEEP)
    r = kinlm("validate", QUICKSTART, "--set", f"{key}=1")
    assert one_line(r) == f"--set {key[:60]}... ({len(key) + 2:,} characters): a path {DEEP} levels deep; at most 64 allowed"
    assert sorted(tmp_path.iterdir()) == []


def test_a_deep_claim_file_is_one_claim_error(tmp_path):
    from kinlm_core import claims

    p = write(tmp_path, '{"claim": ' + deep(DEEP) + "}", "claim.json")
    with pytest.raises(claims.ClaimError) as e:
        claims.load_claim(p)
    assert e.value.problems == [f"{p}: nesting {DEEP + 1} levels deep; at most 64 allowed"]


def test_a_deep_jsonl_row_is_one_data_error(tmp_path):
    from kinlm_core.data.sources import JsonlConfig

    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n' + deep(DEEP) + "\n")
    cfg = JsonlConfig(path=str(tmp_path / "d.jsonl"))
    with pytest.raises(DataError) as e:
        list(cfg.documents("train"))
    assert str(e.value) == (f"data.path: jsonl: {tmp_path / 'd.jsonl'}:2 is not a JSON object (nested too deep, or "
                            f"another value); each line holds one object with a 'text' field")


# --- data files ---------------------------------------------------------------------------------


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {"empty": b"", "blank": b"\n \n\t\n", "binary": b"text\x00\x01\x02" * 100, "latin1": "caf\xe9 au lait".encode("latin-1"),
             "good": b"one paragraph\n\nanother one\n"}
    out = {}
    for k, v in files.items():
        out[k] = tmp_path / f"{k}.txt"
        out[k].write_bytes(v)
    return out


def test_text_files_that_are_missing_empty_or_binary_are_refused_before_the_run_at_their_pattern(tmp_path):
    from kinlm_core.data.sources import TextFilesConfig

    f = _files(tmp_path)
    cases = {
        "empty": f"{f['empty']} is empty",
        "binary": f"{f['binary']} is binary, not text (a NUL byte at offset 4)",
        "latin1": f"{f['latin1']} is not UTF-8 text (byte 0xe9 at offset 3); convert it, e.g. iconv -f latin1 -t utf-8",
    }
    for k, why in cases.items():
        cfg = TextFilesConfig(train=[str(f["good"])], validation=[str(f["good"]), str(f[k])])
        with pytest.raises(DataError) as e:
            cfg.check_available()
        assert (e.value.path, e.value.message) == ("data.validation[1]", why)
    cfg = TextFilesConfig(train=[str(tmp_path / "nothing*.txt")])
    with pytest.raises(DataError) as e:
        cfg.check_available()
    assert str(e.value) == (f"data.train[0]: no file matches {str(tmp_path / 'nothing*.txt')!r}; check the path "
                            f"(globs like data/*.txt are allowed)")
    # blank: it has bytes, but no document
    cfg = TextFilesConfig(train=[str(f["blank"]), str(f["good"])])
    cfg.check_available()
    with pytest.raises(DataError) as e:
        list(cfg.documents("train"))
    assert str(e.value) == f"data.train[0]: {f['blank']} holds no documents (it is empty or blank)"


def test_jsonl_and_parquet_problems_name_data_path(tmp_path):
    from kinlm_core.data.sources import JsonlConfig, ParquetConfig

    f = _files(tmp_path)
    (tmp_path / "rows.jsonl").write_text('{"text": ""}\n{"text": ""}\n')
    with pytest.raises(DataError) as e:
        JsonlConfig(path={"train": str(f["binary"])}).check_available()
    assert str(e.value) == f"data.path.train: {f['binary']} is binary, not text (a NUL byte at offset 4)"
    with pytest.raises(DataError) as e:
        list(JsonlConfig(path=[str(tmp_path / "rows.jsonl")]).documents("train"))
    assert str(e.value) == (f"data.path[0]: {tmp_path / 'rows.jsonl'} holds no documents (it is empty, or no row has "
                            f"a non-empty text field)")
    with pytest.raises(DataError) as e:
        ParquetConfig(path=str(f["good"])).check_available()
    assert str(e.value) == f"data.path: {f['good']} is not a Parquet file (it does not start with PAR1)"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["file", "set"])
def test_run_names_the_spec_file_or_the_set_and_the_json_path_of_a_bad_data_file(tmp_path, env, how):
    f = _files(tmp_path)
    data = {"type": "text_files", "train": [str(f["good"])], "validation": [str(f["binary"])]}
    if how == "file":
        p = write(tmp_path, json.dumps({**TINY, "data": data}))
        r = kinlm("run", str(p), env=env, cwd=tmp_path)
        where = str(p)
    else:
        p = write(tmp_path, TINY_TEXT)
        item = f"data={json.dumps(data)}"
        r = kinlm("run", str(p), "--set", item, env=env, cwd=tmp_path)
        where = f"--set {item[:60]}... ({len(item):,} characters)" if len(item) > 80 else f"--set {item}"
    assert one_line(r) == f"{where}: data.validation[0]: {f['binary']} is binary, not text (a NUL byte at offset 4)"
    assert list((tmp_path / "runs").iterdir()) == []  # nothing left of the run


# --- run directories and the latest link ---------------------------------------------------------


@pytest.mark.slow
def test_a_refused_run_dir_gets_no_lock_file(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    p = write(tmp_path, TINY_TEXT)
    r = kinlm("run", str(p), "--run-dir", str(theirs))
    assert one_line(r) == (f"kinlm run: {theirs}: run directory exists and is not empty; use --resume {theirs} "
                           f"or another --run-dir")
    assert sorted(q.name for q in theirs.iterdir()) == ["notes.txt"]
    long = tmp_path / ("x" * 300)  # a --run-dir is the user's own path: too long a name is one line too
    r = kinlm("run", str(p), "--run-dir", str(long))
    assert one_line(r) == f"kinlm run: {long}: cannot create the run directory (File name too long)"
    assert rundir.check_new(tmp_path / "absent") is None
    assert rundir.check_new(p) == f"{p}: exists and is not a folder; choose another --run-dir"


def _fake_run(runs: Path, name: str) -> Path:
    d = runs / name
    d.mkdir(parents=True)
    (d / "spec.json").write_text("{}")
    return d


@pytest.mark.parametrize("step,keeps", [(0, False), (3, True)])
def test_a_run_that_fails_before_its_first_step_gives_the_latest_link_back(tmp_path, step, keeps):
    runs = tmp_path / "runs"
    old = _fake_run(runs, "tiny-1")
    rundir.latest_link(old, "tiny")
    new = runs / "tiny-2"
    new.mkdir()
    with pytest.raises(RuntimeError):
        with rundir.locked(new), rundir.new_run(new, "tiny"):
            assert os.readlink(runs / "tiny@latest") == "tiny-2"  # while it runs, the link shows it
            (new / "spec.json").write_text("{}")
            (new / "result.json").write_text(json.dumps({"status": "failed: RuntimeError: x", "step": step}))
            raise RuntimeError("x")
    assert os.readlink(runs / "tiny@latest") == ("tiny-2" if keeps else "tiny-1")
    assert (new / "result.json").exists()  # what the failed run wrote stays: its result says why


def test_a_failed_first_run_leaves_no_link_and_a_folder_that_was_there_is_kept(tmp_path):
    runs = tmp_path / "runs"
    new = _fake_run(runs, "tiny-1")
    (new / "spec.json").unlink()
    with pytest.raises(KeyboardInterrupt):
        with rundir.locked(new), rundir.new_run(new, "tiny", created=False):
            raise KeyboardInterrupt
    assert not (runs / "tiny@latest").is_symlink() and new.is_dir() and list(new.iterdir()) == []


FAIL_AT_START = """
from kinlm_core import hookimpl

@hookimpl
def kinlm_run_start(run):
    raise RuntimeError("kinlm-test-fail-at-start")
"""


@pytest.mark.slow  # builds the data and the model; the link's logic is tested in-process above
def test_run_failing_at_step_0_does_not_take_over_the_latest_link(tmp_path, env):
    site = make_dist(tmp_path / "site", "kinlm-test-fail-at-start", "kinlm_test_fail_at_start", FAIL_AT_START)
    runs = tmp_path / "runs"
    old = _fake_run(runs, "tiny-20000101-000000")
    rundir.latest_link(old, "tiny")
    p = write(tmp_path, TINY_TEXT)
    r = kinlm("run", str(p), env={**env, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])},
              cwd=tmp_path)
    assert r.returncode == 1 and "kinlm-test-fail-at-start" in r.stderr
    assert os.readlink(runs / "tiny@latest") == old.name
    failed = [q for q in runs.iterdir() if q.name not in (old.name, "tiny@latest")]
    assert len(failed) == 1 and json.loads((failed[0] / "result.json").read_text())["step"] == 0
