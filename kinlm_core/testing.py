"""Conformance kit for plugin authors (also a pytest plugin: fixtures ``kinlm_tokenizer``).

Call these from your plugin's tests::

    from kinlm_core.testing import check_config, check_imports_without_torch, check_model

    def test_conformance():
        check_config(MyModelConfig)
        check_imports_without_torch("my_plugin.plugin", "my_plugin.config")
        check_model(MyModelConfig(d_model=32, n_layer=2))

One check per component kind (``CHECKS`` maps a kind to it): :func:`check_model`,
:func:`check_objective`, :func:`check_regularizer`, :func:`check_curriculum`,
:func:`check_data_source`, :func:`check_tokenizer`, :func:`check_analyzer`,
:func:`check_generator`; :func:`check_capabilities` (what a model's config declares it offers to
wrappers and regularizers, kinlm_core/composition.py); :func:`check_hf_export` and
:func:`check_export_generate_time` (a model's transformers export, loaded where kinlm cannot be
imported; :func:`train_briefly` trains a tiny spec for them); and for every kind :func:`check_config` and
:func:`check_imports_without_torch`. The checks that need a model use :func:`tiny_model` (the
built-in gpt, one layer) unless given one. Each raises AssertionError with a message saying which
part of the contract failed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from .api import BASES, ComponentConfig, ModelOutput, Tokenizer
from .engine.contract import describe_output_problem
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
    problem = describe_output_problem(out, ids, vocab_size)  # the check `kinlm run` makes on its first step
    if problem is not None:  # raised, not asserted: pytest would append its own rewrite of the condition
        raise AssertionError(problem)
    assert out.logits is not None, "forward must return logits"
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
    if callable(getattr(model, "decode_step", None)):
        check_static_decoding(model, ids, prefix, atol)


def check_static_decoding(model, ids, prefix: int | None = None, atol: float = 1e-4) -> None:
    """``decode(prefix)`` then ``decode_step`` at a device position, one token per call, reproduces
    ``forward(ids).logits`` at every later position (the static decoding contract, kinlm_core.sampling)."""
    import torch

    model.eval()
    prefix = prefix or max(1, ids.size(1) // 2)
    with torch.no_grad():
        full = model(ids).logits
        _, state = model.decode(ids[:, :prefix])
        pos = torch.tensor(prefix, device=ids.device)
        for t in range(prefix, ids.size(1)):
            logits = model.decode_step(ids[:, t:t + 1], pos, state)
            pos += 1
            assert logits.shape == full[:, t].shape, \
                f"decode_step gave logits {tuple(logits.shape)}, expected (B, V) {tuple(full[:, t].shape)}"
            err = (logits - full[:, t]).abs().max().item()
            assert err <= atol, f"decode_step at position {t} differs from the full forward by {err:.2e} (> {atol})"


def check_capabilities(cfg, vocab_size: int = 97, batch: int = 2, seq_len: int = 12, seed: int = 0):
    """What ``cfg`` declares in ``provides`` (kinlm_core/composition.py) holds on the built model, so
    wrappers and regularizers that need it act on it:

    - ``hidden_states``: ``forward(output_hidden_states=True)`` returns (B, T, C) states;
    - ``input_embeddings``: ``get_input_embeddings()`` (or an embedding sharing its table) is a module
      called in forward with (B, T, C) outputs, changing that output changes the logits;
      ``set_input_embeddings`` exists;
    - ``blocks``: ``block_lists()`` (or ModuleLists named as ``BLOCK_LIST_NAMES``) is not empty, every
      listed module runs once per forward with a (B, T, C) output, and changing one changes the logits.

    Capabilities a model declares for itself (not in ``CAPABILITIES``) are its own business."""
    import torch

    from .composition import BLOCK_LIST_NAMES

    declared = cfg.capabilities()
    torch.manual_seed(seed)
    model = cfg.build(vocab_size).eval()
    T = seq_len if model.block_size is None else min(seq_len, model.block_size)
    ids = torch.randint(0, vocab_size, (batch, T))
    with torch.no_grad():
        base = model(ids).logits
    name = cfg.component_name()

    def perturbed(modules, what: str, every: bool = True):
        """Logits with a ramp over the features (not a constant: a LayerNorm after would undo it) added to
        every listed module's output; asserts each ran with a 3-D output."""
        shapes = {}

        def hook(i):
            def add(mod, inputs, out):
                h = out if isinstance(out, torch.Tensor) else out[0]
                shapes.setdefault(i, tuple(h.shape))
                h = h + torch.linspace(-1.0, 1.0, h.size(-1), dtype=h.dtype, device=h.device)
                return h if isinstance(out, torch.Tensor) else (h,) + tuple(out[1:])
            return add

        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
        try:
            with torch.no_grad():
                got = model(ids).logits
        finally:
            for h in handles:
                h.remove()
        idle = [i for i in range(len(modules)) if i not in shapes]
        assert not (idle if every else len(idle) == len(modules)), \
            f"{name}: {what} {idle} never ran in forward; a wrapper could not act on it"
        flat = {i: s for i, s in shapes.items() if len(s) != 3 or s[0] != batch}
        assert not flat, f"{name}: {what} outputs {flat} are not (B, T, C); a wrapper mixes positions along dim 1"
        assert not torch.allclose(got, base), f"{name}: changing the outputs of its {what} changed no logits"

    if "hidden_states" in declared:
        with torch.no_grad():
            hs = model(ids, output_hidden_states=True).hidden_states
        assert hs and all(h.dim() == 3 for h in hs), f"{name} declares hidden_states but returns {hs!r:.80}"
    if "input_embeddings" in declared:
        for m in ("get_input_embeddings", "set_input_embeddings"):
            assert callable(getattr(model, m, None)), f"{name} declares input_embeddings but has no {m}()"
        emb = model.get_input_embeddings()
        assert isinstance(emb, torch.nn.Module), f"{name}: get_input_embeddings() returned {type(emb).__name__}"
        assert getattr(emb, "embedding_dim", None) or getattr(emb, "weight", None) is not None, \
            f"{name}: the input embedding needs a weight (V, C) or an embedding_dim"
        w = getattr(emb, "weight", None)
        tied = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m is not emb and w is not None
                and m.weight.data_ptr() == w.data_ptr()]  # T5: encoder/decoder embed_tokens share `shared`
        perturbed([emb, *tied], "input embedding (or the modules tied to it)", every=False)
    if "blocks" in declared:
        if callable(getattr(model, "block_lists", None)) and model.block_lists():
            lists = list(model.block_lists().values())
        else:
            lists = [m for n, m in model.named_modules()
                     if isinstance(m, torch.nn.ModuleList) and n.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES and len(m)]
        blocks = [b for lst in lists for b in lst]
        assert blocks, f"{name} declares blocks but has no block_lists() and no ModuleList named " \
            + ", ".join(BLOCK_LIST_NAMES)
        perturbed(blocks, "blocks")
    return model


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


