"""The `kinlm` CLI end to end, in subprocesses, as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest

from helpers import ROOT, kinlm


@pytest.fixture
def env(tmp_path_factory):
    return {"KINLM_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["validate", "specs/quickstart.json"], ["schema"], ["plugins"], ["list"]])
def test_fast_commands_do_not_import_torch(args):
    code = ("import sys, runpy; sys.argv = ['kinlm'] + %r\n"
            "try:\n    runpy.run_module('kinlm_core.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('TORCH=%%s' %% ('torch' in sys.modules))" % (args,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "TORCH=False" in r.stderr, r.stderr[-500:]


def test_help_imports_neither_pydantic_pluggy_nor_torch():
    """`kinlm --help` stays cheap: its import path holds click only (asserted on what is imported, not
    on wall time, which a shared machine makes noisy)."""
    code = ("import sys, runpy; sys.argv = ['kinlm', '--help']\n"
            "try:\n    runpy.run_module('kinlm_core.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write(repr(sorted(m for m in ('pydantic', 'pluggy', 'torch') if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "Usage: kinlm" in r.stdout and r.stderr.endswith("[]"), r.stderr[-500:]


def test_public_names_resolve_lazily():
    code = ("import sys, kinlm_core\nassert 'pydantic' not in sys.modules\n"
            "from kinlm_core import *\nimport kinlm_core.api as api\n"
            "assert ModelConfig is api.ModelConfig and hookimpl.project_name == 'kinlm'\n"
            "assert callable(load_pretrained) and set(kinlm_core.__all__) <= set(dir(kinlm_core))\n"
            "try:\n    kinlm_core.nonsense\nexcept AttributeError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "has no attribute 'nonsense'" in r.stdout


def test_validate_ok_and_bad(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "data": {"type": "embedded"}, "model": {"type": "gpt", "n_layer": "four"}}')
    r = kinlm("validate", str(ROOT / "specs/quickstart.json"), str(bad), str(tmp_path / "missing.json"))
    assert r.returncode == 2
    assert "ok: " in r.stdout
    lines = r.stderr.strip().splitlines()
    assert lines == [f"{bad}: model.n_layer: input should be a valid integer, unable to parse string as an integer (got \"four\")",
                     f"{tmp_path / 'missing.json'}: file not found"]
    assert "Traceback" not in r.stderr


def test_set_on_validate(tmp_path):
    r = kinlm("validate", str(ROOT / "specs/quickstart.json"), "--set", "train.max_steps=0")
    assert r.returncode == 2
    # the value came from --set, not from the file
    assert r.stderr.strip() == "--set train.max_steps=0: train.max_steps: input should be greater than 0 (got 0)"
    r = kinlm("validate", str(ROOT / "specs/quickstart.json"), "--set", "train.max_stesp=3")
    assert r.stderr.strip() == "--set train.max_stesp=3: train.max_stesp: unknown field; did you mean 'max_steps'?"
    # a check across fields names the file and the --set that changed one of them
    r = kinlm("validate", str(ROOT / "specs/quickstart.json"), "--set", "model.n_head=3")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"{ROOT / 'specs/quickstart.json'} with --set model.n_head=3: model: d_model 128 is not "
                                f"divisible by n_head 3 (each head gets d_model / n_head channels)")
    r = kinlm("validate", str(ROOT / "specs/quickstart.json"), "--set", "train.max_steps=5", "--set", "name=x")
    assert r.returncode == 0


def test_schema_file_round_trip(tmp_path):
    out = tmp_path / "schema.json"
    assert kinlm("schema", "-o", str(out)).returncode == 0
    schema = json.loads(out.read_text())
    spec = json.loads((ROOT / "specs/quickstart.json").read_text())
    jsonschema.validate(spec, schema)
    spec["tokenizer"]["type"] = "sentencepiece"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, schema)


def test_plugins_json_and_list():
    r = kinlm("plugins", "--json")
    infos = json.loads(r.stdout)
    core = next(p for p in infos if p["name"] == "kinlm-core")
    assert set(core) >= {"name", "version", "components", "error"} and core["error"] is None
    r = kinlm("list", "tokenizer")
    assert "bpe" in r.stdout and "vocab_size" in r.stdout
    assert kinlm("list", "nonsense").returncode == 2


@pytest.mark.slow
def test_run_generate_eval_analyze_compare(tmp_path, env):
    from helpers import TINY

    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    rd = tmp_path / "run"
    r = kinlm("run", str(spec), "--run-dir", str(rd), "--set", "train.max_steps=4", "--set", "eval.every=2", env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["step"] == 4 and result["status"] == "finished"
    assert "step 4: eval loss" in r.stderr
    r = kinlm("generate", str(rd), "--prompt", "ROMEO:", "--opt", "max_new_tokens=5", "--opt", "temperature=0", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:")
    r = kinlm("generate", str(rd), "--prompt", "x", "--opt", "top_k=0", env=env)
    assert r.returncode == 2 and "top_k" in r.stderr
    r = kinlm("generate", str(rd), "--prompt", "x", "--generator", "sampel", env=env)
    assert r.returncode == 2 and "did you mean 'sample'" in r.stderr
    r = kinlm("eval", str(rd), "--split", "test", "--batches", "2", env=env)
    ev = json.loads(r.stdout)
    assert ev["split"] == "test" and ev["loss"] > 0 and ev["bpb"] > 0
    r = kinlm("analyze", str(rd), "--analyzer", "hidden_stats", "--out", str(tmp_path / "an"), env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "an/metrics.json").exists() and (tmp_path / "an/hidden_stats.png").exists()
    r = kinlm("compare", str(rd), str(tmp_path / "tiny@latest"), env=env)  # one run reached twice: one row
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith(f"| 1 | {rd} ")]  # tests/test_compare.py: the rest
    assert len(rows) == 1 and [c.strip() for c in rows[0].split("|")[3:6]] == ["gpt", "1", "finished"]
    # a second run into the same directory refuses and loses nothing
    r = kinlm("run", str(spec), "--run-dir", str(rd), env=env)
    assert r.returncode == 2 and "not empty" in r.stderr and (rd / "metrics.jsonl").exists()


def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_latest_link_and_resume_of_a_finished_run_changes_nothing(tmp_path, env):
    from helpers import TINY

    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    r = kinlm("run", str(spec), "--set", "train.max_steps=2", "--set", "eval.every=2", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout.strip().splitlines()[-1])["run_dir"]
    latest = tmp_path / "runs/tiny@latest"
    assert latest.is_symlink() and (tmp_path / "runs" / os.readlink(latest)) == tmp_path / first
    assert f"latest run of tiny: {Path('runs/tiny@latest')}" in r.stderr
    assert f"model: {Path(first) / 'final'}" in r.stderr
    before = _snapshot(tmp_path / first)
    r = kinlm("run", str(spec), "--resume", "runs/tiny@latest", "--set", "train.max_steps=2", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f"kinlm run: {first} finished at step 2; nothing to do (to train "
                                                f"further: --set train.max_steps=N with N > 2 and --extend)")
    assert json.loads(r.stdout)["run_dir"] == first
    assert _snapshot(tmp_path / first) == before  # no result.json, env.json, metrics or event file rewritten
    # a run that fails before writing anything leaves no directory behind and the link as it was
    r = kinlm("run", str(spec), "--set", 'data={"type": "jsonl", "path": "nothing/*.jsonl"}', env=env, cwd=tmp_path)
    assert r.returncode == 2 and "no file matches 'nothing/*.jsonl'" in r.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted([Path(first).name, "tiny@latest"])
    assert os.readlink(latest) == Path(first).name
    (tmp_path / "file").write_text("")
    r = kinlm("run", str(spec), "--run-dir", "file/x", env=env, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith("kinlm run: file/x: cannot create the run directory (")


def test_run_dir_in_use_is_refused_at_once_and_a_killed_holder_leaves_no_stale_lock(tmp_path, env):
    from helpers import TINY

    from kinlm_core import rundir

    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    rd = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom kinlm_core import rundir\n"
                               "with rundir.locked(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)",
                               str(rd)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert rundir.is_locked(rd)
        t = time.perf_counter()
        r = kinlm("run", str(spec), "--run-dir", str(rd), env=env)
        assert r.returncode == 2 and time.perf_counter() - t < 60
        assert r.stderr.strip() == (f"kinlm run: {rd}: in use by another kinlm process (pid {holder.pid}); "
                                    f"wait for it to end or choose another --run-dir")
        assert list(rd.iterdir()) == [rd / ".lock"]  # the refused run wrote nothing
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs
        holder.wait()
    assert not rundir.is_locked(rd)
    with rundir.locked(rd):
        assert rundir.is_locked(rd)


@pytest.mark.slow
def test_sigterm_stops_a_run_with_exit_75_and_resume_finishes_it(tmp_path, env):
    from helpers import TINY

    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    rd = tmp_path / "run"
    args = [sys.executable, "-m", "kinlm_core.cli", "run", str(spec), "--run-dir", str(rd), "--set",
            "train.max_steps=100000", "--set", "train.log_every=1", "--set", "eval.every=1000"]
    proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (rd / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"].startswith("preempted (SIGTERM)")
    r = kinlm("run", str(spec), "--resume", str(rd), "--set", f"train.max_steps={result['step'] + 2}", env=env)
    assert r.returncode == 2 and "add --extend" in r.stderr  # a shorter run is a new schedule: asked, not assumed
    r = kinlm("run", str(spec), "--resume", str(rd), "--set", f"train.max_steps={result['step'] + 2}", "--extend",
              env=env)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.strip().splitlines()[-1])
    assert done["status"] == "finished" and done["step"] == result["step"] + 2


def test_unknown_component_of_a_plugin_that_failed_to_import_names_it(tmp_path):
    from helpers import make_dist

    make_dist(tmp_path / "site", "kinlm-cumavg", "kinlm_cumavg", "import no_such_module_xyz\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"name": "x", "data": {"type": "embedded"}, "model": {"type": "cumavg"},
                               "regularizers": [{"type": "cumavg_penalty"}]}))
    r = kinlm("validate", str(bad), env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    why = ("it is probably provided by the plugin kinlm-cumavg 0.1.0, which failed to load: import failed: "
           "ModuleNotFoundError: No module named 'no_such_module_xyz' (kinlm plugins lists them)")
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"{bad}: model.type: unknown model type 'cumavg'; known: ") and lines[0].endswith(why)
    assert lines[1].startswith(f"{bad}: regularizers[0].type: unknown regularizer type 'cumavg_penalty'")
    assert lines[1].endswith(why) and "value error" not in r.stderr.lower()


@pytest.mark.slow
def test_analyze_a_transformers_folder(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path / "hf"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=300, n_positions=64)).save_pretrained(folder)
    vocab = {chr(i): i - 32 for i in range(32, 127)}
    vocab["<unk>"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<unk>").save_pretrained(folder)
    r = kinlm("analyze", "--hf-model", str(folder), "--analyzer", "hidden_stats", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o/metrics.json").read_text())["layers"] == 3


@pytest.mark.slow
def test_install_and_uninstall_a_plugin(tmp_path):
    pkg = tmp_path / "kinlm-hello"
    (pkg / "kinlm_hello").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "kinlm-hello"
        version = "0.0.1"
        [project.entry-points.kinlm]
        hello = "kinlm_hello"
    """))
    (pkg / "kinlm_hello/__init__.py").write_text("")
    env = {"PIP_NO_BUILD_ISOLATION": "0", "PIP_NO_DEPS": "1"}
    try:
        r = kinlm("install", str(pkg), env=env)
        assert r.returncode == 0, r.stderr
        # quiet by default: one line before and one after, nothing from pip
        assert r.stdout == "" and r.stderr.splitlines() == [
            f"kinlm: installing {pkg} (pip; -v shows its output)",
            f"kinlm: installed {pkg}; `kinlm plugins` lists what it provides"]
        assert "kinlm-hello" in {p["name"] for p in json.loads(kinlm("plugins", "--json").stdout)}
    finally:
        r = kinlm("uninstall", "-v", "kinlm-hello", env=env)
    assert r.returncode == 0 and "Successfully uninstalled" in r.stdout + r.stderr  # -v: pip's own output
    assert "kinlm-hello" not in {p["name"] for p in json.loads(kinlm("plugins", "--json").stdout)}
    r = kinlm("install", str(tmp_path / "no-such-folder"), env=env)
    assert r.returncode != 0 and r.stderr.splitlines()[1].startswith("kinlm: pip failed (exit ")


