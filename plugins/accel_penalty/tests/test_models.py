"""The same penalty, unchanged, on every model that exposes hidden states: one training step of
each model that is installed (plugins that are absent are skipped), and DiffWrapper's identity at
init around each of them."""

import pytest
import torch

from kinlm_core import Tokenizer, component
from kinlm_core.objectives import model_inputs

from kinlm_accel_penalty.config import AccelPenaltyConfig, DiffWrapperConfig

V, B, T = 97, 2, 16

MODELS = {
    "gpt": {"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32},
    "hamiltonian": {"type": "hamiltonian", "d_model": 32, "n_layer": 2, "n_head": 2, "block_size": 32,
                    "dropout": 0.0},
    "llama_like": {"type": "llama_like", "n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32, "dropout": 0.0},
    "context_vector": {"type": "context_vector", "d_embed": 16, "d_hidden": 32, "n_layer": 2, "d_context": 16,
                       "dropout": 0.0},
    "cvfp": {"type": "cvfp", "d_model": 32, "n_layer": 2, "block_size": 32},
    "t5": {"type": "t5", "preset": "t5-tiny"},
    "gpt2 (transformers)": {"type": "transformers", "config": {"model_type": "gpt2", "n_layer": 2, "n_head": 2,
                                                              "n_embd": 32, "n_positions": 32}},
    "mamba (transformers)": {"type": "transformers", "config": {"model_type": "mamba", "hidden_size": 32,
                                                               "num_hidden_layers": 2, "state_size": 8}},
    "t5 (transformers)": {"type": "transformers", "config": {"model_type": "t5", "d_model": 32, "d_ff": 64,
                                                            "num_layers": 2, "num_decoder_layers": 2,
                                                            "num_heads": 2, "d_kv": 16}},
}


class _Tok(Tokenizer):
    vocab_size, eos_id, pad_id = V, 0, 0


def build(cfg):
    """Build as the engine does: the model, then bind_tokenizer (special ids) where it has one."""
    model = cfg.build(V)
    if hasattr(model, "bind_tokenizer"):
        model.bind_tokenizer(_Tok())
    return model


def model_config(name):
    spec = MODELS[name]
    try:
        cls = component("model", spec["type"])
    except Exception as e:  # noqa: BLE001 - the plugin that provides it is not installed
        pytest.skip(f"model {spec['type']!r} is not installed ({e})")
    if spec["type"] == "transformers":
        pytest.importorskip("transformers")
    return cls(**spec)


def batch_for(model):
    """input_ids, labels, a padded second row and two documents in the first, as an objective makes
    them; the model gets the keys its forward names (as the engine passes them)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 12:] = 0
    docs = torch.zeros(B, T, dtype=torch.long)
    docs[0, 7:] = 1
    batch = {"input_ids": ids, "labels": ids.masked_fill(mask == 0, -100), "attention_mask": mask,
             "document_ids": docs}
    return batch, {k: v for k, v in model_inputs(model, batch).items() if k != "input_ids"}


@pytest.mark.parametrize("name", list(MODELS))
def test_one_training_step_with_the_penalty(name):
    cfg = model_config(name)
    torch.manual_seed(0)
    model = build(cfg).train()
    batch, keys = batch_for(model)
    fn = AccelPenaltyConfig(layers="all", weight=1e-2).build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = model(batch["input_ids"], output_hidden_states=True, **keys)
    terms = fn(out, batch, 0)
    p = terms["accel_penalty"]
    assert p.ndim == 0 and torch.isfinite(p) and p.item() > 0, (name, p)
    ce = torch.nn.functional.cross_entropy(out.logits.float().flatten(0, 1), batch["labels"].flatten())
    before = {n: q.detach().clone() for n, q in model.named_parameters() if q.requires_grad}
    (ce + 1e-2 * p).backward()
    grads = [q.grad for q in model.parameters() if q.requires_grad and q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    opt.step()
    assert any(not torch.equal(before[n], q) for n, q in model.named_parameters() if n in before)
    # the penalty alone reaches the parameters (through the hidden states)
    model.zero_grad()
    fn(model(batch["input_ids"], output_hidden_states=True, **keys), batch, 1)["accel_penalty"].backward()
    assert sum(float(q.grad.abs().sum()) for q in model.parameters() if q.grad is not None) > 0


@pytest.mark.parametrize("name", ["gpt", "hamiltonian", "llama_like", "gpt2 (transformers)", "mamba (transformers)",
                                  "t5 (transformers)"])
def test_diff_wrapper_is_the_identity_around(name):
    inner = model_config(name)
    torch.manual_seed(0)
    wrapper = build(DiffWrapperConfig(inner=inner.model_dump(), init_std=0.0)).eval()
    plain = build(inner).eval()
    plain.load_state_dict(wrapper.inner.state_dict())
    batch, keys = batch_for(wrapper)
    a = wrapper(batch["input_ids"], output_hidden_states=True, **keys)
    b = plain(batch["input_ids"], output_hidden_states=True,
              **{k: v for k, v in model_inputs(plain, batch).items() if k != "input_ids"})
    assert len(wrapper.block_paths) >= 2
    assert torch.equal(a.logits, b.logits)
    with torch.no_grad():
        wrapper.beta.fill_(0.5)
    assert not torch.equal(wrapper(batch["input_ids"], **keys).logits, b.logits)  # every block list is hooked
