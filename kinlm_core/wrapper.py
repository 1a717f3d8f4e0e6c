"""The base of model wrappers: a model that runs another kinlm model and replaces what some of its
modules output (public API; imports torch).

A wrapper plugin (``diff_wrapper``, ``vt_embeddings``) keeps only its method::

    class MyWrapper(ModelWrapper):
        def __init__(self, cfg, inner):
            super().__init__(inner, modules=find_blocks(inner), memory=2)   # modules whose outputs it replaces
            ...                                                             # the method's parameters

        def forward(self, input_ids, output_hidden_states=False, **batch) -> ModelOutput:
            with self.outputs_replaced(batch):          # module i's output h -> self.replace(i, h, inputs, batch)
                return self.call_inner(input_ids, output_hidden_states, **batch)

        def replace(self, i, h, inputs, batch):        # the method's equation on h (B, T, C)
            ...

What the base does for every wrapper:

- **Batch keys.** ``forward_keys`` are the batch keys the inner model's forward names (found once
  through :func:`kinlm_core.objectives.model_inputs`); :func:`~kinlm_core.objectives.model_inputs`
  reads them, so the engine, objectives and BLiMP see the wrapper exactly as the inner model:
  decoder-only around a gpt, seq2seq (``decoder_input_ids``) around a T5. ``call_inner`` passes the
  inner model those keys only.
- **Extras.** ``bind_tokenizer``, ``train_state``/``load_train_state``, ``no_decay_param_names`` and
  ``decay_param_names`` go to the inner model (names prefixed ``inner.``), plus the wrapper's own.
- **Capabilities.** ``get_input_embeddings``/``set_input_embeddings`` and ``block_lists`` are the
  inner model's, so a wrapper inside a wrapper finds what it acts on (kinlm_core/composition.py).
- **Decoding.** When the inner model has ``decode`` (KV cache, recurrent state), so does the
  wrapper: it runs the inner ``decode`` with the replacement on; each replaced module keeps its
  last ``memory`` raw outputs in the state, and ``replace`` sees them prepended, so a replacement
  that reads h_{t-1}, h_{t-2} gives the same logits token by token as on the whole sequence.
  Without an inner ``decode`` the wrapper has none either (samplers re-run the context).

The hooks exist only inside ``outputs_replaced`` (a forward or a decode call): nothing about a
batch is kept on the module between calls.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from .api import BATCH_KEYS, ModelOutput
from .objectives import model_inputs


class ModelWrapper(nn.Module):
    """A model around ``inner`` (any kinlm model) that replaces the outputs of ``modules`` (modules of
    ``inner``) with ``self.replace(i, h, inputs, batch)`` while it runs.

    ``memory``: how many earlier raw outputs of each replaced module ``replace`` needs when decoding
    token by token (1 for a first difference, 2 for a second difference).
    """

    def __init__(self, inner: nn.Module, modules: list[nn.Module], memory: int = 0):
        super().__init__()
        self.inner = inner
        self.block_size = getattr(inner, "block_size", None)
        keys = model_inputs(inner, dict.fromkeys(BATCH_KEYS))
        self.forward_keys = frozenset(keys) | {"input_ids"}
        self.is_seq2seq = "decoder_input_ids" in self.forward_keys
        self._replaced = list(modules)  # plain list: they are registered under inner already
        self.memory = memory

    # --- what a wrapper implements -------------------------------------------------------------
    def replace(self, i: int, h: torch.Tensor, inputs: tuple, batch: dict) -> torch.Tensor:  # pragma: no cover
        """The method: module ``i``'s output ``h`` (B, T, C) -> its replacement (B, T, C). ``inputs``: the
        module's positional inputs; ``batch``: the forward's batch keys (empty while decoding)."""
        raise NotImplementedError

    # --- running the inner model ---------------------------------------------------------------
    def call_inner(self, input_ids, output_hidden_states: bool = False, **batch) -> ModelOutput:
        """The inner model's forward with the batch keys it names (None values left out)."""
        kw = {k: v for k, v in batch.items() if v is not None and k in self.forward_keys}
        if output_hidden_states:
            kw["output_hidden_states"] = True
        return self.inner(input_ids, **kw)

    @contextmanager
    def outputs_replaced(self, batch: dict, memory: dict | None = None):
        """While inside: module i's output (a tensor, or a tuple whose first element is the hidden
        states) is replaced by ``self.replace(i, h, inputs, batch)``. ``memory`` (decoding): i -> the
        module's last raw outputs (B, k, C), prepended before ``replace`` and updated."""
        handles = [m.register_forward_hook(self._hook(i, batch, memory)) for i, m in enumerate(self._replaced)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, i: int, batch: dict, memory: dict | None):
        def hook(module, inputs, out):
            h = out if isinstance(out, torch.Tensor) else out[0] if isinstance(out, tuple) and out else None
            if not isinstance(h, torch.Tensor):
                raise TypeError(f"{type(self).__name__}: module {i} returned {type(out).__name__}; expected a tensor "
                                "or a tuple whose first element is the hidden states")
            if memory is None or self.memory == 0 or h.dim() != 3:
                new = self.replace(i, h, inputs, batch)
            else:
                past = memory.get(i)
                full = h if past is None else torch.cat([past, h], dim=1)   # (B, k + T, C)
                new = self.replace(i, full, inputs, batch)[:, full.size(1) - h.size(1):]
                memory[i] = full[:, -self.memory:].detach()
            return new if isinstance(out, torch.Tensor) else (new,) + tuple(out[1:])
        return hook

    @property
    def decode(self):
        """The decoding protocol, when the inner model has one (otherwise there is no ``decode`` and
        samplers re-run the context through ``forward``, as for the inner model)."""
        if not callable(getattr(self.inner, "decode", None)):
            raise AttributeError(f"{type(self).__name__}: the inner model has no decode")
        return self._decode

    def _decode(self, input_ids, state=None, **kwargs):
        """Prefill (``state=None``) or continue: -> (logits (B, T, V), state); the state is the inner
        model's and each replaced module's memory of its last raw outputs."""
        inner_state, memory = (None, {}) if state is None else state
        with self.outputs_replaced({}, memory):
            logits, inner_state = self.inner.decode(input_ids, inner_state, **kwargs)
        return logits, (inner_state, memory)

    # --- the capability contract (kinlm_core.composition): the inner model's, passed on ----------
    def get_input_embeddings(self) -> nn.Module:
        """The inner model's input embedding module (a wrapper inside a wrapper reaches the innermost)."""
        if not hasattr(self.inner, "get_input_embeddings"):
            raise AttributeError(f"{type(self.inner).__name__} has no get_input_embeddings()")
        return self.inner.get_input_embeddings()

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.inner.set_input_embeddings(module)

    def block_lists(self) -> dict:
        """The inner model's declared block lists, paths prefixed ``inner.`` ({} when it declares none)."""
        lists = self.inner.block_lists() if hasattr(self.inner, "block_lists") else {}
        return {f"inner.{path}": mods for path, mods in lists.items()}

    # --- the inner model's extras --------------------------------------------------------------
    def bind_tokenizer(self, tokenizer) -> None:
        if hasattr(self.inner, "bind_tokenizer"):
            self.inner.bind_tokenizer(tokenizer)

    def own_no_decay_param_names(self) -> set[str]:
        """The wrapper's own parameters exempt from weight decay (names relative to the wrapper)."""
        return set()

    def own_decay_param_names(self) -> set[str]:
        """Parameters decayed although the engine's rule would exempt them (vectors, scalars, embeddings)."""
        return set()

    def no_decay_param_names(self) -> set[str]:
        inner = self.inner.no_decay_param_names() if hasattr(self.inner, "no_decay_param_names") else set()
        return {f"inner.{n}" for n in inner} | self.own_no_decay_param_names()

    def decay_param_names(self) -> set[str]:
        inner = self.inner.decay_param_names() if hasattr(self.inner, "decay_param_names") else set()
        return {f"inner.{n}" for n in inner} | self.own_decay_param_names()

    def train_state(self) -> dict:
        return self.inner.train_state() if hasattr(self.inner, "train_state") else {}

    def load_train_state(self, state: dict) -> None:
        if hasattr(self.inner, "load_train_state"):
            self.inner.load_train_state(state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def added_parameters(self) -> int:
        """Parameters the wrapper adds to the inner model."""
        return self.num_parameters() - sum(p.numel() for p in self.inner.parameters())


__all__ = ["ModelWrapper"]
