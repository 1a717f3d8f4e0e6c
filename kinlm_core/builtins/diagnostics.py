"""The core's entries of the diagnostic suite (hook ``kinlm_diagnostics``; kinlm_core/diagnose/registry.py
describes the format): the six synthetic tasks with their tiers, and the core's architectures, among
them the pure-PyTorch fixed-state baselines whose state the MQAR state-size curve sweeps.

Widths: every architecture reads its logits out of a width-64 hidden state where it can (conv_attention
56 is Zoology's attention width rounded to the heads it used before; the table on the page reports each
architecture's read-out width and parameters beside its accuracy)."""

from __future__ import annotations


def attention_state(model: dict, seq_len: int) -> int:
    """A transformer's KV cache at the task's length: 2 n_layer d_model numbers per token."""
    inner = model.get("inner", model)
    return 2 * inner["n_layer"] * inner["d_model"] * seq_len


def _linear_attention_state(model: dict, seq_len: int) -> int:
    from .fixed_state_config import LinearAttentionConfig

    return LinearAttentionConfig.model_validate(model).state_numbers()


def _base_conv_state(model: dict, seq_len: int) -> int:
    from .fixed_state_config import BaseConvConfig

    return BaseConvConfig.model_validate(model).state_numbers()


def _mamba_state(model: dict, seq_len: int) -> int:
    c = model["config"]
    d_inner = c.get("expand", 2) * c["hidden_size"]
    return c["num_hidden_layers"] * d_inner * (c.get("state_size", 16) + c.get("conv_kernel", 4) - 1)


ARCHITECTURES = [
    {"architecture": "gpt", "family": "attention", "about": "nanoGPT-style transformer, learned positions",
     "model": {"type": "gpt", "n_layer": 2, "n_head": 2, "d_model": 64, "block_size": 256, "dropout": 0.0},
     "state_numbers": attention_state},
    {"architecture": "conv_attention", "family": "attention",
     "about": "Zoology's attention baseline: gated short conv, then attention, no positions",
     "model": {"type": "conv_attention", "d_model": 64, "n_layer": 2, "n_head": 1, "conv_kernel": 3,
               "block_size": 256},
     "state_numbers": attention_state},
    {"architecture": "linear_attention", "family": "fixed",
     "about": "linear attention with Based's Taylor feature map (fixed state, grows as feature_dim^2)",
     "model": {"type": "linear_attention", "d_model": 64, "n_layer": 2, "n_head": 2, "feature_dim": 8},
     "state_knob": "feature_dim", "state_sizes": {"cpu": [2, 4, 8, 16], "gpu": [2, 4, 8, 16, 24]},
     "state_numbers": _linear_attention_state},
    {"architecture": "base_conv", "family": "fixed",
     "about": "Zoology's BaseConv: gated causal convolution (state: the last k - 1 inputs)",
     "model": {"type": "base_conv", "d_model": 64, "n_layer": 2, "conv_kernel": 4},
     "state_knob": "conv_kernel", "state_sizes": {"cpu": [2, 4, 8, 16], "gpu": [4, 8, 16, 32, 64]},
     "state_numbers": _base_conv_state},
    {"architecture": "mamba", "family": "fixed", "about": "transformers' Mamba (selective SSM)",
     "model": {"type": "transformers", "config": {"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2,
                                                  "state_size": 16, "expand": 2, "conv_kernel": 4}},
     "state_knob": "config.state_size", "state_sizes": {"gpu": [4, 8, 16, 32, 64]},
     "state_numbers": _mamba_state,
     "skip": {"cpu": "transformers' Mamba has no CPU kernel: its reference scan takes 0.72 s a training step at "
                     "T = 32 (gpt: 0.018 s), about 7 minutes a run; --archs mamba runs it anyway"}},
]


def _task(name: str, about: str, cpu: dict, gpu: dict, **extra) -> dict:
    return {"task": name, "about": about, "data": {"type": "synthetic", "task": name},
            "tiers": {"cpu": cpu, "gpu": gpu}, **extra}


TASKS = [
    _task("associative_recall", "Zoology's multi-query associative recall (MQAR)",
          {"data": {"vocab_size": 256, "seq_len": 32, "n_train": 10000}, "knob": "num_kv_pairs", "levels": [2, 4, 8],
           "chance": 1 / 128, "state_level": 4, "retune": {"ceiling": [[4, 8]], "chance": [[1, 2], [1]]}},
          {"data": {"vocab_size": 8192, "seq_len": 256, "n_train": 20000}, "knob": "num_kv_pairs",
           "levels": [4, 8, 16, 32, 64], "chance": 1 / 4096, "state_level": 16},
          state_curve=True),
    _task("noisy_recall", "MAD's in-context recall with noise",
          {"data": {"vocab_size": 32, "noise_vocab_size": 16, "seq_len": 32, "n_train": 4000}, "knob": "frac_noise",
           "levels": [0.2, 0.6], "chance": 1 / 8, "retune": {"ceiling": [[0.6, 0.8]], "chance": [[0.0, 0.2]]}},
          {"data": {"vocab_size": 32, "noise_vocab_size": 16, "seq_len": 128, "n_train": 12800},
           "knob": "frac_noise", "levels": [0.2, 0.4, 0.6, 0.8], "chance": 1 / 8}),
    _task("fuzzy_recall", "MAD's fuzzy in-context recall",
          {"data": {"vocab_size": 16, "k_motif_size": 2, "v_motif_size": 2, "n_train": 4000}, "knob": "seq_len",
           "levels": [32, 64], "chance": 1 / 8, "retune": {"ceiling": [[64, 128]], "chance": [[16, 32]]}},
          {"data": {"vocab_size": 16, "k_motif_size": 3, "v_motif_size": 3, "n_train": 12800}, "knob": "seq_len",
           "levels": [128, 256, 512], "chance": 1 / 8}),
    _task("selective_copy", "MAD's selective copying",
          {"data": {"vocab_size": 16, "seq_len": 32, "n_train": 4000}, "knob": "num_tokens_to_copy", "levels": [4, 8],
           "chance": 1 / 14, "retune": {"ceiling": [[8, 12]], "chance": [[2, 4]]}},
          {"data": {"vocab_size": 16, "seq_len": 256, "n_train": 12800}, "knob": "num_tokens_to_copy",
           "levels": [16, 32, 64, 96], "chance": 1 / 14}),
    _task("compression", "MAD's compression (read out through compression_readout)",
          {"data": {"vocab_size": 16, "n_train": 4000}, "knob": "seq_len", "levels": [8, 16], "chance": 1 / 16,
           "retune": {"ceiling": [[16, 32]], "chance": [[8]]}},
          {"data": {"vocab_size": 16, "n_train": 12800}, "knob": "seq_len", "levels": [32, 64, 128, 256],
           "chance": 1 / 16},
          readout="compression"),
    _task("memorization", "MAD's memorization of a fixed key-value map",
          {"data": {"seq_len": 32, "n_train": 256}, "knob": "vocab_size", "levels": [64, 256], "chance": 1 / 128,
           "retune": {"ceiling": [[512, 1024], [2048, 4096]]}},
          {"data": {"seq_len": 32, "n_train": 256}, "knob": "vocab_size", "levels": [256, 512, 1024, 2048, 4096, 8192],
           "chance": 1 / 4096}),
]

ENTRIES = [*TASKS, *ARCHITECTURES]
