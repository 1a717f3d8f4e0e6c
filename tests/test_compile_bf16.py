"""The paths a GPU user takes first, run on the CPU: `train.compile: true` and `train.precision:
"bf16"` (CPU autocast) for every first-party model, each against the eager fp32 run of the same
spec; a model that cannot compile falls back to eager with one line; generation and BLiMP scoring
under bf16.

Tolerances (eval loss after 3 steps of a tiny model, nats): compiled by TorchDynamo with the
``eager`` backend 1e-5 (the same kernels run: only the capture is tested); compiled by the default
inductor backend 1e-2 (fused kernels round differently); bf16 autocast 2e-2. Compiling with
inductor takes 30 s to several minutes per model on 2 CPU cores, so the every-model inductor test
is opt-in (``KINLM_TEST_INDUCTOR=1``) and the gpt one is marked slow.
"""

import copy
import functools
import json
import os

import pytest
import torch

import kinlm_core
from helpers import kinlm
from kinlm_core.engine.runtime import CompiledOrEager, compile_model
from kinlm_core.spec import validate

GPT = {"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 32}
MODELS = {
    "gpt": GPT,
    "transformers-llama": {"type": "transformers", "config": {
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}},
    "transformers-t5": {"type": "transformers", "config": {
        "model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 16, "num_layers": 1, "num_decoder_layers": 1,
        "num_heads": 2}},
    "hamiltonian": {"type": "hamiltonian", "n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 32},
    "context_vector": {"type": "context_vector", "d_embed": 16, "d_hidden": 32, "n_layer": 1, "d_context": 16},
    "cvfp": {"type": "cvfp", "d_model": 32, "n_layer": 1, "block_size": 32},
    "llama_like": {"type": "llama_like", "n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 32},
    "diff_wrapper": {"type": "diff_wrapper", "inner": GPT},
    "vt_embeddings": {"type": "vt_embeddings", "inner": GPT},
    "t5": {"type": "t5", "preset": "t5-tiny", "overrides": {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_layers": 1,
                                                            "num_decoder_layers": 1, "num_heads": 2}},
}
SEQ2SEQ = {"transformers-t5", "t5"}
BASE = {"name": "cb", "seed": 1,
        "data": {"type": "embedded", "corpus": "tinyshakespeare", "max_docs": 150},
        "tokenizer": {"type": "byte"},
        "train": {"max_steps": 3, "batch_size": 4, "block_size": 32, "lr": 3e-3, "warmup_steps": 1,
                  "checkpoint_every": 100, "log_every": 1},
        "eval": {"every": 3, "batches": 2}, "generate": []}


def spec_for(name: str, **train) -> dict:
    s = copy.deepcopy(BASE)
    s["model"] = copy.deepcopy(MODELS[name])
    if name in SEQ2SEQ:
        s["objective"] = {"type": "span_corruption"}
    s["train"].update(train)
    return s


def train(run_dir, spec: dict):
    lines = []
    result = kinlm_core.train(validate(spec), run_dir, progress=False, log=lines.append)
    assert result["status"] == "finished", result
    return result, lines


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    """name -> (eval loss, run dir) of the eager fp32 run, trained on first use."""
    root, done = tmp_path_factory.mktemp("eager"), {}

    def get(name):
        if name not in done:
            r, _ = train(root / name, spec_for(name))
            done[name] = (r["eval/loss"], root / name)
        return done[name]
    return get


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "kinlm-cache"))
    torch._dynamo.reset()


def with_backend(monkeypatch, backend):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_run_matches_eager_for_every_model(name, eager, tmp_path, monkeypatch):
    """TorchDynamo captures every model's forward (the inputs it takes are read through the
    compiled wrapper) and the run's loss is the eager one."""
    want, _ = eager(name)
    with_backend(monkeypatch, "eager")
    r, lines = train(tmp_path / "run", spec_for(name, compile=True))
    assert not [x for x in lines if "cannot be compiled" in x], lines
    assert abs(r["eval/loss"] - want) < 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_run_matches_fp32_for_every_model(name, eager, tmp_path):
    want, _ = eager(name)
    r, _ = train(tmp_path / "run", spec_for(name, precision="bf16"))
    assert abs(r["eval/loss"] - want) < 2e-2, (r["eval/loss"], want)


@pytest.mark.slow
def test_kinlm_run_compiles_gpt_with_inductor(eager, tmp_path):
    """The command of the issue, `kinlm run SPEC --set train.compile=true`, with torch's default
    backend (inductor: generated C++ on the CPU)."""
    want, _ = eager("gpt")
    (tmp_path / "cb.json").write_text(json.dumps(spec_for("gpt")))
    r = kinlm("run", "cb.json", "--set", "train.compile=true", "--run-dir", "run", "--no-progress", cwd=tmp_path,
              env={"KINLM_CACHE": os.environ["KINLM_CACHE"]}, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "cannot be compiled" not in r.stdout + r.stderr
    got = json.loads((tmp_path / "run" / "result.json").read_text())["eval/loss"]
    assert abs(got - want) < 1e-2, (got, want)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KINLM_TEST_INDUCTOR") != "1", reason="minutes per model: KINLM_TEST_INDUCTOR=1")
@pytest.mark.parametrize("name", list(MODELS))
def test_inductor_run_matches_eager_for_every_model(name, eager, tmp_path):
    want, _ = eager(name)
    r, lines = train(tmp_path / "run", spec_for(name, compile=True))
    assert abs(r["eval/loss"] - want) < 1e-2, (r["eval/loss"], want, [x for x in lines if "compile" in x])


# --- a model that cannot compile -----------------------------------------------------------------


def failing_backend(gm, example_inputs):
    raise RuntimeError("this backend cannot compile anything\nsecond line of the compiler's story")


@pytest.mark.slow
def test_a_model_that_cannot_compile_trains_eagerly_with_one_line(eager, tmp_path, monkeypatch):
    """The compiler fails at the first call: one line names the model and the error, the run goes
    on eagerly and its loss is the eager run's exactly (the failed call's dropout draws are
    replayed). gpt with dropout, so a consumed random draw would show."""
    name = "gpt"
    spec = spec_for(name)
    spec["model"]["dropout"] = 0.1
    want, _ = train(tmp_path / "eager", spec)
    with_backend(monkeypatch, failing_backend)
    spec["train"]["compile"] = True
    r, lines = train(tmp_path / "run", spec)
    notes = [x for x in lines if "cannot be compiled" in x]
    assert len(notes) == 1 and "\n" not in notes[0], lines
    assert notes[0].startswith("train.compile: GPT cannot be compiled (")
    assert "this backend cannot compile anything" in notes[0] and notes[0].endswith("training eagerly instead")
    assert r["eval/loss"] == want["eval/loss"]


def test_a_compiled_backward_that_fails_falls_back_before_it_is_used():
    """The forward compiles, the backward compiler fails: the first call's trial backward finds it,
    the call is answered eagerly, and the gradients are the eager ones."""
    from torch._dynamo.backends.common import aot_autograd

    def bad_backward(gm, example_inputs):
        raise RuntimeError("no backward today")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 4)
    model(x).square().sum().backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    notes = []
    wrapped = compile_model(model, True, notes.append,
                            backend=aot_autograd(fw_compiler=lambda gm, ex: gm, bw_compiler=bad_backward))
    assert isinstance(wrapped, CompiledOrEager) and wrapped.is_compiled
    wrapped(x).square().sum().backward()
    assert not wrapped.is_compiled and len(notes) == 1 and "no backward today" in notes[0]
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), want))


