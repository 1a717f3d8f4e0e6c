"""The `kinlm` CLI end to end, in subprocesses, as a user runs it."""

import json
import os
import subprocess
import sys
import textwrap

import jsonschema
import pytest

from helpers import ROOT, kinlm


@pytest.fixture
def env(tmp_path_factory):
    return {"KINLM_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}


@pytest.mark.parametrize("args", [["--help"], ["validate", "specs/quickstart.json"], ["schema"], ["plugins"], ["list"]])
def test_fast_commands_do_not_import_torch(args):
    code = ("import sys, runpy; sys.argv = ['kinlm'] + %r\n"
            "try:\n    runpy.run_module('kinlm_core.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('TORCH=%%s' %% ('torch' in sys.modules))" % (args,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "TORCH=False" in r.stderr, r.stderr[-500:]


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
    assert r.returncode == 2 and "train.max_steps" in r.stderr
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
    r = kinlm("compare", str(rd), env=env)
    assert "gpt" in r.stdout
    # a second run into the same directory refuses and loses nothing
    r = kinlm("run", str(spec), "--run-dir", str(rd), env=env)
    assert r.returncode == 2 and "not empty" in r.stderr and (rd / "metrics.jsonl").exists()


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
    env = {"PIP_NO_BUILD_ISOLATION": "0", "PIP_NO_DEPS": "1", "PIP_QUIET": "1"}
    try:
        r = kinlm("install", str(pkg), env=env)
        assert r.returncode == 0, r.stderr
        assert "kinlm-hello" in {p["name"] for p in json.loads(kinlm("plugins", "--json").stdout)}
    finally:
        r = kinlm("uninstall", "kinlm-hello", env=env)
    assert r.returncode == 0
    assert "kinlm-hello" not in {p["name"] for p in json.loads(kinlm("plugins", "--json").stdout)}


def test_tensorboard_command_serves_on_loopback(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import kinlm_core.cli as cli

    seen = {}
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: seen.setdefault("cmd", cmd) and 0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    r = CliRunner().invoke(cli.main, ["tensorboard", str(tmp_path / "a"), str(tmp_path / "b"), "--port", "7007"])
    assert r.exit_code == 0, r.output
    cmd = seen["cmd"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "7007"
    assert cmd[cmd.index("--logdir_spec") + 1] == f"a:{tmp_path / 'a'},b:{tmp_path / 'b'}"
