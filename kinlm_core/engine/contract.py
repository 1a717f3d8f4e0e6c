"""The model's side of the contract, checked on the run's first forward pass.

A model that returns the wrong thing otherwise fails deep inside the loss (``Expected input
batch_size (16) to match target batch_size (2048)``, ``Target 344 is out of bounds``) without
naming itself. :func:`watch_first_output` puts a forward hook on the model that checks its first
output against the batch it was given, says what was expected, naming the model type and the
distribution that provides it, then removes itself (no extra forward pass, no random numbers used).
"""

from __future__ import annotations

from ..api import ModelOutput
from ..plugins import PluginFault, get_manager


def describe_output_problem(out, input_ids, vocab_size: int, decoder_input_ids=None) -> str | None:
    """What is wrong with a model's output for ``input_ids`` (B, T) (or, for a seq2seq model, the
    decoder's (B, T')), or None when it keeps the contract: a ModelOutput whose logits are
    (B, T, V) with V >= vocab_size (a model that computes its own loss may leave logits None)."""
    import torch

    if not isinstance(out, ModelOutput):
        return f"its forward returned a {type(out).__name__}; expected a kinlm_core.ModelOutput"
    if out.logits is None and out.loss is not None:
        return None
    ids = decoder_input_ids if decoder_input_ids is not None else input_ids
    B, T = tuple(ids.shape[:2])
    expected = f"expected (batch, positions, vocab) = ({B}, {T}, {vocab_size}) (a vocab of at least {vocab_size})"
    if not isinstance(out.logits, torch.Tensor):
        return f"its forward returned logits that are a {type(out.logits).__name__}, not a tensor; {expected}"
    shape = tuple(out.logits.shape)
    if len(shape) != 3 or shape[:2] != (B, T) or shape[2] < vocab_size:
        which = "decoder_input_ids" if decoder_input_ids is not None else "input_ids"
        return f"its forward returned logits of shape {shape} for {which} of shape {(B, T)}; {expected}"
    return None


def model_owner(model_type: str) -> str:
    """``model 'x' (kinlm-foo 0.1.0)``: the model type and the distribution that provides it."""
    m = get_manager()
    reg = m.registry()["model"].get(model_type)
    info = next((p for p in m.plugins() if reg and p.name == reg.dist), None)
    return f"model '{model_type}' ({info.name} {info.version})" if info else f"model '{model_type}'"


def watch_first_output(model, model_type: str, vocab_size: int):
    """Check ``model``'s first forward output (see :func:`describe_output_problem`); raises
    :class:`PluginFault` naming ``model_type`` and its distribution. Returns the hook's handle."""

    import torch

    def check(module, args, kwargs, out):
        handle.remove()
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(input_ids, torch.Tensor):
            return
        problem = describe_output_problem(out, input_ids, vocab_size, kwargs.get("decoder_input_ids"))
        if problem:
            raise PluginFault(f"{model_owner(model_type)} breaks the model contract: {problem}")

    handle = model.register_forward_hook(check, with_kwargs=True)
    return handle