def test_an_error_of_the_model_itself_is_raised_not_hidden():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x).view(-1, 3)  # 2 x 4 = 8 values: not a multiple of 3

    notes = []
    wrapped = compile_model(Broken(), True, notes.append, backend="eager")
    with pytest.raises(RuntimeError, match="invalid for input of size 8"):
        wrapped(torch.randn(2, 4))
    assert notes == []


def test_compile_off_returns_the_model_and_the_wrapper_reads_through():
    model = torch.nn.Linear(3, 2)
    assert compile_model(model, False) is model
    wrapped = compile_model(model, True, backend="eager")
    assert wrapped._orig_mod is model and wrapped.weight is model.weight and wrapped.in_features == 3
    x = torch.randn(5, 3)
    assert torch.equal(wrapped(x), model(x))


# --- generation and BLiMP under bf16 ---------------------------------------------------------------

DECODERS = [n for n in MODELS if n not in SEQ2SEQ]


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_generation_under_bf16_picks_fp32_near_best_tokens(name, eager):
    """Greedy decoding (the model's own decoding path: KV cache or recurrent state) inside a bf16
    autocast: every token it picks is within 0.1 nats of the fp32 model's best at that position."""
    from kinlm_core.builtins.generators import SampleConfig
    from kinlm_core.sampling import generate_ids, prompt_ids

    _, run_dir = eager(name)
    loaded = kinlm_core.load_run(run_dir, device="cpu")
    model, tok = loaded.model.eval(), loaded.tokenizer
    ids = prompt_ids(tok, "ROMEO:", "cpu")
    opts = SampleConfig(prompt="ROMEO:", temperature=0.0, max_new_tokens=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate_ids(model, ids, opts, vocab_size=tok.vocab_size)
    assert out.shape == (1, ids.size(1) + 8)
    with torch.no_grad():
        logits = model(input_ids=out[:, :-1]).logits[0, :, :tok.vocab_size]  # fp32 (T-1, V), padding dropped
        logp = torch.log_softmax(logits.float(), -1)
    for t in range(ids.size(1), out.size(1)):
        row = logp[t - 1]
        assert float(row.max() - row[out[0, t]]) < 0.1, (t, float(row.max() - row[out[0, t]]))


@pytest.mark.parametrize("name", ["gpt", "hamiltonian", "t5"])
def test_blimp_scores_under_bf16_match_fp32(name, eager):
    from kinlm_core import blimp

    _, run_dir = eager(name)
    loaded = kinlm_core.load_run(run_dir, device="cpu")
    model, tok = loaded.model.eval(), loaded.tokenizer
    sentences = [p[k] for p in blimp.load_pairs(["passive_1", "wh_island"], max_pairs=4) for k in ("good", "bad")]
    want, _ = blimp.sentence_logprobs(model, tok, sentences, progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = blimp.sentence_logprobs(model, tok, sentences, progress=False)
    for g, w in zip(got, want):
        assert abs(g - w) <= 0.01 * abs(w) + 0.05, (g, w)
