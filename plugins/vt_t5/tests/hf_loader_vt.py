"""Test helper for issue #33 exports until the core's ``kinlm_core.testing.check_hf_export`` lands:
write an HFExport as a transformers folder and load it in a subprocess where kinlm cannot be imported.

``write_export`` is a minimal stand-in for the core's folder writer (config.json with auto_map, the
custom-code files, model.safetensors); ``load_elsewhere`` runs transformers in a fresh Python whose
first meta-path finder refuses every ``kinlm*`` module, and returns the loaded model's logits and
greedy tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np


def write_export(exp, out_dir: Path) -> Path:
    """The folder the core writes, reduced to what loading needs."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in exp.files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    auto = "AutoModelForSeq2SeqLM" if exp.task == "seq2seq" else "AutoModelForCausalLM"
    config = {**exp.config, "model_type": exp.name, "architectures": [exp.model_class],
              "auto_map": {"AutoConfig": f"configuration_{exp.name}.{exp.config_class}",
                           auto: f"modeling_{exp.name}.{exp.model_class}"}}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in exp.state_dict.items()},
              str(out_dir / "model.safetensors"))
    return out_dir


_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoKinlm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0].startswith("kinlm"):
                raise ImportError(f"{name}: kinlm is not importable here")
            return None

    sys.meta_path.insert(0, NoKinlm())
    try:
        import kinlm_core  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("kinlm_core imported although it must not be")
    import numpy as np
    import torch
    import transformers

    folder, prompt, new, task, out = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    auto = transformers.AutoModelForSeq2SeqLM if task == "seq2seq" else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(folder, trust_remote_code=True, local_files_only=True, dtype=torch.float32).eval()
    ids = torch.tensor(prompt)
    with torch.no_grad():
        if task == "seq2seq":
            gen = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None)
            logits = model(input_ids=ids, decoder_input_ids=gen).logits
        else:
            logits = model(input_ids=ids).logits
            steps = []  # tokens each forward of generate runs: 1 per step where a cache is carried
            model.register_forward_pre_hook(lambda m, a, kw: steps.append(kw["input_ids"].shape[1]), with_kwargs=True)
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
    extra = {"steps": np.array(steps)} if task != "seq2seq" else {}
    np.savez(out, logits=logits.float().numpy(), tokens=gen.numpy(), cls=np.array(type(model).__name__), **extra)
""")


def load_elsewhere(folder: Path, prompt_ids, max_new_tokens: int = 8, task: str = "causal") -> dict:
    """Load ``folder`` with transformers in a subprocess without kinlm -> {"logits", "tokens", "cls"} and,
    causal, "steps": the number of tokens each forward call of ``generate`` ran.
    seq2seq: tokens = generate's output (decoder_start_token_id first), logits = the forward with those
    tokens as decoder_input_ids."""
    folder = Path(folder)
    out = folder.parent / f"{folder.name}_loaded.npz"
    env = {**os.environ, "HF_MODULES_CACHE": str(folder.parent / "hf_modules"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(folder), json.dumps(prompt_ids), str(max_new_tokens),
                           task, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"loading the export failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    with np.load(out) as z:
        return {k: z[k] for k in z.files}