# --- one check per kind (beyond models and generators) -------------------------------------------


def tiny_model(vocab_size: int = 257, seed: int = 0):
    """The built-in gpt, one layer of width 32, context 32: a model for checks that need one."""
    import torch

    from .builtins.models import GPTConfig

    torch.manual_seed(seed)
    return GPTConfig(n_layer=1, n_head=2, d_model=32, block_size=32).build(vocab_size)


def _packed_rows(vocab_size: int, batch: int = 2, block_size: int = 16, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, vocab_size, (batch, block_size + 1)).astype(np.int64)


def check_objective(cfg, tokenizer: Tokenizer | None = None, model=None, batch: int = 2, block_size: int = 16):
    """``cfg.build(tokenizer)`` gives an :class:`~kinlm_core.api.Objective` whose ``collate`` turns
    examples of its ``unit()`` (packed rows, or documents) into a batch dict with ``labels`` that is
    the same for the same rng seed, and whose ``loss`` is a :class:`LossResult` with a finite,
    differentiable loss, finite nats >= 0 and a positive number of targets. Returns the LossResult."""
    import numpy as np
    import torch

    from .api import LossResult, Objective

    tokenizer = cfg.extend_tokenizer(tokenizer or ByteTokenizer())
    obj = cfg.build(tokenizer)
    assert isinstance(obj, Objective), f"{type(cfg).__name__}.build() must return a kinlm_core.Objective"
    unit = cfg.unit()
    assert unit in ("blocks", "documents"), f"unit() must be 'blocks' or 'documents', got {unit!r}"
    rows = _packed_rows(tokenizer.vocab_size, batch, block_size)
    examples = rows if unit == "blocks" else [r[: block_size - 3 * i] for i, r in enumerate(rows)]
    a = obj.collate(examples, np.random.default_rng(0))
    b = obj.collate(examples, np.random.default_rng(0))
    assert isinstance(a, dict) and "labels" in a, "collate must return a dict with 'labels'"
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), f"collate is not deterministic for a fixed rng: batch[{k!r}] differs"
    model = model or tiny_model(tokenizer.vocab_size)
    model.train()
    r = obj.loss(model, a)
    assert isinstance(r, LossResult), "loss() must return kinlm_core.LossResult"
    assert torch.is_tensor(r.loss) and r.loss.dim() == 0 and torch.isfinite(r.loss), f"loss {r.loss!r}: a finite scalar"
    assert int(r.targets) > 0, "no target was scored (targets == 0)"
    nats = float(r.nats)
    assert math.isfinite(nats) and nats >= 0, f"nats {nats}: the summed negative log-likelihood is finite and >= 0"
    r.loss.backward()
    assert any(p.grad is not None for p in model.parameters()), "the loss reaches no parameter of the model"
    return r


