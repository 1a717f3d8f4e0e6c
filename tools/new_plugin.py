#!/usr/bin/env python3
"""Create the skeleton of a kinlm plugin: a distribution with one component of a kind, its config
and a test that runs the conformance kit on it.

    python tools/new_plugin.py mymethod [--kind KIND] [--dir plugins]
    pip install -e plugins/mymethod && kinlm plugins     # it is listed at once
    pytest plugins/mymethod/tests                        # the conformance kit checks it

KIND is one of model (default), objective, regularizer, curriculum, data_source, tokenizer,
analyzer, generator. docs/writing-a-plugin.md shows what each kind writes, whole.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from kinlm_core.api import COMPONENT_KINDS

COMMON = {
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

[project.optional-dependencies]
test = ["pytest>=7"]

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
def {hook}():
    from .config import {Name}Config

    return [{Name}Config]
''',
    "README.md": '''\
# kinlm-{name}

A kinlm plugin: one {kind} (`{name}`). `pip install -e '.[test]'`, then `kinlm list {kind}` shows it and
`pytest tests` checks it with the conformance kit.
''',
}

TEST = '''\
from kinlm_core.testing import check_config, check_imports_without_torch, {check}

from kinlm_{name}.config import {Name}Config


def test_conformance():
    check_config({Name}Config)
    check_imports_without_torch("kinlm_{name}.plugin", "kinlm_{name}.config")
    {call}
'''

# per kind: the files beside the common ones, and the conformance call of its test
KINDS = {
    "model": ({
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
    }, "check_model", "check_model({Name}Config(d_model=16, block_size=32))"),

    "objective": ({
        "kinlm_{name}/config.py": '''\
"""Configs import without torch; the objective imports it inside its methods."""

from typing import Literal

from pydantic import Field

from kinlm_core import IGNORE_INDEX, Objective, ObjectiveConfig


class {Name}(Objective):
    """Next-token prediction on packed rows; the first `skip` targets of a row are context only.

        rows: (B, T+1) -> input_ids = rows[:, :-1], labels = rows[:, 1:]     (B, T)
        loss = mean over scored targets of -log p(label_t | input_ids_<=t)
    """

    def __init__(self, skip: int):
        self.skip = skip

    def collate(self, rows, rng):  # rows: (B, T+1) numpy array of packed blocks; rng: seeded per step
        import torch

        x = torch.from_numpy(rows.astype("int64"))
        labels = x[:, 1:].clone()
        labels[:, : self.skip] = IGNORE_INDEX  # never scored
        return {{"input_ids": x[:, :-1], "labels": labels}}

    def loss(self, model, batch, output_hidden_states=False):
        from kinlm_core.objectives import call_model, scored

        return scored(call_model(model, batch, output_hidden_states), batch["labels"])


class {Name}Config(ObjectiveConfig):
    """{Name}: a one-line summary of the objective (shown by `kinlm list objective`)."""

    type: Literal["{name}"] = "{name}"
    skip: int = Field(0, ge=0, description="targets at the start of each row that are context only (not scored)")

    def build(self, tokenizer):
        return {Name}(self.skip)
''',
    }, "check_objective", "check_objective({Name}Config(skip=4))"),

    "regularizer": ({
        "kinlm_{name}/config.py": '''\
"""Configs import without torch; build() returns the loss function."""

from typing import Literal

from pydantic import Field

from kinlm_core import RegularizerConfig


class {Name}Config(RegularizerConfig):
    """{Name}: a one-line summary of the regularizer (shown by `kinlm list regularizer`).

    {name} = mean over real tokens of ||h_L||^2 / C, h_L: the last hidden state (B, T, C)
    """

    type: Literal["{name}"] = "{name}"
    weight: float = Field(1e-3, ge=0, description="lambda: the term's weight in the loss")

    def build(self):
        def fn(output, batch, step):
            h = output.hidden_states[-1]                        # (B, T, C)
            mask = batch.get("attention_mask")                  # (B, T), or None: no padding
            w = h.new_ones(h.shape[:2]) if mask is None else mask.to(h.dtype)
            return {{"{name}": (h.pow(2).mean(-1) * w).sum() / w.sum()}}

        return fn
''',
    }, "check_regularizer", "check_regularizer({Name}Config())"),

    "curriculum": ({
        "kinlm_{name}/config.py": '''\
"""Configs import without torch; schedule() returns the phases."""

from typing import Literal

from pydantic import Field

from kinlm_core import CurriculumConfig, Phase


class {Name}Config(CurriculumConfig):
    """{Name}: a one-line summary of the curriculum (shown by `kinlm list curriculum`)."""

    type: Literal["{name}"] = "{name}"
    first_fraction: float = Field(0.25, gt=0, lt=1, description="share of train.max_steps in the first phase")
    first_trainable: list[str] = Field(["wte", "wpe"], description="parameter-name prefixes that train in the "
                                       "first phase (gpt's embeddings; `kinlm params SPEC` lists the names)")
    first_lr: float = Field(1e-2, gt=0, description="learning rate of the first phase (constant)")

    def schedule(self, max_steps: int) -> list[Phase]:
        first = Phase("first", steps=max(1, int(max_steps * self.first_fraction)), trainable=self.first_trainable,
                      optim={{"lr": self.first_lr, "schedule": "constant", "warmup_steps": 0}})
        return [first, Phase("all")]  # then every parameter, on the run's schedule
''',
    }, "check_curriculum", "check_curriculum({Name}Config())"),

    "data_source": ({
        "kinlm_{name}/config.py": '''\
"""Configs import without torch; documents() yields the texts of a split."""

from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field

from kinlm_core import DataError, DataSourceConfig


class {Name}Config(DataSourceConfig):
    """{Name}: a one-line summary of the data (shown by `kinlm list data_source`)."""

    type: Literal["{name}"] = "{name}"
    path: str | None = Field(None, description="a text file, one document per paragraph (None: a built-in sample)")
    held_out: int = Field(1, ge=1, description="every held_out-th document goes to validation and test")

    def _all(self) -> list[str]:
        text = Path(self.path).read_text() if self.path else SAMPLE
        return [d.strip() for d in text.split("\\n\\n") if d.strip()]

    def documents(self, split: str) -> Iterator[str]:
        docs = self._all()
        if self.held_out == 1:
            yield from docs
            return
        held = docs[:: self.held_out]
        yield from ([d for i, d in enumerate(docs) if i % self.held_out] if split == "train"
                    else held[0::2] if split == "validation" else held[1::2])

    def fingerprint(self) -> str:  # the file can change behind the same config
        return self.model_dump_json() + (str(Path(self.path).stat().st_mtime_ns) if self.path else "")

    def check_available(self) -> None:
        if self.path and not Path(self.path).is_file():
            raise DataError("data.path", f"{{self.path}}: no such file")


SAMPLE = "The first document.\\n\\nThe second document, a little longer.\\n\\nA third."
''',
    }, "check_data_source", "check_data_source({Name}Config())"),

    "tokenizer": ({
        "kinlm_{name}/config.py": '''\
"""Configs import without torch; build() returns the tokenizer."""

from typing import Literal

from pydantic import Field

from kinlm_core import Tokenizer, TokenizerConfig


class {Name}(Tokenizer):
    """UTF-8 bytes; id 256 ends a document (appended after each)."""

    vocab_size, eos_id = 257, 256

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint  # keys the data cache: change it when the vocabulary changes

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class {Name}Config(TokenizerConfig):
    """{Name}: a one-line summary of the tokenizer (shown by `kinlm list tokenizer`)."""

    type: Literal["{name}"] = "{name}"
    version: int = Field(1, ge=1, description="bump when the encoding changes (re-tokenizes cached data)")

    def build(self, train_texts, cache_dir):  # train_texts(): the training documents, for a learned vocabulary
        return {Name}(f"{name}-v{{self.version}}")
''',
    }, "check_tokenizer", "check_tokenizer({Name}Config())"),

    "analyzer": ({
        "kinlm_{name}/config.py": '''\
"""Configs import without torch; analyze() imports it when it runs."""

from typing import Literal

from pydantic import Field

from kinlm_core import AnalyzerConfig


class {Name}Config(AnalyzerConfig):
    """{Name}: a one-line summary of the analysis (shown by `kinlm list analyzer`)."""

    type: Literal["{name}"] = "{name}"
    max_tokens: int = Field(256, ge=2, description="tokens of each text that are read")

    def analyze(self, model, tokenizer, texts, out_dir):
        import matplotlib
        import torch

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        device, limit = next(model.parameters()).device, min(self.max_tokens, model.block_size or self.max_tokens)
        norms = []
        with torch.no_grad():
            for ids in (tokenizer.encode(t)[:limit] for t in texts):
                if ids:
                    out = model(torch.tensor([ids], device=device), output_hidden_states=True)
                    norms.append(out.hidden_states[-1][0].norm(dim=-1).cpu())  # (T,)
        n = torch.cat(norms)
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(n.numpy(), bins=30)
        ax.set(xlabel="norm of the last hidden state", ylabel="tokens")
        fig.savefig(out_dir / "{name}.png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        return {{"mean_norm": float(n.mean()), "tokens": int(n.numel())}}
''',
    }, "check_analyzer", "check_analyzer({Name}Config())"),

    "generator": ({
        "kinlm_{name}/config.py": '''\
"""Configs import without torch; generate() uses the shared sampler."""

from typing import Literal

from pydantic import Field

from kinlm_core import GeneratorConfig


class {Name}Config(GeneratorConfig):
    """{Name}: a one-line summary of the generator (shown by `kinlm list generator`)."""

    type: Literal["{name}"] = "{name}"
    stop: str = Field("\\n", description="cut the continuation at the first occurrence of this text ('' : never)")

    def generate(self, model, tokenizer, prompt=None):
        from kinlm_core.sampling import generate_text

        text = generate_text(model, tokenizer, self.prompt if prompt is None else prompt, self)
        return text.split(self.stop)[0] if self.stop else text
''',
    }, "check_generator", "check_generator({Name}Config(max_new_tokens=8), tiny_model())"),
}


def files(name: str, kind: str = "model") -> dict[str, str]:
    """The skeleton of plugin ``name`` with one component of ``kind``: relative path -> text."""
    hook = next(k.hook for k in COMPONENT_KINDS if k.name == kind)
    extra, check, call = KINDS[kind]
    Name = "".join(p.capitalize() for p in name.split("_"))
    imports = check + (", tiny_model" if "tiny_model" in call else "")
    out = {}
    for rel, text in {**COMMON, **extra}.items():
        text = text.replace("{{", "\0").replace("}}", "\1")  # literal braces of the per-kind templates
        text = text.replace("{name}", name).replace("{Name}", Name).replace("{hook}", hook).replace("{kind}", kind)
        out[rel.replace("{name}", name)] = text.replace("\0", "{").replace("\1", "}")
    test = TEST.replace("{check}", imports).replace("{call}", call)
    out[f"tests/test_{name}.py"] = test.replace("{name}", name).replace("{Name}", Name)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="plugin name: lower case letters, digits and underscores")
    ap.add_argument("--kind", default="model", choices=list(KINDS), help="the kind of component (default: model)")
    ap.add_argument("--dir", default="plugins", help="parent folder (default: plugins)")
    a = ap.parse_args(argv)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", a.name):
        print(f"new_plugin: name {a.name!r}: use lower case letters, digits and underscores", file=sys.stderr)
        return 2
    root = Path(a.dir) / a.name
    if root.exists():
        print(f"new_plugin: {root} exists; not overwriting it", file=sys.stderr)
        return 2
    for rel, text in files(a.name, a.kind).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"created {root}: one {a.kind}, `{a.name}`; next: pip install -e '{root}[test]' && kinlm list {a.kind} "
          f"&& pytest {root / 'tests'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
