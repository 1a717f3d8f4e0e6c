"""The composition matrix (kinlm_core/composition.py): every first-party model x every wrapper and
regularizer that acts on another model. Each pair either ACTS at tiny size (the wrapped model's
logits differ from the bare model's and the wrapper's parameters get gradients; the penalty is
non-zero and has gradients) or ``kinlm validate`` refuses it with the documented reason. A pair
that runs but does nothing fails. docs/composition.md is generated from the same declarations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kinlm_core import SpecError, component
from kinlm_core.composition import COMPONENTS, FIRST_PARTY_MODELS, cell
from kinlm_core.spec import validate
from kinlm_core.testing import check_capabilities

from helpers import kinlm

ROOT = Path(__file__).resolve().parents[1]
V = 97

TINY = {
    "gpt": {"n_layer": 2, "n_head": 2, "d_model": 16, "block_size": 16},
    "llama_like": {"n_layer": 2, "n_head": 2, "d_model": 16, "block_size": 16, "dropout": 0.0},
    "hamiltonian": {"n_layer": 2, "n_head": 2, "d_model": 16, "block_size": 16},
    "context_vector": {"d_embed": 8, "d_hidden": 16, "d_context": 8, "n_layer": 2, "dropout": 0.0},
    "cvfp": {"d_model": 16, "n_layer": 2, "block_size": 16, "tie_head": True},  # untied: a zero head at init
    "t5": {"preset": "t5-tiny", "overrides": {"d_model": 16, "d_ff": 32, "d_kv": 8, "num_heads": 2,
                                              "num_layers": 1, "num_decoder_layers": 1}},
    "transformers": {"config": {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 16, "n_positions": 16}},
    "conv_attention": {"d_model": 16, "n_layer": 2, "n_head": 2, "block_size": 16},
}
WRAPPER_OPTS = {"diff_wrapper": {"init": [1.0, 0.5, 0.5], "init_std": 0.0},  # not the identity
                "vt_embeddings": {"w": 0.5}}
SPEC = {"name": "compose", "data": {"type": "embedded", "corpus": "tinyshakespeare"}}


def kind_of(name: str) -> str:
    return "regularizer" if name == "accel_penalty" else "model"


def model_spec(model: str) -> dict:
    return {"type": model, **TINY[model]}


def pair_spec(model: str, comp: str) -> dict:
    if kind_of(comp) == "model":
        return {**SPEC, "model": {"type": comp, "inner": model_spec(model), **WRAPPER_OPTS.get(comp, {})}}
    return {**SPEC, "model": model_spec(model), "regularizers": [{"type": comp}]}


def batch_for(model) -> dict:
    torch.manual_seed(1)
    ids = torch.randint(0, V, (2, 12))
    batch = {"input_ids": ids}
    if getattr(model, "is_seq2seq", False):
        batch["decoder_input_ids"] = torch.randint(0, V, (2, 7))
    return batch


def test_the_matrix_covers_every_first_party_model_and_component():
    assert set(TINY) == set(FIRST_PARTY_MODELS)
    for name in FIRST_PARTY_MODELS:
        component("model", name)  # installed
    for name in COMPONENTS:
        assert component(kind_of(name), name).requires


@pytest.mark.parametrize("comp", COMPONENTS)
@pytest.mark.parametrize("model", FIRST_PARTY_MODELS)
def test_each_pair_acts_or_is_refused(model, comp):
    comp_cls = component(kind_of(comp), comp)
    acts, text = cell(component("model", model), comp_cls)
    data = pair_spec(model, comp)
    if not acts:
        with pytest.raises(SpecError) as e:
            validate(data, "spec.json")
        [line] = e.value.problems
        need = comp_cls.requires[0]
        assert line.startswith("spec.json: ") and model in line and comp in line and "lacks it" in line \
            and need in line, line
        assert text.startswith(f"refused: lacks {need}")
        return
    spec = validate(data, "spec.json")
    torch.manual_seed(0)
    built = spec.model.build(V)
    batch = batch_for(built)
    fwd = {k: v for k, v in batch.items() if k != "input_ids"}
    if kind_of(comp) == "model":  # the wrapper changes what the inner model computes, and learns
        def grads(net):  # gradients of the inner model's parameters under a fixed loss of net's logits
            built.zero_grad()
            logits = net(batch["input_ids"], **fwd).logits
            logits.float().pow(2).mean().backward()
            return logits.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                                     for p in built.inner.parameters()]

        bare, g_bare = grads(built.inner)
        out, g_wrapped = grads(built)
        assert not torch.allclose(out, bare, atol=1e-6), f"{comp} on {model} runs but changes nothing"
        assert any(not torch.allclose(a, b) for a, b in zip(g_bare, g_wrapped)), f"{comp} on {model}: same gradients"
        own = [p for n, p in built.named_parameters() if not n.startswith("inner.")]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own), f"{comp} on {model}: its own " \
            "parameters get no gradient"
    else:  # the penalty is non-zero and moves the model's gradients
        fn = spec.regularizers[0].build()
        out = built(batch["input_ids"], output_hidden_states=True, **fwd)
        terms = fn(out, {**batch, "labels": batch.get("decoder_input_ids", batch["input_ids"])}, 0)
        penalty = terms[spec.regularizers[0].name]
        assert penalty.item() > 0, f"{comp} on {model}: zero penalty"
        penalty.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in built.parameters()), \
            f"{comp} on {model}: the penalty has no gradient"


@pytest.mark.parametrize("model", FIRST_PARTY_MODELS)
def test_every_first_party_model_keeps_its_declared_contract(model):
    check_capabilities(component("model", model).model_validate(model_spec(model)), vocab_size=V)


@pytest.mark.parametrize("model,comp", [("hamiltonian", "vt_embeddings"), ("context_vector", "vt_embeddings"),
                                        ("cvfp", "vt_embeddings"), ("cvfp", "diff_wrapper")])
def test_wrapped_recurrent_models_decode_as_they_forward(model, comp):
    """The new cells decode token by token with the logits of the full forward (memory of e_{t-1} / h_{t-1})."""
    from kinlm_core.testing import check_decoding

    torch.manual_seed(0)
    wrapped = validate(pair_spec(model, comp), "s.json").model.build(V)
    check_decoding(wrapped, torch.randint(0, V, (2, 10)), prefix=4)


def test_the_kit_catches_a_model_that_declares_what_it_lacks():
    from kinlm_core.builtins.models import GPTConfig

    class Liar(GPTConfig):
        provides = {**GPTConfig.provides, "input_embeddings": "nothing"}

        def build(self, vocab_size):
            model = super().build(vocab_size)
            model.get_input_embeddings = lambda: model.wpe  # a module that is not the token table ...
            model.wpe.register_forward_hook(lambda m, i, o: o[0])  # ... and whose output is not (B, T, C)
            return model

    with pytest.raises(AssertionError, match="not \\(B, T, C\\)"):
        check_capabilities(Liar(**TINY["gpt"]), vocab_size=V)


def test_cvfp_two_phase_refuses_regularizers_and_wrappers():
    base = {**SPEC, "model": model_spec("cvfp"), "curriculum": {"type": "cvfp_two_phase"}}
    validate(base, "s.json")
    with pytest.raises(SpecError) as e:
        validate({**base, "regularizers": [{"type": "accel_penalty"}]}, "s.json")
    assert e.value.problems == ["s.json: regularizers[0].type: accel_penalty would never act: curriculum "
                                "cvfp_two_phase applies no regularizers (its phases train with their own losses: "
                                "phase 1 fixed-point MSE + diversity on the ContextBlock's contexts, phase 2 "
                                "cross-entropy of the TokenBlock on cached contexts; train cvfp without a curriculum "
                                "(end to end) to add a regularizer)"]
    with pytest.raises(SpecError) as e:
        validate({**base, "model": {"type": "vt_embeddings", "inner": model_spec("cvfp")}}, "s.json")
    [line] = e.value.problems
    assert "curriculum.type: cvfp_two_phase needs cvfp_parts" in line and "vt_embeddings(cvfp) lacks it" in line


THIRD_PARTY = """
from typing import ClassVar, Literal
from kinlm_core import hookimpl, RegularizerConfig
from kinlm_core.builtins.models import GPTConfig

