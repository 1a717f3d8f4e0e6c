"""The transformers export of the hamiltonian model (issue #33): specs/hamiltonian_tiny.json trained a
few steps through the engine and exported through the core loads without kinlm and gives kinlm's logits
(float32, 1e-5), greedy tokens (also past block_size, where both restart from the last block) and
steered generations (kinlm_core.testing.check_hf_export, one process for all of them)."""

import json
from pathlib import Path

import pytest
import torch

from kinlm_core.data.tokenizers import ByteTokenizer
from kinlm_core.testing import check_hf_export, greedy_tokens, train_briefly
from kinlm_hamiltonian.config import HamiltonianConfig

pytestmark = pytest.mark.slow  # loads exports in a separate process: seconds each

TOK = ByteTokenizer()  # 257 ids (end of text 256): padded to 320 by the model, cut back by the export
EOT = TOK.eos_id
SPECS = Path(__file__).resolve().parents[3] / "specs"


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = HamiltonianConfig(**{**dict(d_model=32, n_layer=2, n_head=2, block_size=32, dropout=0.0,
                                      distance_cap=8), **kw})
    model = cfg.build(TOK.vocab_size).eval()
    model.bind_tokenizer(TOK)
    return model


def test_export_fields_cut_padding_and_keep_names():
    model = tiny_model()
    ex = model.hf_export(TOK)
    assert (ex.name, ex.config_class, ex.model_class, ex.task) == (
        "kinlm_hamiltonian", "HamiltonianConfig", "HamiltonianForCausalLM", "causal")
    assert set(ex.files) == {"configuration_kinlm_hamiltonian.py", "modeling_kinlm_hamiltonian.py"}
    for text in ex.files.values():
        assert "kinlm_core" not in text and "import kinlm" not in text
    assert model.padded_vocab_size == 320
    assert set(ex.state_dict) == set(model.state_dict()) - {"head.weight"}
    assert ex.state_dict["embed.q_emb.weight"].shape == (257, 32)
    assert torch.equal(ex.state_dict["embed.p_emb.weight"], model.embed.p_emb.weight[:257])
    assert ex.config["vocab_size"] == 257 and ex.config["eot_token_id"] == EOT and ex.config["distance_cap"] == 8
    json.dumps(ex.config)
    assert "steer=" in ex.readme_notes


def test_tiny_spec_trained_loads_without_kinlm_with_equal_logits_greedy_and_steering(tmp_path):
    run = train_briefly(SPECS / "hamiltonian_tiny.json", tmp_path / "run")
    model, tok = run.model.float().eval(), run.tokenizer
    V, eot, block = tok.vocab_size, tok.eos_id, model.block_size
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, V, (2, 20), generator=g)
    batch[0, 7] = batch[1, 12] = eot                                      # momentum resets inside the texts
    short = batch[:1, :6]
    long = torch.randint(0, V, (1, block - 4), generator=g)               # + 10 new tokens > block_size
    vec = 0.5 * model.embed.q_emb.weight[5].detach()
    steer = {"steer": vec, "steer_target": "momentum"}
    options = [{"resets": False}, {"steer": vec, "steer_target": "q"}, steer]
    jobs = [{"do": "logits", "ids": batch, "kwargs": kw} for kw in options]
    jobs += [{"do": "generate", "ids": short, "max_new_tokens": 10}, {"do": "generate", "ids": long, "max_new_tokens": 10},
             {"do": "generate", "ids": short, "max_new_tokens": 10, "kwargs": steer}]
    got = check_hf_export(model, tok, tmp_path, prompt_ids=batch, max_new_tokens=8, spec=run.spec, jobs=jobs)
    assert got["class"] == "HamiltonianForCausalLM" and "custom-code folder" in got["message"]
    assert got["steps"] == [20] + [1] * 7                  # KV cache, conv and momentum state: one token a step
    restart = got["jobs"][4]["steps"]                       # past block_size: the last block_size tokens again
    assert restart[:4] == [block - 4, 1, 1, 1] and block in restart[4:], restart
    assert (got["folder"] / "README.md").read_text().count("steer") >= 1     # the card documents steering
    out = got["jobs"]
    with torch.no_grad():
        plain = model(batch).logits
        for kw, res in zip(options, out):
            want = model(batch, **kw).logits[..., :V]
            torch.testing.assert_close(res["logits"], want, atol=1e-5, rtol=0, msg=lambda m, kw=kw: f"{kw}: {m}")
            assert not torch.allclose(want, plain[..., :V]), f"{kw} changes nothing: the check would not see it"
    assert out[3]["tokens"].tolist() == greedy_tokens(model, short, 10, V).tolist()
    assert out[4]["tokens"].tolist() == greedy_tokens(model, long, 10, V).tolist()
    assert out[5]["tokens"].tolist() == greedy_tokens(model, short, 10, V, model_kwargs=steer).tolist()


