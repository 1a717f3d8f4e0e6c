"""The transformers export of the hamiltonian model (issue #33): loaded without kinlm, it gives kinlm's
logits (float32, 1e-5), greedy tokens (also past block_size, where both restart from the last block)
and steered generations. Helpers: the ``hf_tools`` fixture (conftest.py)."""

import json

import pytest
import torch

from kinlm_core.data.tokenizers import ByteTokenizer
from kinlm_hamiltonian.config import HamiltonianConfig

TOK = ByteTokenizer()  # 257 ids (end of text 256): padded to 320 by the model, cut back by the export
EOT = TOK.eos_id


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


def test_loads_without_kinlm_and_matches_logits_greedy_and_steering(tmp_path, hf_tools):
    model = hf_tools.train_few_steps(tiny_model(reflex=True), TOK.vocab_size)
    folder = hf_tools.write_export(model.hf_export(TOK), tmp_path / "export")
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, 256, (2, 20), generator=g)
    batch[0, 7] = batch[1, 12] = EOT                                      # momentum resets inside the texts
    short = batch[:1, :6]
    long = torch.randint(0, 256, (1, 28), generator=g)                    # 28 + 10 > block_size 32
    vec = 0.5 * model.embed.q_emb.weight[ord("a")].detach()
    jobs_logits = [
        {"ids": batch.tolist()},
        {"ids": batch.tolist(), "kwargs": {"resets": False}},
        {"ids": batch.tolist(), "kwargs": {"steer": vec.tolist(), "steer_target": "q"}},
        {"ids": batch.tolist(), "kwargs": {"steer": vec.tolist(), "steer_target": "momentum"}},
    ]
    jobs_gen = [
        {"ids": short.tolist(), "max_new_tokens": 10},
        {"ids": batch.tolist(), "max_new_tokens": 8},
        {"ids": long.tolist(), "max_new_tokens": 10},
        {"ids": short.tolist(), "max_new_tokens": 10, "kwargs": {"steer": vec.tolist(), "steer_target": "momentum"}},
    ]
    out = hf_tools.run_isolated(folder, tmp_path, logits=jobs_logits, generate=jobs_gen)
    assert out["class"] == "HamiltonianForCausalLM"

    with torch.no_grad():
        want = [model(batch).logits, model(batch, resets=False).logits,
                model(batch, steer=vec, steer_target="q").logits,
                model(batch, steer=vec, steer_target="momentum").logits]
    for job, got, ref in zip(jobs_logits, out["logits"], want):
        torch.testing.assert_close(torch.tensor(got), ref[..., :TOK.vocab_size], atol=1e-5, rtol=0,
                                   msg=lambda m, job=job: f"{job.get('kwargs')}: {m}")
    assert not torch.allclose(want[0], want[1]) and not torch.allclose(want[0], want[2])  # the options matter

    V = TOK.vocab_size
    assert out["generate"][0] == hf_tools.kinlm_greedy(model, short, 10, V)
    assert out["generate"][1] == hf_tools.kinlm_greedy(model, batch, 8, V)
    assert out["generate"][2] == hf_tools.kinlm_greedy(model, long, 10, V)
    assert out["generate"][3] == hf_tools.kinlm_greedy(
        model, short, 10, V, model_kwargs={"steer": vec, "steer_target": "momentum"})


def test_no_reflex_variant_matches_and_bad_input_is_refused(tmp_path, hf_tools):
    model = tiny_model(seed=3, reflex=False, init="gpt2")
    folder = hf_tools.write_export(model.hf_export(TOK), tmp_path / "export")
    ids = torch.randint(0, 257, (1, 16), generator=torch.Generator().manual_seed(2))
    two = torch.cat([ids, ids])
    out = hf_tools.run_isolated(folder, tmp_path, logits=[{"ids": ids.tolist()}],
                                generate=[{"ids": ids.tolist(), "max_new_tokens": 6}],
                                errors=[{"ids": two.tolist(), "attention_mask": [[1] * 16, [0] + [1] * 15],
                                         "generate": True},
                                        {"ids": two.tolist(), "attention_mask": [[1] * 16, [1] * 15 + [0]]},
                                        {"ids": torch.zeros(1, 33, dtype=torch.long).tolist()}])
    assert "left padding" in out["errors"][0]
    assert out["errors"][1] is None                                      # right padding is harmless
    assert out["errors"][2] == "0 cached + 33 new positions exceed block_size 32"
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(out["logits"][0]), model(ids).logits[..., :257], atol=1e-5, rtol=0)
    assert out["generate"][0] == hf_tools.kinlm_greedy(model, ids, 6, 257)