class NeedyConfig(RegularizerConfig):
    \"\"\"Needs attention maps.\"\"\"
    type: Literal["needy"] = "needy"
    requires: ClassVar[tuple[str, ...]] = ("attention_maps",)

class SeeingConfig(GPTConfig):
    \"\"\"A gpt that says it offers attention maps.\"\"\"
    type: Literal["seeing"] = "seeing"
    provides: ClassVar[dict[str, str]] = {**GPTConfig.provides, "attention_maps": "its attention weights"}

@hookimpl
def kinlm_register_regularizers():
    return [NeedyConfig]

@hookimpl
def kinlm_register_models():
    return [SeeingConfig]
"""


@pytest.mark.slow
def test_third_party_components_and_models_join_the_check(tmp_path):
    """An installed plugin's regularizer declares what it needs; gpt lacks it (refused, exit 2), the
    plugin's own model offers it (valid)."""
    import os

    from helpers import make_dist

    make_dist(tmp_path / "site", "kinlm-needy", "kinlm_needy", THIRD_PARTY)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    spec = tmp_path / "s.json"
    for model, code in (("gpt", 2), ("seeing", 0)):
        spec.write_text(json.dumps({**SPEC, "model": {"type": model, **TINY["gpt"]}, "regularizers": [{"type": "needy"}]}))
        r = kinlm("validate", str(spec), env=env, cwd=tmp_path)
        assert r.returncode == code, r.stderr
    spec.write_text(json.dumps({**SPEC, "model": model_spec("gpt"), "regularizers": [{"type": "needy"}]}))
    r = kinlm("validate", str(spec), env=env, cwd=tmp_path)
    assert r.stderr.strip() == (f"{spec}: regularizers[0].type: needy needs attention_maps of the model, and gpt "
                                "lacks it (attention_maps: not a contract capability; a model offers it by naming it in its config's "
                                "provides)")