def check_regularizer(cfg, model=None, tokenizer: Tokenizer | None = None, steps: int = 2):
    """``cfg.build()`` gives ``fn(output, batch, step) -> {name: tensor}`` that, on a causal-LM
    batch, returns scalar finite terms; the terms added to the loss (names not starting with
    ``metrics/``) reach the model's parameters; the same input gives the same terms; and a fn with
    ``train_state()`` survives a round trip through ``load_train_state``. Returns the terms."""
    import torch

    from .objectives import CausalLM

    tokenizer = tokenizer or ByteTokenizer()
    model = model or tiny_model(tokenizer.vocab_size)
    fn = cfg.build()
    assert callable(fn), f"{type(cfg).__name__}.build() must return fn(output, batch, step)"
    if hasattr(fn, "bind_tokenizer"):
        fn.bind_tokenizer(tokenizer)
    batch = CausalLM(tokenizer).collate(_packed_rows(tokenizer.vocab_size))
    terms = {}
    for step in range(steps):
        model.zero_grad()
        out = model(batch["input_ids"], output_hidden_states=cfg.needs_hidden_states)
        terms = fn(out, batch, step)
        assert isinstance(terms, dict) and terms, "fn must return a non-empty dict of named terms"
        loss = torch.zeros(())
        for k, v in terms.items():
            assert isinstance(k, str) and torch.is_tensor(v) and v.dim() == 0, f"term {k!r} must be a scalar tensor"
            assert torch.isfinite(v), f"term {k!r} is not finite: {float(v)}"
            if not k.startswith("metrics/"):
                loss = loss + v
        if any(not k.startswith("metrics/") for k in terms):
            loss.backward()
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()), \
                "no loss term has a gradient to the model's parameters"
    if hasattr(fn, "train_state"):
        state = fn.train_state()
        assert isinstance(state, dict), "train_state() must return a dict"
        fresh = cfg.build()
        fresh.load_train_state(state)
        assert repr(fresh.train_state()) == repr(state), "load_train_state(train_state()) does not restore the state"
    return terms


