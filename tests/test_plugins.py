"""The plugin manager: built-ins, real entry-point distributions, broken ones, clashes, debugging."""

import json
import os

from helpers import kinlm, make_dist

from kinlm_core.plugins import Manager

DEMO = '''
from typing import Literal
from pydantic import Field
from kinlm_core import hookimpl, ModelConfig

class DemoConfig(ModelConfig):
    """A demo model."""
    type: Literal["demo"] = "demo"
    width: int = Field(8, ge=1, description="width")

@hookimpl
def kinlm_register_models():
    return [DemoConfig]
'''

CLASH = '''
from typing import Literal
from kinlm_core import hookimpl, ModelConfig

class Gpt2(ModelConfig):
    """Claims the core's name."""
    type: Literal["gpt"] = "gpt"

@hookimpl
def kinlm_register_models():
    return [Gpt2]
'''


def env_with(path):
    return {"PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}


def plugins_json(env):
    r = kinlm("plugins", "--json", env=env)
    assert r.returncode == 0, r.stderr
    return {p["name"]: p for p in json.loads(r.stdout)}


def test_builtins_registered_through_hooks():
    m = Manager(entry_points=False)
    core = m.plugins()[0]
    assert core.name == "kinlm-core" and core.error is None
    assert "gpt" in core.components["model"]
    assert {"embedded", "hf", "parquet"} <= set(core.components["data_source"])
    assert {"byte", "bpe", "word"} <= set(core.components["tokenizer"])
    assert "sample" in core.components["generator"]
    assert m.get("model", "gpt").component_name() == "gpt"


def test_entry_point_distribution_is_loaded(tmp_path):
    make_dist(tmp_path, "kinlm-demo", "kinlm_demo", DEMO, version="1.2.3")
    env = env_with(tmp_path)
    info = plugins_json(env)["kinlm-demo"]
    assert info["version"] == "1.2.3" and info["error"] is None
    assert info["components"] == {"model": ["demo"]}
    r = kinlm("list", "model", env=env)
    assert "demo" in r.stdout and "width" in r.stdout
    # specs can use it at once, and the schema covers it
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"name": "d", "data": {"type": "embedded"}, "model": {"type": "demo", "width": 0}}))
    r = kinlm("validate", str(spec), env=env)
    assert r.returncode == 2 and "model.width" in r.stderr
    assert '"demo"' in kinlm("schema", env=env).stdout


def test_broken_plugin_is_reported_not_fatal(tmp_path):
    make_dist(tmp_path, "kinlm-broken", "kinlm_broken", "raise RuntimeError('boom at import')\n")
    env = env_with(tmp_path)
    info = plugins_json(env)["kinlm-broken"]
    assert "boom at import" in info["error"]
    assert kinlm("--help", env=env).returncode == 0
    r = kinlm("list", "model", env=env)
    assert r.returncode == 0 and "gpt" in r.stdout


def test_unknown_hook_name_is_an_error_naming_the_plugin(tmp_path):
    code = "from kinlm_core import hookimpl\n@hookimpl\ndef kinlm_register_modles():\n    return []\n"
    make_dist(tmp_path, "kinlm-typo", "kinlm_typo", code)
    info = plugins_json(env_with(tmp_path))["kinlm-typo"]
    assert "kinlm-typo" in info["error"] and "kinlm_register_modles" in info["error"]


def test_wrong_hook_arguments_are_an_error(tmp_path):
    code = "from kinlm_core import hookimpl\n@hookimpl\ndef kinlm_step_end(run, stepp):\n    pass\n"
    make_dist(tmp_path, "kinlm-args", "kinlm_args", code)
    info = plugins_json(env_with(tmp_path))["kinlm-args"]
    assert info["error"] and "stepp" in info["error"]


def test_a_plugin_shadowing_a_builtin_is_ignored_with_a_warning_naming_it(tmp_path):
    make_dist(tmp_path, "kinlm-clash", "kinlm_clash", CLASH)
    env = env_with(tmp_path)
    info = plugins_json(env)["kinlm-clash"]
    assert info["error"] is None and info["components"] == {}
    assert info["warnings"] == ["model 'gpt' is a kinlm-core built-in; kinlm-clash's model 'gpt' "
                                "(kinlm_clash.Gpt2) is ignored: kinlm-clash should rename it"]
    r = kinlm("list", "model", env=env)
    assert r.returncode == 0 and "n_layer" in r.stdout  # the core's gpt
    assert r.stderr.startswith("kinlm: warning: kinlm-clash 0.1.0: model 'gpt' is a kinlm-core built-in")
    assert "uninstall" not in r.stderr


def test_restrict_and_trace(tmp_path):
    make_dist(tmp_path, "kinlm-demo", "kinlm_demo", DEMO)
    env = {**env_with(tmp_path), "KINLM_LOAD_PLUGINS": ""}
    assert "kinlm-demo" not in plugins_json(env)
    env = {**env_with(tmp_path), "KINLM_LOAD_PLUGINS": "kinlm-demo"}
    assert "kinlm-demo" in plugins_json(env)
    r = kinlm("list", "model", env={**env_with(tmp_path), "KINLM_TRACE": "1"})
    assert "kinlm_register_models" in r.stderr and "DemoConfig" in r.stderr
