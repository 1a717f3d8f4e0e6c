"""Test helpers for the transformers export (issue #33), offered as the fixture ``hf_tools``: write an
HFExport as a folder and load it in a subprocess where kinlm cannot be imported.

(A conftest because the tests run with --import-mode=importlib, where a test cannot import a sibling
module.) A local stand-in for the core's ``kinlm_core.testing.check_hf_export`` until that lands (then the
tests may switch). The same file sits in each physics plugin's tests (hamiltonian, context_vector,
cvfp): plugins are separate distributions and never import each other's tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

CHILD = textwrap.dedent('''
    import importlib.abc, sys

    class _NoKinlm(importlib.abc.MetaPathFinder):
        """Any module named kinlm* fails to import: the export must load with torch and transformers only."""
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0].startswith("kinlm"):
                raise ImportError(f"{name} is blocked in this process")
            return None

    sys.meta_path.insert(0, _NoKinlm())
    try:
        import kinlm_core  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("kinlm_core was importable in the isolated process")

    import json, time
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    req = json.load(open(sys.argv[1]))
    model = AutoModelForCausalLM.from_pretrained(req["folder"], trust_remote_code=True, dtype=torch.float32).eval()
    assert not any(m.startswith("kinlm") for m in sys.modules), "a kinlm module got imported"
    out = {"class": type(model).__name__, "logits": [], "generate": [], "timing": []}

    def kwargs_of(job):
        kw = dict(job.get("kwargs", {}))
        if "steer" in kw:
            kw["steer"] = torch.tensor(kw["steer"], dtype=torch.float32)
        return kw

    with torch.no_grad():
        for job in req.get("logits", []):
            ids = torch.tensor(job["ids"])
            out["logits"].append(model(ids, **kwargs_of(job)).logits.tolist())
        for job in req.get("generate", []):
            ids = torch.tensor(job["ids"])
            gen = model.generate(ids, do_sample=False, max_new_tokens=job["max_new_tokens"],
                                 min_new_tokens=job["max_new_tokens"], **kwargs_of(job))
            out["generate"].append(gen[:, ids.size(1):].tolist())
        for job in req.get("timing", []):
            ids = torch.tensor(job["ids"])
            best = []
            for n in (1, 1 + job["new_tokens"]):
                runs = []
                for _ in range(job.get("repeats", 3)):
                    t0 = time.perf_counter()
                    model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n)
                    runs.append(time.perf_counter() - t0)
                best.append(min(runs))
            out["timing"].append((best[1] - best[0]) / job["new_tokens"])
    json.dump(out, open(sys.argv[2], "w"))
''')


def write_export(export, folder: Path) -> Path:
    """The parts of the core's folder layout these tests need: config.json with ``auto_map``, the
    source files, model.safetensors (no tokenizer: the tests feed ids)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, text in export.files.items():
        (folder / name).write_text(text, encoding="utf-8")
    auto = "AutoModelForCausalLM" if export.task == "causal" else "AutoModelForSeq2SeqLM"
    config = {**export.config, "model_type": export.name, "architectures": [export.model_class],
              "auto_map": {"AutoConfig": f"configuration_{export.name}.{export.config_class}",
                           auto: f"modeling_{export.name}.{export.model_class}"}}
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in export.state_dict.items()}, str(folder / "model.safetensors"))
    return folder


def run_isolated(folder: Path, tmp_path: Path, *, logits=(), generate=(), timing=(), timeout: int = 600) -> dict:
    """Load ``folder`` in a fresh interpreter that cannot import kinlm and run the jobs:
    ``logits``: [{"ids": [[...]], "kwargs": {...}}] -> logits lists; ``generate``: [{"ids", "max_new_tokens",
    "kwargs"}] -> greedy continuations; ``timing``: [{"ids", "new_tokens"}] -> seconds per generated token
    (generate of 1 + n tokens minus generate of 1, over n, best of 3)."""
    req, res, script = tmp_path / "request.json", tmp_path / "result.json", tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    req.write_text(json.dumps({"folder": str(folder), "logits": list(logits), "generate": list(generate),
                               "timing": list(timing)}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(script), str(req), str(res)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=str(tmp_path))
    assert proc.returncode == 0, f"isolated load failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(res.read_text(encoding="utf-8"))


class Greedy:
    """Generator options for kinlm_core.sampling.generate_ids: greedy, n new tokens."""

    def __init__(self, max_new_tokens: int):
        self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed = max_new_tokens, 0.0, None, None, 0


def kinlm_greedy(model, ids: torch.Tensor, n: int, vocab_size: int, model_kwargs=None) -> list:
    """kinlm's own greedy continuation (its sampler, through the model's decode), as lists."""
    from kinlm_core.sampling import generate_ids

    out = generate_ids(model, ids, Greedy(n), vocab_size=vocab_size, model_kwargs=model_kwargs)
    return out[:, ids.size(1):].tolist()


def kinlm_seconds_per_token(model, ids: torch.Tensor, n: int, vocab_size: int, repeats: int = 3) -> float:
    """kinlm's greedy generation, timed as the isolated process times transformers' generate."""
    import time

    best = []
    for k in (1, 1 + n):
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            kinlm_greedy(model, ids, k, vocab_size)
            runs.append(time.perf_counter() - t0)
        best.append(min(runs))
    return (best[1] - best[0]) / n


@pytest.fixture
def hf_tools():
    """write_export, run_isolated, kinlm_greedy, kinlm_seconds_per_token (see this module)."""
    return types.SimpleNamespace(write_export=write_export, run_isolated=run_isolated, kinlm_greedy=kinlm_greedy,
                                 kinlm_seconds_per_token=kinlm_seconds_per_token)