def test_tensorboard_command_serves_on_loopback(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import kinlm_core.cli as cli

    seen = {}

    class FakeServer:
        def __init__(self, cmd):
            seen["cmd"] = cmd

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(cli.subprocess, "Popen", FakeServer)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    r = CliRunner().invoke(cli.main, ["tensorboard", str(tmp_path / "a"), str(tmp_path / "b"), "--port", "7007"])
    assert r.exit_code == 0, r.output
    cmd = seen["cmd"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "7007"
    assert cmd[cmd.index("--logdir_spec") + 1] == f"a:{tmp_path / 'a'},b:{tmp_path / 'b'}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_server_command_stops_its_server(tmp_path, sig):
    """What `kinlm tensorboard` does with its TensorBoard child when it is told to stop."""
    server = "import os, sys, time\nprint(os.getpid(), flush=True)\ntime.sleep(600)"
    parent = ("import sys\nfrom kinlm_core.cli import _serve\n"
              f"sys.exit(_serve([sys.executable, '-c', {server!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0
    deadline = time.time() + 15
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_threads_params_and_messages_a_new_user_meets(tmp_path, env):
    """--threads reaches torch (env.json records it); `kinlm params` shows the names a `trainable`
    prefix matches, the tied head and the totals; a missing run or spec names the nearby ones; a
    resume with a changed spec says to start a new run; invalid JSON names its likely cause."""
    from helpers import TINY

    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    rd = tmp_path / "runs" / "tiny-1"
    r = kinlm("run", str(spec), "--run-dir", str(rd), "--threads", "1", "--set", "train.max_steps=2",
              "--set", "eval.every=2", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((rd / "env.json").read_text())["threads"] == 1
    assert "Writing model shards" not in r.stderr and (rd / "final" / "config.json").exists()  # no transformers bar
    r = kinlm("run", str(spec), "--threads", "0", env=env)
    assert r.returncode == 2 and "--threads" in r.stderr
    # gpt d32 L1, byte tokenizer (257 ids padded to 320): by hand
    C, V = 32, 320
    block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    r = kinlm("params", str(rd), "--json", env=env)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert (p["total"], p["embedding"], p["non_embedding"]) == (V * C + 32 * C + block + 2 * C, V * C + 32 * C,
                                                                block + 2 * C)
    assert p["total"] == json.loads((rd / "result.json").read_text())["params"]
    wte = next(t for t in p["tensors"] if t["name"] == "wte.weight")
    assert wte["tied"] == ["head.weight"] and wte["shape"] == [V, C] and wte["embedding"]
    r = kinlm("params", str(spec), "--vocab-size", "100", env=env)
    assert r.returncode == 0, r.stderr
    assert "| blocks.0.attn.qkv.weight | (96, 32) | 1 | 3,072 |  |" in r.stdout
    assert f"total {128 * C + 32 * C + block + 2 * C:,}; embedding {128 * C + 32 * C:,}" in r.stdout
    assert "tied: head.weight is wte.weight (one tensor): a phase that freezes 'wte' freezes head.weight too" in r.stdout
    assert "'wte', 'wpe', 'blocks', 'ln_f'" in r.stdout
    # a run path that does not exist: said at once, with the names nearby
    for cmd in (["generate", str(tmp_path / "runs" / "tiny-2"), "--prompt", "x"], ["eval", str(tmp_path / "runs" / "tiny-2")],
                ["run", str(spec), "--resume", str(tmp_path / "runs" / "tiny-2")]):
        r = kinlm(*cmd, env=env)
        assert r.returncode == 2 and r.stderr.strip().endswith(
            f"{tmp_path / 'runs' / 'tiny-2'}: no such run directory; did you mean {rd}?"), r.stderr
    r = kinlm("eval", str(tmp_path / "runs"), env=env)
    assert r.returncode == 2 and f"not a run directory (no spec.json); it holds runs, e.g. {rd}" in r.stderr
    # a resume with a changed spec: start a new run instead
    r = kinlm("run", str(spec), "--resume", str(rd), "--set", "model.d_model=64", env=env)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"kinlm run: --resume {rd}: the spec differs from the run's saved spec in model.d_model; a resume continues "
        f"the same run, so start a new run for the changed spec: kinlm run {spec} (without --resume)")
    # a missing spec file, invalid JSON
    r = kinlm("run", str(tmp_path / "tiyn.json"), env=env)
    assert r.returncode == 2 and r.stderr.strip() == f"{tmp_path / 'tiyn.json'}: file not found; did you mean {spec}?"
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "name": "x",\n  "seed": 1,\n}\n')
    r = kinlm("validate", str(bad))
    assert r.returncode == 2 and r.stderr.strip() == (
        f"{bad}: invalid JSON at line 4 column 1: Expecting property name enclosed in double quotes; likely cause: "
        f"a trailing comma at {bad}:3 (JSON allows none before '}}')")


def test_tensorboard_lists_each_run_once_and_picks_up_new_runs(tmp_path):
    from kinlm_core.cli import _logdir_spec
    from kinlm_core.rundir import latest_link

    runs = tmp_path / "runs"
    for name in ("q-1", "q-2", "sweep/q/seed_0"):
        (runs / name / "tb").mkdir(parents=True)
        (runs / name / "spec.json").write_text("{}")
    (runs / "q-2" / "final").mkdir()
    (runs / "q-2" / "final" / "spec.json").write_text("{}")  # an export, not a run
    latest_link(runs / "q-2", "q")
    assert _logdir_spec([str(runs)]) == f"runs/q-1:{runs}/q-1,runs/q-2:{runs}/q-2,runs/sweep/q/seed_0:{runs}/sweep/q/seed_0"
    assert _logdir_spec([str(runs / "q@latest"), str(runs / "q-2")]) == f"q-2:{runs}/q-2"  # the link's run, once
    assert _logdir_spec([str(tmp_path / "empty")]) == f"empty:{tmp_path}/empty"  # nothing yet: watch the folder


def test_the_server_restarts_when_the_runs_to_show_change(tmp_path):
    """_serve(refresh=...) restarts its child with the new command (a run appeared) and stops the old one."""
    server = "import os, sys, time\nprint(os.getpid(), sys.argv[1], flush=True)\ntime.sleep(600)"
    parent = ("import os, sys\nfrom kinlm_core.cli import _serve\n"
              f"flag = {str(tmp_path / 'new-run')!r}\n"
              f"cmd = lambda: [sys.executable, '-c', {server!r}, 'b' if os.path.exists(flag) else 'a']\n"
              "sys.exit(_serve(cmd(), refresh=cmd, every=0.2))")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    first, arg = proc.stdout.readline().split()
    assert arg == "a"
    (tmp_path / "new-run").write_text("")
    second, arg = proc.stdout.readline().split()
    assert arg == "b" and second != first and not _alive(int(first))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    deadline = time.time() + 15
    while _alive(int(second)) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(int(second))


def test_install_script_gives_its_extras_to_every_plugin(tmp_path):
    """tools/install.sh test: pytest and each plugin's test extra, so `pytest plugins/X/tests` works after it."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\n")
    fake.chmod(0o755)
    r = subprocess.run(["bash", str(ROOT / "tools" / "install.sh"), "test"], env={**os.environ, "PYTHON": str(fake)},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    torch_call, install = (tmp_path / "calls").read_text().splitlines()
    assert "torch==" in torch_call
    plugins = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
    assert "-e .[test]" in install and all(f"-e plugins/{p}[test]" in install for p in plugins), install
