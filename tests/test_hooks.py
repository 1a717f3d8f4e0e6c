"""The contract and its docs cannot drift apart: every hook spec is documented in
docs/hooks.md (name, signature, docstring) and is called during a real run."""

import pytest

import inspect
import json
import os
import re

from helpers import ROOT, TINY, kinlm, make_dist

import kinlm_core.hookspecs as hookspecs

HOOKS = {n: f for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("kinlm_")}


def test_every_hook_has_a_docstring_and_a_doc_entry():
    doc = (ROOT / "docs/hooks.md").read_text()
    assert len(HOOKS) >= 12
    for name, fn in HOOKS.items():
        assert fn.__doc__ and "called" in fn.__doc__.lower(), f"{name}: docstring must say when it is called"
        assert f"### `{name}{inspect.signature(fn)}`" in doc, f"{name}{inspect.signature(fn)} is not in docs/hooks.md"
    documented = set(re.findall(r"### `(kinlm_\w+)\(", doc))
    assert documented == set(HOOKS), f"docs/hooks.md documents hooks that do not exist: {documented - set(HOOKS)}"


def test_hooks_md_is_generated_from_the_contract():
    import runpy

    gen = runpy.run_path(str(ROOT / "tools" / "gen_hooks_doc.py"))["main"]()
    assert (ROOT / "docs/hooks.md").read_text() == gen, "docs/hooks.md is stale: python tools/gen_hooks_doc.py > docs/hooks.md"


@pytest.mark.slow
def test_every_hook_is_called_in_a_run(tmp_path):
    # a plugin implementing every hook spec (generated, so a new hook is covered at once)
    lines = ["import json, os", "from kinlm_core import hookimpl", "LOG = os.environ['HOOK_LOG']"]
    for name, fn in HOOKS.items():
        params = ", ".join(inspect.signature(fn).parameters)
        ret = "[]" if name.startswith("kinlm_register_") else "None"
        lines += ["@hookimpl", f"def {name}({params}):",
                  f"    open(LOG, 'a').write(json.dumps({name!r}) + '\\n')", f"    return {ret}"]
    make_dist(tmp_path / "site", "kinlm-recorder", "kinlm_recorder", "\n".join(lines) + "\n")
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(TINY))
    log = tmp_path / "hooks.log"
    env = {"PYTHONPATH": str(tmp_path / "site"), "HOOK_LOG": str(log),
           "KINLM_CACHE": os.environ.get("KINLM_CACHE", str(tmp_path / "cache"))}
    r = kinlm("run", str(spec), "--run-dir", str(tmp_path / "run"), "--set", "train.max_steps=3", env=env)
    assert r.returncode == 0, r.stderr
    called = {json.loads(l) for l in log.read_text().splitlines()}
    # kinlm_register_claims is called by `kinlm claims` and `kinlm validate`, kinlm_diagnostics by
    # `kinlm diagnose`, never by a run (tests/test_claims.py, tests/test_diagnose.py)
    expected = set(HOOKS) - {"kinlm_register_claims", "kinlm_diagnostics"}
    assert called == expected, f"never called in a run: {sorted(expected - called)}"


def test_the_core_looks_only_for_declared_optional_methods():
    """Every `hasattr(x, "name")` / `getattr(x, "name", ...)` in the core is either an optional method
    declared in api.OPTIONAL_METHODS or one of the named non-component attributes below."""
    import re

    from kinlm_core.api import OPTIONAL_METHODS

    declared = {m.name for m in OPTIONAL_METHODS} | {"load_train_state", "block_size"}
    not_components = {
        "module", "_orig_mod",  # DDP and torch.compile wrappers
        "hf", "generation_config", "_shift_right", "architectures", "max_position_embeddings",  # transformers
        "pad_token_id", "decoder_start_token_id", "base", "failed", "problems", "_kinlm_log", "num_samples",
        "repetition_penalty", "stop_at_eos", "max_docs", "bias", "weight", "embedding_dim",  # options, weights
        "opt", "scaler", "best", "batch_record",  # the trainer's own attributes (set as it starts)
        "text",  # userjson: a JSON number's source text, kept beside its float
        "key",  # claims/archive.py: a claim metric's key, where its kind has one
        "inner_exception",  # torch.compile's wrapped errors
    }
    pattern = re.compile(r"""(?:hasattr|getattr)\([^,()]+(?:\([^()]*\))?,\s*["']([A-Za-z_]+)["']""")
    found = {}
    for path in (ROOT / "kinlm_core").rglob("*.py"):
        for name in pattern.findall(path.read_text()):
            found.setdefault(name, path.relative_to(ROOT))
    undeclared = {n: str(p) for n, p in found.items() if n not in declared | not_components}
    assert not undeclared, f"declare these in kinlm_core.api.OPTIONAL_METHODS: {undeclared}"