def check_curriculum(cfg, max_steps: int = 100, model=None):
    """``cfg.schedule(max_steps)`` returns the same non-empty list of :class:`Phase` each time,
    with distinct non-empty names, valid lengths (``steps`` >= 1, ``epochs`` > 0), ``order``
    ``shuffle`` or ``sequential``, only known ``optim`` keys, callable ``until`` and ``step``,
    objectives that are objective configs, and ``trainable`` prefixes that each match a parameter
    of ``model`` (default: :func:`tiny_model`; pass your own when the prefixes name its parameters).
    Returns the phases."""
    from .api import ObjectiveConfig, Phase

    from .engine.optim import OPTIM_KEYS

    optim_keys = set(OPTIM_KEYS)
    phases = cfg.schedule(max_steps)
    assert isinstance(phases, list) and phases, "schedule() must return a non-empty list of Phase"
    assert all(isinstance(p, Phase) for p in phases), "schedule() must return kinlm_core.Phase objects"
    names = [p.name for p in phases]
    assert all(isinstance(n, str) and n for n in names), f"every phase needs a name: {names}"
    assert len(set(names)) == len(names), f"phase names repeat: {names}"
    again = cfg.schedule(max_steps)
    assert [(p.name, p.steps, p.epochs, p.trainable, p.order, p.optim) for p in again] == \
        [(p.name, p.steps, p.epochs, p.trainable, p.order, p.optim) for p in phases], "schedule() is not deterministic"
    names_in_model = [n for n, _ in (model or tiny_model()).named_parameters()]
    for p in phases:
        assert p.steps is None or (isinstance(p.steps, int) and p.steps >= 1), f"phase {p.name!r}: steps {p.steps!r}"
        assert p.epochs is None or p.epochs > 0, f"phase {p.name!r}: epochs {p.epochs!r}"
        assert p.order in ("shuffle", "sequential"), f"phase {p.name!r}: order {p.order!r}"
        assert set(p.optim or {}) <= optim_keys, f"phase {p.name!r}: unknown optim keys {set(p.optim) - optim_keys}"
        assert p.until is None or callable(p.until), f"phase {p.name!r}: until must be callable"
        assert p.step is None or callable(p.step), f"phase {p.name!r}: step must be callable"
        assert p.objective is None or isinstance(p.objective, ObjectiveConfig), \
            f"phase {p.name!r}: objective must be an objective config"
        for t in p.trainable or []:
            assert any(n.startswith(t) for n in names_in_model), \
                f"phase {p.name!r}: trainable prefix {t!r} matches no parameter (`kinlm params SPEC` lists the names)"
    return phases


def check_data_source(cfg, splits=("train", "validation", "test"), at_least: int = 1):
    """``check_available()`` passes, each split yields strings (the training split at least
    ``at_least`` non-empty ones), the same documents twice, and ``fingerprint()`` is a stable string.
    Returns the training documents."""
    cfg.check_available()
    docs = {}
    for split in splits:
        got = list(cfg.documents(split))
        assert all(isinstance(d, str) for d in got), f"documents({split!r}) must yield str"
        assert got == list(cfg.documents(split)), f"documents({split!r}) is not the same twice"
        docs[split] = got
    assert sum(1 for d in docs.get("train", []) if d) >= at_least, "the train split yields no document"
    fp = cfg.fingerprint()
    assert isinstance(fp, str) and fp and fp == cfg.fingerprint(), "fingerprint() must be a stable non-empty str"
    return docs.get("train", [])