def test_no_reflex_variant_matches_and_bad_input_is_refused(tmp_path):
    model = tiny_model(seed=3, reflex=False, init="gpt2")
    ids = torch.randint(0, 257, (1, 16), generator=torch.Generator().manual_seed(2))
    two = torch.cat([ids, ids])
    jobs = [{"do": "generate", "ids": two, "max_new_tokens": 2,
             "kwargs": {"attention_mask": torch.tensor([[1] * 16, [0] + [1] * 15])}},
            {"do": "logits", "ids": two, "kwargs": {"attention_mask": torch.tensor([[1] * 16, [1] * 15 + [0]])}},
            {"do": "logits", "ids": torch.zeros(1, 33, dtype=torch.long)}]
    got = check_hf_export(model, TOK, tmp_path, prompt_ids=ids, max_new_tokens=6, jobs=jobs)
    left, right, too_long = got["jobs"]
    assert "left padding" in left["error"]
    assert "error" not in right                                           # right padding is harmless
    assert too_long["error"] == "0 cached + 33 new positions exceed block_size 32"


@pytest.mark.slow
def test_cli_run_then_export_gives_a_folder_transformers_loads_without_kinlm(tmp_path):
    """End to end through the CLI: `kinlm run specs/hamiltonian_tiny.json` (shrunk), `kinlm export RUN
    --out X`; X loads without kinlm with kinlm's logits, and the finished run's final/ is the same folder."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from kinlm_core import load_run
    from kinlm_core.testing import BRIEFLY, load_export_without_kinlm

    rd, out = tmp_path / "run", tmp_path / "exported"
    env = {**os.environ, "KINLM_CACHE": str(tmp_path / "cache")}
    sets = [a for s in BRIEFLY for a in ("--set", s)]

    def kinlm(*args):
        r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", *args], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, f"kinlm {args[0]}: exit {r.returncode}\n{r.stderr[-2000:]}"
        return r.stdout

    kinlm("run", str(SPECS / "hamiltonian_tiny.json"), "--run-dir", str(rd), *sets)
    line = kinlm("export", str(rd), "--out", str(out))
    assert f"{out}: transformers custom-code folder (HamiltonianForCausalLM, trust_remote_code=True" in line
    final = rd / "final"
    assert {p.name for p in final.iterdir()} == {p.name for p in out.iterdir()}
    assert (final / "config.json").read_text() == (out / "config.json").read_text()
    a, b = load_file(str(final / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    run = load_run(rd, device="cpu")
    ids = torch.randint(0, run.tokenizer.vocab_size, (1, 10), generator=torch.Generator().manual_seed(0))
    got = load_export_without_kinlm(out, ids, max_new_tokens=4)
    with torch.no_grad():
        want = run.model.float().eval()(ids).logits[..., :run.tokenizer.vocab_size]
    torch.testing.assert_close(got["logits"], want, atol=1e-5, rtol=0)
    assert got["class"] == "HamiltonianForCausalLM"
