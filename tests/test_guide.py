"""docs/writing-a-plugin.md is real: its skeletons are tools/new_plugin.py's output, its "# guide:"
code blocks put together are a plugin, the spec it shows (regularizers and a curriculum) trains with
it, and its tables of Phase's fields and of the conformance kit cover every field and check."""

import pytest

import dataclasses
import importlib.util
import json
import os
import re

from helpers import ROOT, kinlm, make_dist

from kinlm_core import Phase
from kinlm_core.api import KINDS
from kinlm_core.testing import CHECKS

DOC = ROOT / "docs" / "writing-a-plugin.md"


def guide_module() -> str:
    blocks = re.findall(r"```python\n(# guide: [^\n]+\n.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 9, f"expected imports, 7 kinds and hooks; found {len(blocks)} guide blocks"
    return "\n\n".join(blocks)


def guide_spec() -> dict:
    (spec,) = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S) if '"curriculum"' in b]
    return spec


def new_plugin():
    spec = importlib.util.spec_from_file_location("new_plugin", ROOT / "tools" / "new_plugin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_skeletons_shown_are_the_tools_output():
    doc, tool = DOC.read_text(), new_plugin()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", doc, flags=re.S)
    model = tool.files("mymethod", "model")
    missing = [rel for rel, text in model.items() if text not in blocks]
    assert not missing, f"the guide does not show these files of `new_plugin.py mymethod` as written: {missing}"
    for kind in KINDS:
        files = tool.files("mymethod", kind)
        for rel in ("kinlm_mymethod/config.py", "tests/test_mymethod.py"):
            assert files[rel] in blocks, f"the guide does not show {rel} of --kind {kind} as the tool writes it"
        assert f"| `{kind}` | `kinlm_register_" in doc
    assert "kinlm install -e plugins/mymethod" in doc and "into `plugins/NAME/`" in doc


def test_phase_fields_and_every_check_are_documented():
    doc = DOC.read_text()
    rows = re.findall(r"^\| `(\w+)` \|", doc[doc.index("`Phase`'s fields"):], flags=re.M)
    assert rows[:len(dataclasses.fields(Phase))] == [f.name for f in dataclasses.fields(Phase)]
    kit = doc[doc.index("## 9. The conformance kit"):]
    for name in ["check_config", "check_imports_without_torch", *(f.__name__ for f in CHECKS.values())]:
        assert f"| `{name}(" in kit, f"{name} is not in the guide's table of the conformance kit"
    assert set(CHECKS) == set(KINDS)


@pytest.mark.slow
def test_every_kind_of_the_guide_trains(tmp_path):
    make_dist(tmp_path / "site", "kinlm-guide", "kinlm_guide", guide_module())
    spec = guide_spec()
    assert spec["regularizers"] and spec["curriculum"]
    (tmp_path / "s.json").write_text(json.dumps(spec))
    env = {"PYTHONPATH": str(tmp_path / "site"), "KINLM_CACHE": os.environ.get("KINLM_CACHE", str(tmp_path / "cache"))}
    rd = tmp_path / "run"
    r = kinlm("run", str(tmp_path / "s.json"), "--run-dir", str(rd), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ms = [json.loads(l) for l in (rd / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in ms if "train/phase" in m]
    # the first phase's loss is below 100 at once: it ends after one step, and the regularizer runs in phase 2
    assert [m["train/phase"] for m in steps] == [0, 1, 1, 1]
    assert "embeddings/grad_norm" in steps[0] and all("reg/hidden_l2" in m for m in steps[1:])
    metrics = json.loads(next((rd / "analysis" / "logit_entropy").glob("step_*/metrics.json")).read_text())
    assert 0 < metrics["mean_entropy"] < 6  # at most ln(257) nats
    assert (next((rd / "analysis" / "logit_entropy").glob("step_*")) / "entropy.png").stat().st_size > 1000
    assert "**greedy_line" in (rd / "samples.md").read_text()


def test_the_public_api_table_names_only_what_exists_and_the_plugins_use_nothing_else():
    """Section 11's table is true: every name in it imports, and the first-party plugins import from
    kinlm_core nothing outside it."""
    import importlib
    import re

    text = DOC.read_text().split("## 11. What a plugin may import")[1].split("## Debugging")[0]
    modules = {"kinlm_core": set()}
    for row in text.splitlines():
        if not row.startswith("| "):
            continue
        cells = row.split("|")
        target = re.search(r"`(kinlm_core\.\w+)`", cells[1])
        names = set(re.findall(r"`(\w+)(?:\(\))?`", cells[2] if target else cells[1] + cells[2]))
        modules.setdefault(target.group(1) if target else "kinlm_core", set()).update(names)
    for mod, names in modules.items():
        m = importlib.import_module(mod)
        missing = [n for n in names - {"diff_wrapper"} if not hasattr(m, n)]  # (a component named in prose)
        assert not missing, f"{mod}: {missing}"
    public = {"kinlm_core", "kinlm_core.nn", "kinlm_core.sampling", "kinlm_core.objectives", "kinlm_core.testing"}
    used = set()
    for path in ROOT.glob("plugins/*/kinlm_*/**/*.py"):
        used |= set(re.findall(r"^\s*from (kinlm_core[\w.]*) import", path.read_text(), re.M))
    assert used <= public, f"plugins import private modules: {sorted(used - public)}"
