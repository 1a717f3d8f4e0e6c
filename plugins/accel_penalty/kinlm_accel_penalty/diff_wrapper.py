"""DiffWrapper: a kinematic mix of every block's output, around any kinlm model.

For block l with output h (B, T, C) (zeros before position 0, so it stays causal):
    dh_t  = h_t - h_{t-1}
    d2h_t = h_t - 2 h_{t-1} + h_{t-2}
    h'_t  = alpha_l h_t + beta_l dh_t + gamma_l d2h_t          (B, T, C)
alpha, beta, gamma: (n_blocks,) learnable, initialised to (1, 0, 0): the identity, so at start
the wrapped model computes exactly what the inner model computes.

The blocks are found as ModuleLists of the inner model (``blocks``, ``layers``, ``layer``, ``block``,
``h``: gpt, hamiltonian, transformers' GPT-2 ``transformer.h``, Mamba ``backbone.layers``, T5
``encoder.block``/``decoder.block``) or at the paths the config names; each block gets a forward
hook that replaces its output (a tensor, or the first element of a tuple).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from kinlm_core import ModelOutput

BLOCK_LIST_NAMES = ("blocks", "layers", "layer", "block", "h")


def kinematic_mix(h: torch.Tensor, alpha, beta, gamma) -> torch.Tensor:
    """alpha h + beta (h_t - h_{t-1}) + gamma (h_t - 2 h_{t-1} + h_{t-2}) along dim 1, zeros before t = 0."""
    prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)      # h_{t-1}
    prev2 = torch.cat([torch.zeros_like(h[:, :1]), prev[:, :-1]], dim=1)  # h_{t-2}
    return alpha * h + beta * (h - prev) + gamma * (h - 2 * prev + prev2)


def find_block_lists(model: nn.Module, paths: list[str] | None) -> list[tuple[str, nn.ModuleList]]:
    """The inner model's block lists: the named attribute paths, or every ModuleList named like a
    block list that is not inside another one."""
    if paths:
        found = []
        for p in paths:
            mod = model
            for part in p.split("."):
                if not hasattr(mod, part):
                    raise ValueError(f"diff_wrapper.blocks: the inner model has no attribute {p!r}")
                mod = getattr(mod, part)
            if not isinstance(mod, (nn.ModuleList, nn.Sequential)):
                raise ValueError(f"diff_wrapper.blocks: {p!r} is a {type(mod).__name__}, not a ModuleList")
            found.append((p, mod))
        return found
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES and len(mod):
            if not any(name.startswith(f + ".") for f, _ in found):
                found.append((name, mod))
    if not found:
        raise ValueError(f"diff_wrapper: found no block list in the inner model ({type(model).__name__}); looked for "
                         f"ModuleLists named {', '.join(BLOCK_LIST_NAMES)}; set model.blocks to their attribute paths")
    return found


class DiffWrapper(nn.Module):
    def __init__(self, cfg, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.block_size = getattr(self.inner, "block_size", None)
        self.block_paths, blocks = [], []
        for path, lst in find_block_lists(self.inner, cfg.blocks):
            self.block_paths += [f"{path}.{i}" for i in range(len(lst))]
            blocks += list(lst)
        n = len(blocks)
        a0, b0, g0 = cfg.init
        for k, v in (("alpha", a0), ("beta", b0), ("gamma", g0)):
            t = torch.full((n,), float(v))
            if cfg.learnable:
                setattr(self, k, nn.Parameter(t))
            else:
                self.register_buffer(k, t)
        for i, block in enumerate(blocks):
            block.register_forward_hook(self._hook(i))
        params = inspect.signature(self.inner.forward).parameters
        self._any_key = any(p.kind == p.VAR_KEYWORD for p in params.values())
        self._inner_keys = set(params)

    def _hook(self, i: int):
        def hook(module, args, out):
            if isinstance(out, torch.Tensor):
                return kinematic_mix(out, self.alpha[i], self.beta[i], self.gamma[i])
            if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
                return (kinematic_mix(out[0], self.alpha[i], self.beta[i], self.gamma[i]),) + out[1:]
            raise TypeError(f"diff_wrapper: block {self.block_paths[i]} returned {type(out).__name__}; "
                            "expected a tensor or a tuple whose first element is the hidden states")
        return hook

    def forward(self, input_ids, output_hidden_states: bool = False, attention_mask=None,
                document_ids=None) -> ModelOutput:
        """The inner model's forward with the batch keys it names (its blocks' outputs mixed)."""
        return self._run(input_ids, output_hidden_states, attention_mask=attention_mask, document_ids=document_ids)

    def _run(self, input_ids, output_hidden_states: bool, **given) -> ModelOutput:
        keys = {k: v for k, v in given.items() if v is not None and (self._any_key or k in self._inner_keys)}
        return self.inner(input_ids, output_hidden_states=output_hidden_states, **keys)

    def bind_tokenizer(self, tokenizer) -> None:
        if hasattr(self.inner, "bind_tokenizer"):
            self.inner.bind_tokenizer(tokenizer)

    def no_decay_param_names(self) -> set[str]:
        own = {"alpha", "beta", "gamma"}
        if hasattr(self.inner, "no_decay_param_names"):
            own |= {f"inner.{n}" for n in self.inner.no_decay_param_names()}
        return own

    def train_state(self) -> dict:
        return self.inner.train_state() if hasattr(self.inner, "train_state") else {}

    def load_train_state(self, state: dict) -> None:
        if hasattr(self.inner, "load_train_state"):
            self.inner.load_train_state(state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Seq2SeqDiffWrapper(DiffWrapper):
    """DiffWrapper around a seq2seq model: its forward also names the decoder keys, so objectives and
    BLiMP see a seq2seq model (the engine passes a model exactly the keys its forward names)."""

    def forward(self, input_ids, output_hidden_states: bool = False, attention_mask=None, document_ids=None,
                decoder_input_ids=None, decoder_attention_mask=None) -> ModelOutput:
        return self._run(input_ids, output_hidden_states, attention_mask=attention_mask, document_ids=document_ids,
                         decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask)


def build(cfg, vocab_size: int) -> DiffWrapper:
    """A DiffWrapper whose forward names the batch keys its inner model takes (decoder keys for seq2seq)."""
    inner = cfg.inner.build(vocab_size)
    seq2seq = "decoder_input_ids" in inspect.signature(inner.forward).parameters
    return (Seq2SeqDiffWrapper if seq2seq else DiffWrapper)(cfg, inner)
