"""One plugin's fault stays its own, and is named: clashing component names, plugins that fail to
load or install, misspelt hooks, exceptions raised in a plugin's hook or model, a model output that
breaks the contract, and KINLM_DISABLE_PLUGINS (issue 31, item 4)."""

import base64
import hashlib
import json
import os
import zipfile

import pytest

from helpers import TINY, kinlm, make_dist

from kinlm_core.plugins import Manager

MODELS = '''
from typing import Literal
from kinlm_core import hookimpl, ModelConfig

class Twin(ModelConfig):
    """A model name two distributions register."""
    type: Literal["twin"] = "twin"

class Own(ModelConfig):
    """A name only this distribution registers."""
    type: Literal["{own}"] = "{own}"

@hookimpl
def kinlm_register_models():
    return [Twin, Own]
'''

# A model that wraps the core's gpt and breaks the contract in the way `mode` says.
ODD_MODEL = '''
from typing import Literal
from kinlm_core import hookimpl, ModelConfig, component

class OddConfig(ModelConfig):
    """The core gpt, with its output broken as `mode` says (test fixture)."""
    type: Literal["odd"] = "odd"
    mode: Literal["ok", "last", "small", "tensor", "raise"] = "ok"

    def build(self, vocab_size):
        import torch
        inner = component("model", "gpt")(n_layer=1, n_head=2, d_model=32, block_size=32).build(vocab_size)
        mode = self.mode

        class Odd(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner, self.block_size = inner, inner.block_size

            def forward(self, input_ids, output_hidden_states=False):
                out = self.inner(input_ids, output_hidden_states=output_hidden_states)
                if mode == "last":
                    out.logits = out.logits[:, -1]
                elif mode == "small":
                    out.logits = out.logits[..., :10]
                elif mode == "tensor":
                    return out.logits
                elif mode == "raise":
                    raise ValueError("odd cannot take this batch")
                return out

        return Odd()

@hookimpl
def kinlm_register_models():
    return [OddConfig]
'''

HOOKS = '''
import os
from kinlm_core import hookimpl, SpecError

@hookimpl
def kinlm_run_start(run):
    if os.environ.get("FAULT") == "raise":
        raise RuntimeError("the hook fell over")
    if os.environ.get("FAULT") == "spec":
        raise SpecError(["hooks.threshold: must be below 1 (got 3)"])
'''


