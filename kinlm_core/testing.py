"""Conformance kit for plugin authors (also a pytest plugin: fixtures ``kinlm_tokenizer``).

Call these from your plugin's tests::

    from kinlm_core.testing import check_config, check_imports_without_torch, check_model

    def test_conformance():
        check_config(MyModelConfig)
        check_imports_without_torch("my_plugin.plugin", "my_plugin.config")
        check_model(MyModelConfig(d_model=32, n_layer=2))

Each check raises AssertionError with a message saying which part of the contract failed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .api import BASES, ComponentConfig, ModelOutput, Tokenizer
from .data.tokenizers import ByteTokenizer  # UTF-8 bytes + end-of-text 256; handy in plugin tests


@pytest.fixture
def kinlm_tokenizer() -> Tokenizer:
    return ByteTokenizer()


def check_config(cls: type[ComponentConfig], **values) -> ComponentConfig:
    """The config is a proper component config: a kind base, a ``type`` literal, documented
    fields, strict (unknown fields rejected), JSON round trip and a JSON Schema."""
    assert any(issubclass(cls, b) for b in BASES.values()), f"{cls.__name__} does not derive from a kinlm_core.api base"
    name = cls.component_name()
    assert isinstance(name, str) and name, f"{cls.__name__}.type must default to its component name"
    assert cls.summary(), f"{cls.__name__} needs a docstring whose first line is a one-line summary"
    for fname, f in cls.model_fields.items():
        if fname != "type":
            assert f.description, f"{cls.__name__}.{fname} has no description"
    cfg = cls(**values)
    again = cls.model_validate_json(cfg.model_dump_json())
    assert again == cfg, f"{cls.__name__}: JSON round trip changed the config"
    assert cls.model_validate(json.loads(cfg.model_dump_json())) == cfg
    try:
        cls(**values, not_a_field_xyz=1)
    except Exception:  # noqa: BLE001 - pydantic.ValidationError
        pass
    else:
        raise AssertionError(f"{cls.__name__} accepts unknown fields; inherit extra='forbid'")
    cls.model_json_schema()
    return cfg


def check_imports_without_torch(*modules: str) -> None:
    """Importing these modules (hook module, config modules) must not import torch."""
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"importing {modules} failed: {out.stderr.strip()[-300:]}"
    assert out.stdout.strip() == "False", f"importing {modules} imports torch; import it inside build()"


def check_model(cfg, vocab_size: int = 97, batch: int = 2, seq_len: int = 16, causal: bool = True, seed: int = 0):
    """Build the model from ``cfg`` (scale it down first), then check the output contract
    (ModelOutput, logits (B, T, >=V), hidden states (B, T, C) per layer), gradients to every
    parameter, causality (changing token t changes no logits before t), and, for a model with the
    decoding protocol, that prefill + one token at a time gives the full forward's logits."""
    import torch

    torch.manual_seed(seed)
    model = cfg.build(vocab_size)
    assert isinstance(model, torch.nn.Module), "build() must return an nn.Module"
    assert hasattr(model, "block_size"), "the model needs an attribute block_size (an int, or None: no context limit)"
    assert model.block_size is None or isinstance(model.block_size, int), "block_size must be an int or None"
    T = seq_len if model.block_size is None else min(seq_len, model.block_size)
    ids = torch.randint(0, vocab_size, (batch, T))
    model.train()
    out = model(ids, output_hidden_states=True)
    assert isinstance(out, ModelOutput), "forward must return kinlm_core.ModelOutput"
    assert out.logits.shape[:2] == (batch, T) and out.logits.shape[2] >= vocab_size, f"logits shape {tuple(out.logits.shape)}"
    assert out.hidden_states, "forward(output_hidden_states=True) must return hidden states"
    for i, h in enumerate(out.hidden_states):
        assert h.shape[:2] == (batch, T) and h.dim() == 3, f"hidden_states[{i}] shape {tuple(h.shape)}"
    assert model(ids).hidden_states is None, "hidden states must be None unless requested"
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), ids.roll(-1, 1).reshape(-1))
    (loss + sum(out.aux_losses.values(), torch.zeros(()))).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"no finite gradient for: {missing[:5]}"
    if causal:
        model.eval()
        with torch.no_grad():
            t = T // 2
            ids2 = ids.clone()
            ids2[:, t] = (ids2[:, t] + 1) % vocab_size
            a, b = model(ids).logits, model(ids2).logits
            assert torch.allclose(a[:, :t], b[:, :t], atol=1e-5), f"not causal: changing token {t} changed earlier logits"
            assert not torch.allclose(a[:, t:], b[:, t:]), "changing a token changed no later logits"
    if hasattr(model, "decode"):
        check_decoding(model, ids)
    return model


def check_decoding(model, ids, prefix: int | None = None, atol: float = 1e-4) -> None:
    """``decode(prefix)`` then one token per call reproduces ``forward(ids).logits`` at every position."""
    import torch

    model.eval()
    prefix = prefix or max(1, ids.size(1) // 2)
    with torch.no_grad():
        full = model(ids).logits
        logits, state = model.decode(ids[:, :prefix])
        steps = [logits]
        for t in range(prefix, ids.size(1)):
            logits, state = model.decode(ids[:, t:t + 1], state)
            steps.append(logits)
        got = torch.cat(steps, dim=1)
    assert got.shape == full.shape, f"decode gave logits {tuple(got.shape)}, forward {tuple(full.shape)}"
    err = (got - full).abs().max().item()
    assert err <= atol, f"decoding step by step differs from the full forward by {err:.2e} (> {atol})"


def check_generator(cfg, model, tokenizer: Tokenizer | None = None, prompt: str = "Hello") -> str:
    """The generator returns a string continuation and is deterministic for a fixed seed."""
    tokenizer = tokenizer or ByteTokenizer()
    cfg = cfg.model_copy(update={"seed": 0 if cfg.seed is None else cfg.seed})
    a = cfg.generate(model, tokenizer, prompt)
    b = cfg.generate(model, tokenizer, prompt)
    assert isinstance(a, str), "generate must return the continuation as str"
    assert a == b, "generate is not deterministic for a fixed seed"
    return a


def check_fails_offline(spec_path, tmp_path, *expected: str) -> str:
    """``kinlm run SPEC`` with the hub offline stops before any model is built: exit 2, one line on
    stderr holding each of ``expected`` (e.g. the dataset id), and no run directory. Returns the line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    rd = Path(tmp_path) / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "KINLM_CACHE": str(Path(tmp_path) / "c")}
    r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "run", str(spec_path), "--run-dir", str(rd)],
                       capture_output=True, text=True, env=env, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, f"exit {r.returncode}, expected 2: {r.stderr[-500:]}"
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {r.stderr[-500:]}"
    missing = [e for e in expected if e not in lines[0]]
    assert not missing, f"the line does not name {missing}: {lines[0]}"
    assert not rd.exists(), "a run directory was left behind"
    return lines[0]
