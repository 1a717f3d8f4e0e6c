#!/usr/bin/env python3
"""Create the skeleton of a kinlm plugin: a distribution with one model, its config and a test.

    python tools/new_plugin.py mymethod [--dir plugins]
    pip install -e plugins/mymethod && kinlm plugins     # it is listed at once
    pytest plugins/mymethod/tests                        # the conformance kit checks it
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

FILES = {
    "pyproject.toml": '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "kinlm-{name}"
version = "0.1.0"
description = "kinlm plugin: {name}"
requires-python = ">=3.10"
dependencies = ["kinlm-core>=0.1"]

[project.entry-points.kinlm]
{name} = "kinlm_{name}.plugin"

[tool.setuptools.packages.find]
include = ["kinlm_{name}*"]
''',
    "kinlm_{name}/__init__.py": '"""kinlm plugin {name}."""\n',
    "kinlm_{name}/plugin.py": '''\
"""Hook implementations only: hand kinlm the plugin's components."""

from kinlm_core import hookimpl


@hookimpl
def kinlm_register_models():
    from .config import {Name}Config

    return [{Name}Config]
''',
    "kinlm_{name}/config.py": '''\
"""Configs import without torch; build() imports the model when a run needs it."""

from typing import Literal

from pydantic import Field

from kinlm_core import ModelConfig


class {Name}Config(ModelConfig):
    """{Name}: a one-line summary of the model (shown by `kinlm list model`)."""

    type: Literal["{name}"] = "{name}"
    d_model: int = Field(128, ge=8, description="residual width")
    block_size: int = Field(256, ge=2, description="longest context")

    def build(self, vocab_size: int):
        from .model import {Name}

        return {Name}(self, vocab_size)
''',
    "kinlm_{name}/model.py": '''\
"""{Name}: replace this bigram-plus-causal-average model with your method.

    x: (B, T) token ids -> h_0 = E[x] (B, T, C)
    h_1 = h_0 + W (cumulative mean of h_0 over time)   (causal)
    logits = LN(h_1) @ E^T                               (B, T, V)
"""

import torch
import torch.nn as nn

from kinlm_core import ModelOutput


class {Name}(nn.Module):
    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.block_size = cfg.block_size
        self.emb = nn.Embedding(vocab_size, cfg.d_model)
        self.mix = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln = nn.LayerNorm(cfg.d_model)

    def forward(self, input_ids, output_hidden_states: bool = False) -> ModelOutput:
        h0 = self.emb(input_ids)                                              # (B, T, C)
        steps = torch.arange(1, input_ids.size(1) + 1, device=input_ids.device)
        h1 = h0 + self.mix(h0.cumsum(1) / steps[None, :, None])               # causal average
        out = self.ln(h1)
        logits = out @ self.emb.weight.T                                      # (B, T, V)
        return ModelOutput(logits=logits, hidden_states=(h0, out) if output_hidden_states else None)
''',
    "tests/test_{name}.py": '''\
from kinlm_core.testing import check_config, check_imports_without_torch, check_model

from kinlm_{name}.config import {Name}Config


def test_conformance():
    check_config({Name}Config)
    check_imports_without_torch("kinlm_{name}.plugin", "kinlm_{name}.config")
    check_model({Name}Config(d_model=16, block_size=32))
''',
    "README.md": "# kinlm-{name}\n\nA kinlm plugin. `pip install -e .`, then `kinlm list model`.\n",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="plugin name: lower case letters, digits and underscores")
    ap.add_argument("--dir", default="plugins", help="parent folder (default: plugins)")
    a = ap.parse_args(argv)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", a.name):
        print(f"new_plugin: name {a.name!r}: use lower case letters, digits and underscores", file=sys.stderr)
        return 2
    root = Path(a.dir) / a.name
    if root.exists():
        print(f"new_plugin: {root} exists; not overwriting it", file=sys.stderr)
        return 2
    Name = "".join(p.capitalize() for p in a.name.split("_"))
    for rel, text in FILES.items():
        path = root / rel.format(name=a.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("{name}", a.name).replace("{Name}", Name))
    print(f"created {root}; next: pip install -e {root} && kinlm plugins")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