def test_nested_wrappers_pass_the_contract_on():
    spec = validate({**SPEC, "model": {"type": "vt_embeddings", "inner": {
        "type": "diff_wrapper", "inner": model_spec("hamiltonian")}}}, "s.json")
    torch.manual_seed(0)
    m = spec.model.build(V)
    assert m.get_input_embeddings() is m.inner.inner.embed.q_emb
    with pytest.raises(SpecError, match=r"s.json: model.type: diff_wrapper needs blocks of the model, and "
                                        r"vt_embeddings\(context_vector\) lacks it: its FNN layers"):
        validate({**SPEC, "model": {"type": "diff_wrapper", "inner": {
            "type": "vt_embeddings", "inner": model_spec("context_vector")}}}, "s.json")


@pytest.mark.slow
def test_validate_and_run_refuse_before_writing(tmp_path):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({**pair_spec("context_vector", "diff_wrapper"), "train": {"max_steps": 1}}))
    r = kinlm("validate", str(spec), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"{spec}: model.type: diff_wrapper needs blocks of the model, and context_vector lacks it: its FNN layers run "
        "one token at a time inside the recurrence (a TorchScript loop on their weights), so there is no (B, T, C) "
        "block output to mix over time (blocks: block lists whose modules map the whole sequence's states (B, T, C) "
        "-> (B, T, C) once per forward (`block_lists()`, or ModuleLists named blocks, layers or h))"]
    r = kinlm("run", str(spec), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and "diff_wrapper needs blocks" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_docs_table_is_generated_from_the_declarations():
    got = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_composition_doc.py")], capture_output=True,
                         text=True, check=True).stdout
    assert (ROOT / "docs" / "composition.md").read_text() == got, \
        "docs/composition.md is out of date: python tools/gen_composition_doc.py > docs/composition.md"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["hamiltonian", "context_vector", "cvfp"])
def test_vt_embeddings_trains_on_the_physics_inspired_models(tmp_path, model):
    """A tiny `kinlm run` of VT embeddings around each model the issue found failing (3 steps)."""
    from helpers import TINY as RUN

    spec = tmp_path / "vt.json"
    spec.write_text(json.dumps({**RUN, "name": f"vt-{model}", "model": {
        "type": "vt_embeddings", "w": 0.2, "inner": model_spec(model)},
        "train": {**RUN["train"], "block_size": 16, "checkpoint_every": 3}, "eval": {"every": 3, "batches": 1}}))
    r = kinlm("run", str(spec), "--set", "train.max_steps=3", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [json.loads(line).get("step") for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 3
