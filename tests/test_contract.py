"""The training contract piece by piece: lr schedule, parameter groups, gradient accumulation, the
objectives (causal_lm on blocks and documents, span_corruption), phases, early stopping, and a
stateful regularizer plus a model's aux_losses end to end."""

import json
import os
import signal

import numpy as np
import pytest
import torch

from helpers import fixture_site, kinlm
from kinlm_core import component
from kinlm_core.engine.optim import OptimSettings, lr_at, param_groups
from kinlm_core.engine.train import run
from kinlm_core.objectives import CausalLM, SpanCorruption, document_ids, model_inputs, noise_mask, with_sentinels
from kinlm_core.spec import SpecError, TrainConfig, validate


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def byte_tok():
    return component("tokenizer", "byte")().build(None, None)


def tiny_gpt(vocab=257, **kw):
    torch.manual_seed(0)
    return component("model", "gpt")(n_layer=1, n_head=2, d_model=32, block_size=64, **kw).build(vocab)


# --- optimizer and schedule ---------------------------------------------------------------------------


def test_lr_schedule_warmup_then_decay():
    s = OptimSettings.of(TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1, schedule="cosine"), None)
    assert [lr_at(i, s, 104) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, s, 104) == 1.0 and lr_at(54, s, 104) == pytest.approx(0.55) and lr_at(104, s, 104) == pytest.approx(0.1)
    lin = OptimSettings.of(TrainConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.0, schedule="linear"), None)
    assert [lr_at(i, lin, 4) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    const = OptimSettings.of(TrainConfig(lr=0.3, warmup_steps=0, schedule="constant"), None)
    assert lr_at(999, const, 10) == 0.3


def test_phase_optimizer_overrides():
    tc = TrainConfig(lr=1e-3, weight_decay=0.1)
    assert not OptimSettings.of(tc, {"weight_decay": 0.0}).own_schedule  # the run's schedule goes on
    s = OptimSettings.of(tc, {"lr": 2e-3, "weight_decay": 0.0})
    assert s.own_schedule and s.lr == 2e-3 and s.weight_decay == 0.0 and s.betas == tuple(tc.betas)
    with pytest.raises(ValueError, match="unknown phase optimizer setting.*momentum"):
        OptimSettings.of(tc, {"momentum": 0.9})


def test_param_groups_decay_only_trainable_matrices():
    model = tiny_gpt()
    model.blocks[0].attn.qkv.weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert id(model.blocks[0].mlp.fc.weight) in ids(decay)
    assert {id(model.wte.weight), id(model.wpe.weight), id(model.ln_f.weight), id(model.blocks[0].mlp.fc.bias)} <= ids(no_decay)
    assert id(model.blocks[0].attn.qkv.weight) not in ids(decay) | ids(no_decay)  # frozen: not optimized
    assert all(p.dim() >= 2 for p in decay["params"])


def test_decay_rules_all_and_transformers():
    """train.decay "all": every trainable parameter; "transformers": the same names as
    transformers.Trainer.get_decay_parameter_names on a GPT-2 (embeddings decayed; biases, LayerNorms not)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.trainer_pt_utils import get_parameter_names

    model = tiny_gpt()
    decay, no_decay = param_groups(model, 0.1, "all")
    assert len(decay["params"]) == len({id(p) for p in model.parameters()}) and not no_decay["params"]
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    want = set(get_parameter_names(hf, [torch.nn.LayerNorm], patterns))  # transformers' own rule
    name_of = {id(p): n for n, p in hf.named_parameters()}
    decay, no_decay = param_groups(hf, 0.01, "transformers")
    got = {name_of[id(p)] for p in decay["params"]}
    assert got == want & set(name_of.values())
    assert "transformer.wte.weight" in got and "transformer.h.0.ln_1.weight" not in got
    assert {name_of[id(p)] for p in no_decay["params"]} == set(name_of.values()) - got
    tc = TrainConfig(decay="transformers")
    assert OptimSettings.of(tc, None).decay == "transformers" and OptimSettings.of(tc, {"decay": "all"}).decay == "all"
    with pytest.raises(ValueError, match="decay 'every': use one of matrices, all, transformers"):
        OptimSettings.of(tc, {"decay": "every"})


def test_grad_accumulation_equals_the_larger_batch(tmp_path, tiny_spec):
    """batch 2 x accumulation 2 draws the same rows as batch 4 and averages the same loss."""
    tiny_spec["train"].update(max_steps=3)
    tiny_spec["eval"]["every"] = 3
    big = run(validate(tiny_spec), tmp_path / "big", log=lambda m: None)
    tiny_spec["train"].update(batch_size=2, grad_accum=2)
    tiny_spec["eval"]["batches"] = 4  # the same eval examples (batches x batch_size)
    acc = run(validate(tiny_spec), tmp_path / "acc", log=lambda m: None)
    assert acc["eval/loss"] == pytest.approx(big["eval/loss"], rel=1e-5)
    assert acc["tokens_seen"] == big["tokens_seen"] == 3 * 4 * 32


# --- objectives ------------------------------------------------------------------------------------------


def test_causal_lm_blocks_shift_labels_and_mark_documents():
    obj = CausalLM(byte_tok())
    rows = np.array([[72, 105, 256, 79, 107], [1, 2, 3, 4, 5]])
    b = obj.collate(rows, None)
    assert b["input_ids"].tolist()[0] == [72, 105, 256, 79] and b["labels"].tolist()[0] == [105, 256, 79, 107]
    assert b["document_ids"].tolist() == [[0, 0, 0, 1], [0, 0, 0, 0]]  # the EOS belongs to the document it ends
    assert document_ids(torch.tensor([[256, 256, 5]]), 256).tolist() == [[0, 1, 2]]


def test_causal_lm_documents_padding_changes_no_loss():
    tok = byte_tok()
    obj, model = CausalLM(tok), tiny_gpt().eval()
    docs = [np.array(tok.encode("a short one") + [256]), np.array(tok.encode("a noticeably longer document") + [256])]
    padded = obj.collate(docs, None)
    assert padded["attention_mask"].sum().item() == sum(len(d) - 1 for d in docs)
    assert (padded["labels"][0, len(docs[0]) - 1:] == -100).all()
    with torch.no_grad():
        together = obj.loss(model, padded)
        alone = [obj.loss(model, obj.collate([d], None)) for d in docs]
    assert together.targets == sum(r.targets for r in alone)
    assert float(together.nats) == pytest.approx(sum(float(r.nats) for r in alone), rel=1e-5)


def test_model_inputs_are_the_keys_forward_names():
    batch = {"input_ids": 1, "labels": 2, "attention_mask": 3, "document_ids": 4, "target_bytes": 5}
    assert set(model_inputs(tiny_gpt(), batch)) == {"input_ids"}

    class Wide(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, **kw):
            pass

    assert set(model_inputs(Wide(), batch)) == {"input_ids", "attention_mask", "document_ids"}


def test_noise_mask_density_and_span_count():
    rng = np.random.default_rng(0)
    for length in (20, 101, 512):
        m = noise_mask(length, 0.15, 3.0, rng)
        starts = m & ~np.concatenate([[False], m[:-1]])
        assert m.sum() == round(length * 0.15) and starts.sum() == max(1, round(round(length * 0.15) / 3))
        assert not m[0]  # the text starts with a kept span


def test_span_corruption_inputs_and_targets_partition_the_text():
    tok = with_sentinels(byte_tok(), 100)
    assert tok.vocab_size == 257 + 100 + 1 and tok.pad_id == 357 and tok.sentinel_ids[0] == 257
    obj = SpanCorruption(tok, 0.15, 3.0)
    text = np.array(byte_tok().encode("It was the best of times, it was the worst of times, it was the age of wisdom"))
    inp, tgt, nbytes = obj.corrupt(text, np.random.default_rng(3))
    sent = set(tok.sentinel_ids)
    in_s = [t for t in inp if t in sent]
    tg_s = [t for t in tgt if t in sent]
    assert in_s == tg_s == list(tok.sentinel_ids[:len(in_s)]) and in_s  # each span once, in order
    # put the spans back: the original text, every token exactly once
    spans, cur = {}, None
    for t in tgt[:-1]:
        if t in sent:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    rebuilt = [x for t in inp[:-1] for x in (spans[t] if t in sent else [t])]
    assert rebuilt == text.tolist()
    assert nbytes == sum(len(v) for v in spans.values())  # bytes of the masked tokens (1 per byte token)
    b = obj.collate([text, text[:30]], np.random.default_rng(0))
    assert b["decoder_input_ids"][:, 0].tolist() == [tok.pad_id] * 2
    assert torch.equal(b["decoder_input_ids"][0, 1:], b["labels"][0, :-1].clamp(min=0))
    assert (b["labels"][b["decoder_attention_mask"] == 0] == -100).all()


def test_span_corruption_refuses_a_decoder_only_model():
    tok = with_sentinels(byte_tok(), 100)
    obj = SpanCorruption(tok, 0.15, 3.0)
    batch = obj.collate([np.arange(40) % 200], np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs a seq2seq model.*GPT"):
        obj.loss(tiny_gpt(vocab=tok.vocab_size), batch)


# --- phases and early stopping -----------------------------------------------------------------------------


def test_phases_curriculum_switches_trainable_lr_and_objective_data(tmp_path, tiny_spec):
    tiny_spec["curriculum"] = {"type": "phases", "phases": [
        {"name": "warm", "steps": 2, "trainable": ["blocks"], "optim": {"lr": 1e-2, "schedule": "constant"}},
        {"name": "docs", "epochs": 0.005, "order": "sequential", "objective": {"type": "causal_lm", "examples": "documents"}},
        {"name": "rest"},
    ]}
    tiny_spec["train"].update(max_steps=8, checkpoint_every=2, log_every=1)
    rd = tmp_path / "run"
    out = run(validate(tiny_spec), rd, log=lambda m: None)
    ms = [m for m in metrics(rd) if "train/phase" in m]
    phases = [m["train/phase"] for m in ms]
    # 1,983 document examples here: 0.005 epochs at batch 4 = ceil(2.48) = 3 steps
    assert phases == [0, 0, 1, 1, 1, 2, 2, 2]
    assert ms[0]["train/lr"] == ms[1]["train/lr"] == 1e-2
    assert out["step"] == 8 and out["status"] == "finished"


def test_phase_spec_errors_name_the_field(tiny_spec):
    tiny_spec["curriculum"] = {"type": "phases", "phases": [
        {"name": "a", "steps": 2, "epochs": 1}, {"name": "b", "objective": {"type": "span_corruptoin"}},
        {"name": "c", "optim": {"lr": -1}}]}
    with pytest.raises(SpecError) as e:
        validate(tiny_spec, "s.json")
    text = "\n".join(e.value.problems)
    assert "curriculum.phases[0]" in text and "steps or epochs, not both" in text
    assert "curriculum.phases[1].objective" in text and "did you mean 'span_corruption'" in text
    assert "curriculum.phases[2].optim.lr" in text


def test_early_stopping_on_eval_loss(tmp_path, tiny_spec):
    tiny_spec["train"].update(max_steps=20, lr=1e-9, warmup_steps=0)
    tiny_spec["eval"].update(every=1, early_stop_patience=2, early_stop_min_delta=1e-3)
    out = run(validate(tiny_spec), tmp_path / "run", log=lambda m: None)
    assert out["early_stopped"] and out["step"] == 3 and out["status"] == "finished"


# --- a stateful regularizer and a model's aux losses, end to end ---------------------------------------------


@pytest.mark.slow
def test_regularizer_aux_loss_and_component_state_survive_sigkill(tmp_path, tiny_spec):
    site = fixture_site(tmp_path / "site", "kinlm_fixture_reg", killer=True)
    env = {"PYTHONPATH": str(site), "KINLM_CACHE": os.environ["KINLM_CACHE"]}
    tiny_spec["model"] = {"type": "fixture_aux_gpt", "aux_weight": 0.5, "gpt": tiny_spec["model"] | {}}
    tiny_spec["model"]["gpt"].pop("type")
    tiny_spec["regularizers"] = [{"type": "fixture_counting_l2", "weight": 0.1}]
    tiny_spec["train"]["log_every"] = 1
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(tiny_spec))
    rd = tmp_path / "run"
    r = kinlm("run", str(spec_file), "--run-dir", str(rd), env={**env, "KINLM_TEST_KILL_AT": "5"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    r = kinlm("run", str(spec_file), "--resume", str(rd), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    for m in (m for m in metrics(rd) if "train/loss" in m):
        expected = m["train/token_loss"] + m["aux/logit_mean_sq"] + 0.1 * m["reg/hidden_l2"]
        assert m["train/loss"] == pytest.approx(expected, rel=1e-5)
    state = torch.load(rd / "checkpoints" / "step_0000006" / "state.pt", weights_only=True)
    reg = state["components"]["regularizer/0"]
    assert reg["calls"] == 6  # 3 before the checkpoint it resumed from, 3 after: state restored, not reset
    assert reg["keys"] == ["document_ids", "input_ids", "labels"] and reg["eos"] == 256


def test_the_run_ends_with_its_last_phase_and_resume_has_nothing_to_do(tmp_path, tiny_spec):
    tiny_spec["curriculum"] = {"type": "phases", "phases": [{"name": "a", "steps": 2}, {"name": "b", "steps": 2}]}
    tiny_spec["train"]["max_steps"] = 50
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(tiny_spec))
    rd = tmp_path / "run"
    out = run(validate(tiny_spec), rd, log=lambda m: None)
    assert out["step"] == 4 and out["curriculum_done"] and out["status"] == "finished"
    before = (rd / "result.json").read_text()
    r = kinlm("run", str(spec_file), "--resume", str(rd))
    assert r.returncode == 0 and "nothing to do" in r.stderr and (rd / "result.json").read_text() == before


def test_a_phase_with_the_same_parameters_and_settings_keeps_the_optimizer(tmp_path, tiny_spec):
    from kinlm_core.engine.train import Trainer

    tiny_spec["curriculum"] = {"type": "phases", "phases": [
        {"name": "a", "steps": 2}, {"name": "b", "steps": 2, "order": "sequential"},
        {"name": "c", "steps": 2, "optim": {"weight_decay": 0.0}}, {"name": "d", "trainable": ["blocks"]}]}
    t = Trainer(validate(tiny_spec), tmp_path / "run", log=lambda m: None)
    t.setup()
    opts = [t.opt]
    for i in range(1, 4):
        t._enter_phase(i)
        opts.append(t.opt)
    assert opts[1] is opts[0]  # a -> b: same parameters and settings: Adam's moments carry on
    assert opts[2] is not opts[1] and opts[3] is not opts[2]  # other settings, other parameters: a fresh AdamW
    trained = {id(p) for g in opts[3].param_groups for p in g["params"]}
    assert trained == {id(p) for n, p in t.model.named_parameters() if n.startswith("blocks")}
    t.logger.close()


@pytest.mark.slow
def test_regularizer_metrics_are_logged_not_added(tmp_path, tiny_spec):
    site = tmp_path / "site"
    from helpers import make_dist

    make_dist(site, "kinlm-metric-reg", "kinlm_metric_reg", """
from typing import Literal
from kinlm_core import RegularizerConfig, hookimpl

class MetricReg(RegularizerConfig):
    '''A term plus a per-layer value that is only logged.'''
    type: Literal["metric_reg"] = "metric_reg"
    needs_hidden_states = True

    def build(self):
        def fn(output, batch, step):
            h = output.hidden_states
            return {"last": h[-1].pow(2).mean(), "metrics/first_layer": 1000.0 * h[1].pow(2).mean()}
        return fn

@hookimpl
def kinlm_register_regularizers():
    return [MetricReg]
""")
    tiny_spec["regularizers"] = [{"type": "metric_reg", "weight": 0.5}]
    tiny_spec["train"].update(max_steps=2, log_every=1)
    (tmp_path / "s.json").write_text(json.dumps(tiny_spec))
    rd = tmp_path / "run"
    r = kinlm("run", str(tmp_path / "s.json"), "--run-dir", str(rd),
              env={"PYTHONPATH": str(site), "KINLM_CACHE": os.environ["KINLM_CACHE"]})
    assert r.returncode == 0, r.stderr[-2000:]
    for m in (m for m in metrics(rd) if "train/loss" in m):
        assert m["metrics/first_layer"] > 10 * m["train/loss"]  # big, yet not in the loss
        assert m["train/loss"] == pytest.approx(m["train/token_loss"] + 0.5 * m["reg/last"], rel=1e-5)


def test_an_unexpected_error_is_never_reported_as_finished(tmp_path, tiny_spec, monkeypatch):
    from kinlm_core.engine.train import Trainer

    real = Trainer.standard_step

    def failing(self, pr):
        if self.step == 2:
            raise RuntimeError("disk on fire")
        return real(self, pr)

    monkeypatch.setattr(Trainer, "standard_step", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(validate(tiny_spec), tmp_path / "run", log=lambda m: None)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed: RuntimeError: disk on fire" and result["step"] == 2


def test_sample_labels_name_the_generator_and_its_options():
    from kinlm_core.engine.outputs import generator_label

    sample = component("generator", "sample")
    assert generator_label(sample(prompt="x")) == ("sample (repetition_penalty=1.0, num_samples=1, max_new_tokens=100, "
                                                   "temperature=0.8, top_k=200, stop_at_eos=True)")
    assert generator_label(sample(prompt="x", top_p=0.9, seed=3)) == (
        "sample (repetition_penalty=1.0, num_samples=1, max_new_tokens=100, temperature=0.8, top_k=200, top_p=0.9, "
        "seed=3, stop_at_eos=True)")  # every option that shaped the text; None (off) left out
