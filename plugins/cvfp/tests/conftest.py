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
    from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList

    torch.set_num_threads(1)
    req = json.load(open(sys.argv[1]))
    model = AutoModelForCausalLM.from_pretrained(req["folder"], trust_remote_code=True, dtype=torch.float32).eval()
    assert not any(m.startswith("kinlm") for m in sys.modules), "a kinlm module got imported"
    out = {"class": type(model).__name__, "logits": [], "generate": [], "timing": [], "errors": []}

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
            stamps = []

            class Clock(StoppingCriteria):
                """Records when each decoding step ends; never stops generation."""
                def __call__(self, input_ids, scores, **kwargs):
                    stamps.append(time.perf_counter())
                    return torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)

            n = job["new_tokens"]
            model.generate(torch.tensor(job["ids"]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                           stopping_criteria=StoppingCriteriaList([Clock()]))
            steps = sorted(b - a for a, b in zip(stamps, stamps[1:]))   # after the prefill: one token each
            out["timing"].append(steps[len(steps) // 2])
        for job in req.get("errors", []):
            ids = torch.tensor(job["ids"])
            mask = torch.tensor(job["attention_mask"]) if "attention_mask" in job else None
            try:
                if job.get("generate"):
                    model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=2)
                else:
                    model(ids, attention_mask=mask)
            except ValueError as e:
                out["errors"].append(str(e))
            else:
                out["errors"].append(None)
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


def run_isolated(folder: Path, tmp_path: Path, *, logits=(), generate=(), timing=(), errors=(),
                 timeout: int = 600) -> dict:
    """Load ``folder`` in a fresh interpreter that cannot import kinlm and run the jobs:
    ``logits``: [{"ids": [[...]], "kwargs": {...}}] -> logits lists; ``generate``: [{"ids", "max_new_tokens",
    "kwargs"}] -> greedy continuations; ``timing``: [{"ids", "new_tokens"}] -> seconds per generated token
    after the prefill (the median over the steps of one greedy generate); ``errors``: [{"ids",
    "attention_mask", "generate": bool}] -> the ValueError message of that call, or None."""
    req, res, script = tmp_path / "request.json", tmp_path / "result.json", tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    req.write_text(json.dumps({"folder": str(folder), "logits": list(logits), "generate": list(generate),
                               "timing": list(timing), "errors": list(errors)}), encoding="utf-8")
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


def kinlm_seconds_per_token(model, ids: torch.Tensor, n: int, vocab_size: int) -> float:
    """kinlm's greedy decoding (its sampler's Decoder, through the model's decode), timed as the
    isolated process times generate: the median time of one new token after the prefill."""
    import time

    from kinlm_core.sampling import Decoder

    model.eval()
    steps = []
    with torch.inference_mode():
        dec = Decoder(model, vocab_size=vocab_size)
        logits = dec.prefill(ids)
        for _ in range(n):
            t0 = time.perf_counter()
            logits = dec.step(logits.argmax(-1, keepdim=True))
            steps.append(time.perf_counter() - t0)
    return sorted(steps)[len(steps) // 2]


def train_few_steps(model, vocab_size: int, steps: int = 3, seed: int = 0):
    """A few AdamW steps of next-token loss on random ids, so the export is checked on trained
    weights, not only on the initialisation (returns the model in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        x = torch.randint(0, vocab_size, (4, 24), generator=g)
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture
def hf_tools():
    """write_export, run_isolated, kinlm_greedy, kinlm_seconds_per_token, train_few_steps (see this module)."""
    return types.SimpleNamespace(write_export=write_export, run_isolated=run_isolated, kinlm_greedy=kinlm_greedy,
                                 kinlm_seconds_per_token=kinlm_seconds_per_token, train_few_steps=train_few_steps)