def check_tokenizer(cfg, texts=("Hello, world.", "The quick brown fox jumps over the lazy dog."), tmp_dir=None,
                    round_trip: bool = True) -> Tokenizer:
    """``cfg.build(train_texts, cache_dir)`` returns a :class:`Tokenizer` with an int ``vocab_size``,
    special ids inside the vocabulary, a non-empty ``fingerprint``, ids in ``[0, vocab_size)`` for
    every text, ``encode_batch`` equal to ``encode`` per text and, with ``round_trip``,
    ``decode(encode(text)) == text``. Returns the tokenizer."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        tok = cfg.build(lambda: iter(texts), Path(tmp_dir or d))
        assert isinstance(tok, Tokenizer), "build() must return a kinlm_core.Tokenizer"
        assert isinstance(tok.vocab_size, int) and tok.vocab_size > 0, f"vocab_size {tok.vocab_size!r}"
        assert isinstance(tok.fingerprint, str) and tok.fingerprint, "fingerprint must be a non-empty str"
        for k, v in tok.special_ids().items():
            for i in (v if isinstance(v, (list, tuple)) else [v]):
                assert i is None or 0 <= i < tok.vocab_size, f"{k} {i} is outside the vocabulary"
        for t in texts:
            ids = tok.encode(t)
            assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids), f"encode({t!r}) gave ids out of range"
            if round_trip:
                assert tok.decode(ids) == t, f"decode(encode({t!r})) gave {tok.decode(ids)!r}"
        assert tok.encode_batch(list(texts)) == [tok.encode(t) for t in texts], "encode_batch differs from encode"
    return tok


def check_analyzer(cfg, model=None, tokenizer: Tokenizer | None = None, texts=None, out_dir=None) -> dict:
    """``analyze(model, tokenizer, texts, out_dir)`` returns a JSON-serialisable dict of named finite
    numbers, writes only readable PNGs into ``out_dir``, and ``analyze_many`` on two models gives
    each model's metrics under its name. Returns the metrics."""
    import tempfile
    from pathlib import Path

    tokenizer = tokenizer or ByteTokenizer()
    model = model or tiny_model(tokenizer.vocab_size)
    model.eval()
    texts = list(texts or ["The quick brown fox jumps over the lazy dog.", "She read the letter twice."])
    with tempfile.TemporaryDirectory() as d:
        out = Path(out_dir or d)
        metrics = cfg.analyze(model, tokenizer, texts, out)
        assert isinstance(metrics, dict), "analyze must return a dict of metrics"
        json.dumps(metrics)
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                assert math.isfinite(v), f"metric {k!r} is not finite: {v}"
        for png in out.rglob("*.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png.name} is not a PNG"
        many = cfg.analyze_many({"a": (model, tokenizer), "b": (model, tokenizer)}, texts, out / "many")
        assert isinstance(many, dict) and many, "analyze_many must return a dict of metrics"
    return metrics


CHECKS = {"model": check_model, "objective": check_objective, "regularizer": check_regularizer,
          "curriculum": check_curriculum, "data_source": check_data_source, "tokenizer": check_tokenizer,
          "analyzer": check_analyzer, "generator": check_generator}
"""The conformance check of each component kind (the keys are ``kinlm_core.api.KINDS``)."""


# --- transformers exports (issue #33) ----------------------------------------------------------

_NO_KINLM = r'''
import importlib.abc, sys


class _NoKinlm(importlib.abc.MetaPathFinder):
    """Every kinlm* import fails: the export must load with torch and transformers only."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0].startswith("kinlm"):
            raise ImportError(f"{name}: kinlm is not importable in this process")
        return None


sys.meta_path.insert(0, _NoKinlm())
try:
    import kinlm_core  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("import kinlm_core worked in the process that loads the export")
'''

_LOAD_EXPORT = _NO_KINLM + r'''
import time

import torch
import transformers

args = torch.load(sys.argv[1], weights_only=True)
Auto = getattr(transformers, args["auto"])
dtype = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch.float32}
model = Auto.from_pretrained(args["dir"], trust_remote_code=True, local_files_only=True, **dtype).eval()
steps, stamps = [], []


def count(module, a, kw):
    """Tokens each forward of generate runs (1 per step where a cache is carried)."""
    x = kw.get("decoder_input_ids" if args["seq2seq"] else "input_ids")
    x = x if x is not None else (a[0] if a else None)
    steps.append(int(x.shape[1]) if x is not None else -1)


class Clock(transformers.StoppingCriteria):
    """Records when each decoding step ends; never stops generation."""

    def __call__(self, input_ids, scores, **kwargs):
        stamps.append(time.perf_counter())
        return torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)


def run(job):
    kw = dict(job.get("kwargs") or {})
    ids = job["ids"]
    if job["do"] == "logits":
        return {"logits": model(input_ids=ids, **kw).logits.float()}
    gc = model.generation_config  # always max_new_tokens, as kinlm's greedy tokens without an end id
    gc.eos_token_id = None
    kw.setdefault("attention_mask", torch.ones_like(ids))
    kw.setdefault("pad_token_id", gc.pad_token_id if gc.pad_token_id is not None else 0)
    steps.clear()
    stamps.clear()
    n = job["max_new_tokens"]
    out = model.generate(ids, max_new_tokens=n, do_sample=False, num_beams=1,
                         stopping_criteria=transformers.StoppingCriteriaList([Clock()]), **kw)
    per_token = sorted(b - a for a, b in zip(stamps, stamps[1:]))  # after the prefill: one token each
    return {"tokens": out, "steps": list(steps),
            "seconds_per_token": per_token[len(per_token) // 2] if per_token else None}


model.register_forward_pre_hook(count, with_kwargs=True)
results = []
with torch.no_grad():
    for job in args["jobs"]:
        try:
            results.append(run(job))
        except ValueError as e:  # a refusal the caller may expect (e.g. left padding)
            results.append({"error": str(e)})
assert not [m for m in sys.modules if m.split(".")[0].startswith("kinlm")], "a kinlm module was imported"
torch.save({"results": results, "class": type(model).__name__, "transformers": transformers.__version__},
           args["out"])
'''


def load_export_without_kinlm(folder, prompt_ids, max_new_tokens: int = 8, seq2seq: bool = False,
                              decoder_input_ids=None, timeout: int = 300, python: str | None = None,
                              jobs=()) -> dict:
    """Load a transformers export in a subprocess where every ``kinlm*`` import fails (a meta-path
    blocker installed first; the subprocess asserts ``import kinlm_core`` raises ImportError), with
    ``trust_remote_code=True``; returns {"logits": (B, T, V) float32, "tokens": greedy ``generate``
    output (B, T + max_new_tokens), "steps": the number of tokens each forward call of that
    ``generate`` ran (1 per step after the prompt where a cache is carried), "class": the class
    transformers built, "transformers": its version, "jobs": the results of ``jobs``}.

    ``jobs``: more work for the same process (one start for all of a test's checks), each a dict
    ``{"do": "logits" | "generate", "ids": LongTensor, "kwargs": {...}, "max_new_tokens": n}``
    (``kwargs`` go to the forward or to ``generate``, tensors allowed: a steering vector, an
    attention_mask). A logits job gives ``{"logits"}``; a generate job (greedy, exactly n new tokens)
    ``{"tokens", "steps", "seconds_per_token"}`` (the median time of one new token after the prefill);
    a job the model refuses with ValueError gives ``{"error": message}``.
    ``python``: the interpreter (e.g. a virtual environment with another transformers; default
    ``$KINLM_HF_EXPORT_PYTHON``, else this one)."""
    import os
    import tempfile
    from pathlib import Path

    import torch

    ids = torch.as_tensor(prompt_ids, dtype=torch.long)
    own = [{"do": "logits", "ids": ids, "kwargs": {} if not seq2seq else
            {"decoder_input_ids": torch.as_tensor(decoder_input_ids, dtype=torch.long)}},
           {"do": "generate", "ids": ids, "max_new_tokens": max_new_tokens}]
    with tempfile.TemporaryDirectory(prefix="kinlm-hf-") as tmp:
        args = {"dir": str(folder), "seq2seq": seq2seq, "jobs": own + list(jobs),
                "auto": "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM",
                "out": str(Path(tmp) / "out.pt")}
        torch.save(args, Path(tmp) / "args.pt")
        (Path(tmp) / "load.py").write_text(_LOAD_EXPORT)
        env = {**os.environ, "HF_MODULES_CACHE": str(Path(tmp) / "modules"), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        env.pop("PYTHONPATH", None)
        python = python or os.environ.get("KINLM_HF_EXPORT_PYTHON") or sys.executable
        r = subprocess.run([python, "-I", str(Path(tmp) / "load.py"), str(Path(tmp) / "args.pt")],
                           capture_output=True, text=True, timeout=timeout, cwd=tmp, env=env)
        assert r.returncode == 0, f"loading the export {folder} without kinlm failed:\n{r.stderr.strip()[-3000:]}"
        got = torch.load(args["out"], weights_only=True)
    first, second, *rest = got["results"]
    for res in (first, second):
        assert "error" not in res, f"the export {folder} refused kinlm's check: {res.get('error')}"
    return {"logits": first["logits"], "tokens": second["tokens"], "steps": second["steps"], "class": got["class"],
            "transformers": got["transformers"], "jobs": rest}


BRIEFLY = ("train.max_steps=3", "eval.every=3", "eval.batches=1", "generate=[]", "analyzers=[]",
           "train.batch_size=2", "train.log_every=1", "train.checkpoint_every=3")
"""The overrides :func:`train_briefly` puts before the caller's: three steps, batch 2, one eval batch,
no samples, no analyzers."""


def train_briefly(spec_path, run_dir, *overrides: str):
    """Train a spec for a few steps through the engine (what ``kinlm run`` does, with :data:`BRIEFLY`
    and then ``overrides``) into ``run_dir`` and return :func:`kinlm_core.load_run` of it (``.model``
    on the CPU, ``.tokenizer``, ``.spec``): a trained model of a spec's kind for tests such as
    :func:`check_hf_export`. ``$KINLM_CACHE`` defaults to ``run_dir``/../cache meanwhile."""
    import os
    from pathlib import Path

    from . import load_run, load_spec, train

    run_dir = Path(run_dir)
    spec = load_spec(spec_path, [*BRIEFLY, *overrides])
    had = "KINLM_CACHE" in os.environ
    os.environ.setdefault("KINLM_CACHE", str(run_dir.parent / "cache"))
    try:
        result = train(spec, run_dir, log=lambda line: None)
    finally:
        if not had:
            del os.environ["KINLM_CACHE"]
    assert result.get("status") == "finished", f"{spec_path}: the run did not finish: {result}"
    return load_run(run_dir, device="cpu")


def greedy_tokens(model, ids, max_new_tokens: int, vocab_size: int | None = None, model_kwargs=None):
    """kinlm's own greedy continuation of ``ids`` (B, T): its sampler at temperature 0 (through the
    model's ``decode`` when it has one) -> (B, T + max_new_tokens)."""
    from types import SimpleNamespace

    from .sampling import generate_ids

    opts = SimpleNamespace(temperature=0.0, top_k=None, top_p=None, seed=0, max_new_tokens=max_new_tokens)
    return generate_ids(model, ids, opts, vocab_size=vocab_size, model_kwargs=model_kwargs)


def kinlm_seconds_per_token(model, ids, n: int, vocab_size: int | None = None) -> float:
    """kinlm's greedy decoding of ``n`` tokens after ``ids`` (its sampler's Decoder), timed as
    :func:`load_export_without_kinlm` times ``generate``: the median time of one new token after the
    prefill. Compare the two to state an export's speed against kinlm's."""
    import time

    import torch

    from .sampling import Decoder

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


def check_hf_export(model, tokenizer: Tokenizer, tmp_path, *, atol: float = 1e-5, prompt_ids=None,
                    max_new_tokens: int = 8, spec=None, python: str | None = None, jobs=()) -> dict:
    """Export ``model`` through the core (:func:`kinlm_core.engine.export.export_final`) into
    ``tmp_path``/export, load it with transformers (``trust_remote_code=True``) in a process where
    kinlm cannot be imported, and check that its logits equal kinlm's forward (float32, ``atol``, on
    the tokenizer's vocabulary) and that greedy ``generate`` gives kinlm's greedy tokens
    (:func:`kinlm_core.sampling.generate_ids` at temperature 0; an encoder-decoder: greedy decoding
    with kinlm's forward from the decoder start id). ``python``: the interpreter that loads the export
    (:func:`load_export_without_kinlm`). Returns what the subprocess returned plus ``"folder"`` and
    ``"message"`` (export_final's line)."""
    from pathlib import Path

    import torch

    from .engine.export import export_final

    folder = Path(tmp_path) / "export"
    model = model.float().eval()
    message = export_final(model, spec, tokenizer, folder)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else None
    assert config is not None, f"the export is not a transformers folder: {message}"
    seq2seq = bool(config.get("is_encoder_decoder"))
    V = tokenizer.vocab_size
    if prompt_ids is None:
        g = torch.Generator().manual_seed(0)
        prompt_ids = torch.randint(0, V, (2, 12), generator=g).tolist()
    ids = torch.as_tensor(prompt_ids)
    start = config.get("decoder_start_token_id", config.get("pad_token_id", 0)) if seq2seq else None
    dec = torch.cat([torch.full((ids.size(0), 1), start if start is not None else 0), ids[:, :-1]], 1) if seq2seq \
        else None
    got = load_export_without_kinlm(folder, ids.tolist(), max_new_tokens, seq2seq,
                                    None if dec is None else dec.tolist(), python=python, jobs=jobs)
    with torch.no_grad():
        ours = (model(ids, decoder_input_ids=dec) if seq2seq else model(ids)).logits[..., :V].float()
        theirs = got["logits"][..., :V]
        assert theirs.shape == ours.shape, f"logits shape {tuple(theirs.shape)} != kinlm's {tuple(ours.shape)}"
        diff = (theirs - ours).abs().max().item()
        assert diff <= atol, f"exported logits differ from kinlm's by {diff:.3g} (> {atol})"
        if seq2seq:
            out = torch.full((ids.size(0), 1), start if start is not None else 0)
            for _ in range(max_new_tokens):
                nxt = model(ids, decoder_input_ids=out).logits[:, -1, :V].argmax(-1, keepdim=True)
                out = torch.cat([out, nxt], 1)
            greedy = out
        else:
            greedy = greedy_tokens(model, ids, max_new_tokens, V)
    tokens = got["tokens"]
    assert tokens.tolist() == greedy.tolist(), (f"greedy generate through transformers {tokens.tolist()} != "
                                                f"kinlm's {greedy.tolist()}")
    return {**got, "folder": folder, "message": message}


def check_export_generate_time(model, tokenizer: Tokenizer, tmp_path, *, prefixes=(16, 256), new_tokens: int = 32,
                               growth: float = 2.0, spec=None) -> dict:
    """For a model whose export carries an O(1) state (a recurrent model): :func:`check_hf_export`, plus
    in the same process a greedy ``generate`` of ``new_tokens`` after a prompt of each length in
    ``prefixes``; each step after the prefill must run one token (the state travels through
    transformers' cache, the prefix is not rerun) and the time per generated token at the longest
    prefix must stay under ``growth`` times the shortest's. Returns check_hf_export's dict plus
    ``"timing"``: {prefix: (seconds per token through transformers, through kinlm's own decoding
    (:func:`kinlm_seconds_per_token`))} and ``"summary"``, a line with both and their ratio per
    prefix (what a README states)."""
    import torch

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, tokenizer.vocab_size, (1, n), generator=g) for n in prefixes]
    jobs = [{"do": "generate", "ids": ids, "max_new_tokens": new_tokens} for ids in prompts]
    got = check_hf_export(model, tokenizer, tmp_path, spec=spec, jobs=jobs)
    for n, res in zip(prefixes, got["jobs"]):
        assert res["steps"] == [n] + [1] * (new_tokens - 1), \
            f"generate after a {n}-token prompt ran {res['steps']} tokens per step; the state is not carried"
    first, last = got["jobs"][0]["seconds_per_token"], got["jobs"][-1]["seconds_per_token"]
    assert last < growth * first, (f"per-token time grew with the prefix: {first * 1e3:.2f} ms at {prefixes[0]}, "
                                   f"{last * 1e3:.2f} ms at {prefixes[-1]}")
    timing = {n: (res["seconds_per_token"], kinlm_seconds_per_token(model, ids, new_tokens, tokenizer.vocab_size))
              for n, ids, res in zip(prefixes, prompts, got["jobs"])}
    summary = "; ".join(f"prefix {n}: transformers {t * 1e3:.3f} ms/token, kinlm {k * 1e3:.3f} ms, ratio {t / k:.2f}"
                        for n, (t, k) in timing.items())
    return {**got, "timing": timing, "summary": summary}