def env_with(path, **extra):
    return {"PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]), **extra}


def twins(site, first_installed="kinlm-alpha"):
    """Two distributions registering model 'twin' (and one own name each); ``first_installed``'s
    .dist-info is older."""
    for dist, own in (("kinlm-alpha", "alpha_own"), ("kinlm-beta", "beta_own")):
        make_dist(site, dist, dist.replace("-", "_"), MODELS.replace("{own}", own))
    older = site / f"{first_installed.replace('-', '_')}-0.1.0.dist-info"
    os.utime(older, (1_000_000_000, 1_000_000_000))
    return site


def manager_on(monkeypatch, site, **env):
    monkeypatch.syspath_prepend(str(site))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Manager()


def write_spec(where, model, **train):
    spec = json.loads(json.dumps(TINY))
    spec["model"] = model
    spec["train"].update({"max_steps": 1, "checkpoint_every": 100, "log_every": 1, **train})
    spec["eval"] = {"every": 100, "batches": 1}
    path = where / "spec.json"
    path.write_text(json.dumps(spec))
    return path


# --- two distributions, one name -------------------------------------------------------------------


@pytest.mark.parametrize("first", ["kinlm-alpha", "kinlm-beta"])
def test_a_name_two_plugins_register_is_disabled_alone_blaming_the_newcomer(tmp_path, monkeypatch, first):
    m = manager_on(monkeypatch, twins(tmp_path, first_installed=first))
    newcomer = {"kinlm-alpha": "kinlm-beta", "kinlm-beta": "kinlm-alpha"}[first]
    infos = {p.name: p for p in m.plugins()}
    assert "twin" not in m.components("model")
    assert {"alpha_own", "beta_own", "gpt"} <= set(m.components("model"))  # every other name works
    assert infos[newcomer].warnings and not infos[first].warnings  # `kinlm plugins` blames the newcomer
    assert all(p.error is None for p in infos.values())
    assert (infos["kinlm-alpha"].components, infos["kinlm-beta"].components) == (
        {"model": ["alpha_own"]}, {"model": ["beta_own"]})
    with pytest.raises(Exception) as e:
        m.get("model", "twin")
    assert str(e.value).startswith(f"model type 'twin' is disabled: {newcomer} 0.1.0 (installed last) registers "
                                   f"the model name 'twin' that {first} 0.1.0 already provides")


def test_clash_leaves_every_command_working_and_names_the_newcomer(tmp_path):
    site = twins(tmp_path / "site", first_installed="kinlm-alpha")
    env = env_with(site)
    r = kinlm("plugins", env=env)
    assert r.returncode == 0
    beta = r.stdout.split("\nkinlm-beta 0.1.0\n", 1)[1]
    assert "WARNING: model 'twin' is disabled: kinlm-beta 0.1.0 (installed last)" in beta
    assert "kinlm uninstall kinlm-beta" in beta and "kinlm uninstall kinlm-alpha" not in r.stdout
    assert kinlm("plugins", "--check", env=env).returncode == 1
    r = kinlm("list", "model", env=env)
    assert r.returncode == 0 and "alpha_own" in r.stdout and "beta_own" in r.stdout
    assert "kinlm: warning: kinlm-beta 0.1.0: model 'twin' is disabled" in r.stderr
    assert kinlm("validate", str(write_spec(tmp_path, TINY["model"])), env=env).returncode == 0
    bad = write_spec(tmp_path, {"type": "twin"})
    r = kinlm("validate", str(bad), env=env)
    assert r.returncode == 2
    assert f"{bad}: model.type: model type 'twin' is disabled: kinlm-beta 0.1.0 (installed last)" in r.stderr


# --- plugins that fail to load ----------------------------------------------------------------------


@pytest.mark.slow
def test_plugins_lists_a_broken_plugin_check_fails_and_v_shows_its_traceback(tmp_path):
    code = "def load():\n    raise RuntimeError('boom at import')\nload()\n"
    make_dist(tmp_path, "kinlm-broken", "kinlm_broken", code)
    env = env_with(tmp_path)
    r = kinlm("plugins", env=env)
    assert r.returncode == 0 and "kinlm-broken 0.1.0  ERROR: import failed: RuntimeError: boom at import" in r.stdout
    assert "Traceback" not in r.stdout and "kinlm plugins -v" in r.stderr
    assert kinlm("plugins", "--check", env=env).returncode == 1
    assert kinlm("plugins", "--check", env=env_with(tmp_path / "nothing")).returncode == 0
    r = kinlm("plugins", "-v", env=env)
    assert r.returncode == 0 and "Traceback" in r.stdout and "kinlm_broken.py\", line 2, in load" in r.stdout
    r = kinlm("list", "model", env=env_with(tmp_path, KINLM_TRACE="1"))
    assert r.returncode == 0 and "plugin kinlm-broken failed to load" in r.stderr
    assert "kinlm_broken.py\", line 2, in load" in r.stderr


def test_a_misspelt_hook_gets_a_suggestion(tmp_path, monkeypatch):
    code = "from kinlm_core import hookimpl\n@hookimpl\ndef kinlm_register_modles():\n    return []\n"
    make_dist(tmp_path, "kinlm-typo2", "kinlm_typo2", code)
    info = {p.name: p for p in manager_on(monkeypatch, tmp_path).plugins()}["kinlm-typo2"]
    assert info.error.endswith("; kinlm_register_modles: did you mean kinlm_register_models?")


def _wheel(where, dist, module, code, version="0.1.0"):
    """A pure-Python wheel of one module with a `kinlm` entry point (pip installs it offline)."""
    info = f"{dist.replace('-', '_')}-{version}.dist-info"
    files = {f"{module}.py": code,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kinlm-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{info}/entry_points.txt": f"[kinlm]\n{module} = {module}\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    path = where / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.mark.slow
def test_install_reports_a_plugin_that_installs_but_fails_to_import(tmp_path):
    wheel = _wheel(tmp_path, "kinlm-badimport", "kinlm_badimport", "raise ImportError('needs libfoo')\n")
    target = tmp_path / "target"
    target.mkdir()
    r = kinlm("install", "--", "--no-deps", "--no-index", "--target", str(target), str(wheel), env=env_with(target))
    assert (target / "kinlm_badimport.py").exists(), r.stderr
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "kinlm install: kinlm-badimport 0.1.0 is installed but fails to load: import failed: ImportError: needs "
        "libfoo (`kinlm plugins -v` shows its traceback)")
    good = _wheel(tmp_path, "kinlm-goodimport", "kinlm_goodimport", "X = 1\n")
    r = kinlm("install", "--", "--no-deps", "--no-index", "--target", str(target), str(good), env=env_with(target))
    assert r.returncode == 0 and "kinlm install:" not in r.stderr  # the old broken one is not this install's


# --- KINLM_DISABLE_PLUGINS ------------------------------------------------------------------------


def test_disable_plugins_by_distribution_or_entry_point_name(tmp_path, monkeypatch):
    site = twins(tmp_path)
    (site / "kinlm_alpha-0.1.0.dist-info" / "entry_points.txt").write_text("[kinlm]\nalpha_ep = kinlm_alpha\n")
    m = manager_on(monkeypatch, site, KINLM_DISABLE_PLUGINS="kinlm-beta")
    names = [p.name for p in m.plugins()]
    assert "kinlm-alpha" in names and "kinlm-beta" not in names and m.turned_off == ["kinlm-beta"]
    assert "twin" in m.components("model") and not m.warnings()  # no clash left
    m = manager_on(monkeypatch, site, KINLM_DISABLE_PLUGINS=" alpha-ep , KINLM_BETA")  # entry-point name, any case
    names = [p.name for p in m.plugins()]
    assert "kinlm-alpha" not in names and "kinlm-beta" not in names and "kinlm-core" in names
    r = kinlm("plugins", "--check", env=env_with(site, KINLM_DISABLE_PLUGINS="kinlm-alpha"))
    assert r.returncode == 0 and "kinlm-alpha  (turned off by KINLM_DISABLE_PLUGINS)" in r.stdout


# --- faults during a run ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_hook_that_raises_is_named_and_exits_1(tmp_path):
    make_dist(tmp_path / "site", "kinlm-hookfault", "kinlm_hookfault", HOOKS)
    spec = write_spec(tmp_path, TINY["model"])
    r = kinlm("run", str(spec), "--run-dir", str(tmp_path / "run"), env=env_with(tmp_path / "site", FAULT="raise"))
    assert r.returncode == 1 and "Traceback" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("kinlm: RuntimeError raised in plugin kinlm-hookfault 0.1.0, hook kinlm_run_start, at ")
    assert "kinlm_hookfault.py:8 in kinlm_run_start" in last and "KINLM_DISABLE_PLUGINS=kinlm-hookfault" in last


@pytest.mark.slow
def test_a_plugins_own_spec_error_stays_exit_2_and_names_it(tmp_path):
    make_dist(tmp_path / "site", "kinlm-hookfault", "kinlm_hookfault", HOOKS)
    spec = write_spec(tmp_path, TINY["model"])
    r = kinlm("run", str(spec), "--run-dir", str(tmp_path / "run"), env=env_with(tmp_path / "site", FAULT="spec"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "hooks.threshold: must be below 1 (got 3) (from plugin kinlm-hookfault 0.1.0)")
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_value_error_in_a_plugins_model_is_its_bug_exit_1(tmp_path):
    make_dist(tmp_path / "site", "kinlm-odd", "kinlm_odd", ODD_MODEL)
    spec = write_spec(tmp_path, {"type": "odd", "mode": "raise"})
    r = kinlm("run", str(spec), "--run-dir", str(tmp_path / "run"), env=env_with(tmp_path / "site"))
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "kinlm: ValueError raised in plugin kinlm-odd 0.1.0, at ")
    assert "kinlm_odd.py" in r.stderr and "in forward" in r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("mode, problem", [
    ("last", "its forward returned logits of shape (4, 320) for input_ids of shape (4, 32); expected "
             "(batch, positions, vocab) = (4, 32, 257) (a vocab of at least 257)"),
    ("small", "its forward returned logits of shape (4, 32, 10) for input_ids of shape (4, 32); expected "
              "(batch, positions, vocab) = (4, 32, 257) (a vocab of at least 257)"),
    ("tensor", "its forward returned a Tensor; expected a kinlm_core.ModelOutput"),
])
@pytest.mark.slow
def test_a_model_output_that_breaks_the_contract_is_named_on_the_first_step(tmp_path, mode, problem):
    make_dist(tmp_path / "site", "kinlm-odd", "kinlm_odd", ODD_MODEL)
    spec = write_spec(tmp_path, {"type": "odd", "mode": mode})
    r = kinlm("run", str(spec), "--run-dir", str(tmp_path / "run"), env=env_with(tmp_path / "site"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"kinlm: model 'odd' (kinlm-odd 0.1.0) breaks the model contract: {problem}")
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_model_that_keeps_the_contract_trains(tmp_path):
    make_dist(tmp_path / "site", "kinlm-odd", "kinlm_odd", ODD_MODEL)
    spec = write_spec(tmp_path, {"type": "odd", "mode": "ok"})
    r = kinlm("run", str(spec), "--run-dir", str(tmp_path / "run"), env=env_with(tmp_path / "site"))
    assert r.returncode == 0, r.stderr


def test_conformance_kit_says_the_expected_logits_shape(tmp_path, monkeypatch):
    from kinlm_core.testing import check_model

    make_dist(tmp_path, "kinlm-odd2", "kinlm_odd2", ODD_MODEL.replace('"odd"', '"odd2"'))
    cfg = manager_on(monkeypatch, tmp_path).get("model", "odd2")(mode="last")
    with pytest.raises(AssertionError) as e:
        check_model(cfg)
    assert str(e.value) == ("its forward returned logits of shape (2, 128) for input_ids of shape (2, 16); "
                            "expected (batch, positions, vocab) = (2, 16, 97) (a vocab of at least 97)")


def test_a_run_that_fails_before_its_first_checkpoint_leaves_latest_alone(tmp_path):
    make_dist(tmp_path / "site", "kinlm-odd", "kinlm_odd", ODD_MODEL)
    env = env_with(tmp_path / "site")
    good = kinlm("run", str(write_spec(tmp_path, {"type": "odd", "mode": "ok"})), env=env, cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    latest = tmp_path / "runs" / "tiny@latest"
    first = os.readlink(latest)
    bad = kinlm("run", str(write_spec(tmp_path, {"type": "odd", "mode": "small"})), env=env, cwd=tmp_path)
    assert bad.returncode == 1
    assert os.readlink(latest) == first  # still the run that finished
    failed = [p for p in (tmp_path / "runs").iterdir() if p.name not in (first, "tiny@latest")]
    assert len(failed) == 1 and (failed[0] / "result.json").exists()  # the failed run's folder stays


def test_a_registration_hook_that_raises_is_named(tmp_path, monkeypatch):
    code = "from kinlm_core import hookimpl\n@hookimpl\ndef kinlm_register_models():\n    return 1 / 0\n"
    make_dist(tmp_path, "kinlm-regfault", "kinlm_regfault", code)
    info = {p.name: p for p in manager_on(monkeypatch, tmp_path).plugins()}["kinlm-regfault"]
    assert info.error == ("registering components failed: hook kinlm_register_models raised ZeroDivisionError: "
                          "division by zero")
    assert "kinlm_regfault.py\", line 4, in kinlm_register_models" in info.traceback


def test_engine_errors_from_a_plugin_bad_input_or_bug(tmp_path, monkeypatch):
    """A ValueError from a plugin's check_available (its documented contract) is bad input (exit 2),
    naming the plugin; from any other plugin code it is re-raised for the top level (exit 1)."""
    import kinlm_core.plugins as plugins
    from kinlm_core.cli import UserError, _engine_call

    code = ("def check_available():\n    raise ValueError('data/x.txt: no such file')\n"
            "def forward():\n    raise ValueError('shapes do not fit')\n")
    make_dist(tmp_path, "kinlm-engfault", "kinlm_engfault", code)
    monkeypatch.setattr(plugins, "_manager", manager_on(monkeypatch, tmp_path))
    import kinlm_engfault

    with pytest.raises(UserError) as e:
        _engine_call(kinlm_engfault.check_available)
    assert e.value.exit_code == 2 and e.value.message == (
        "kinlm: data/x.txt: no such file (from plugin kinlm-engfault 0.1.0)")
    with pytest.raises(ValueError, match="shapes do not fit"):
        _engine_call(kinlm_engfault.forward)

    def core_check():  # kinlm's own bad-input ValueError stays exit 2, unattributed
        raise ValueError("train split has 3 tokens")
    with pytest.raises(UserError) as e:
        _engine_call(core_check)
    assert e.value.message == "kinlm: train split has 3 tokens"
