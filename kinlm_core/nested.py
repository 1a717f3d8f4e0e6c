"""Nested component configs: a config field that embeds another component's config, chosen by its
``"type"`` (a wrapper's ``inner`` model, a phase's ``objective``). Torch-free.

    InnerModel = NestedConfig("model", exclude=("diff_wrapper",), owner="a diff_wrapper")

    class DiffWrapperConfig(ModelConfig):
        inner: InnerModel = Field(..., description="the wrapped model")

The field is validated through the registry as that component's own config, and every problem is
one line with its JSON path, the same wording as a top-level component's (``spec.py``):

    model.inner: must be an object with a "type", e.g. {"type": "gpt"} (got "gpt")
    model.inner: missing "type"; one of: gpt, hamiltonian, ...
    model.inner.type: unknown model type 'gtp'; known: ...; did you mean 'gpt'?
    model.inner.type: a diff_wrapper cannot wrap a diff_wrapper
    model.inner.n_layer: input should be greater than 0 (got 0)

The value is kept as the config instance and serialised with all of its fields.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import SerializeAsAny, ValidationError, WithJsonSchema, WrapValidator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .api import BASES


_EXAMPLES = {"model": "gpt", "objective": "causal_lm", "tokenizer": "byte"}


def _problem(message: str) -> PydanticCustomError:
    # a value_error with a plain message (no template fields): spec.py prints it after the JSON path
    return PydanticCustomError("value_error", "{message}", {"message": message})


def validate_nested(kind: str, value: Any, exclude: tuple[str, ...] = (), owner: str = "") -> Any:
    """``value`` (a dict with a ``"type"``, or a config instance) -> the registered ``kind`` config it
    names, validated. Raises pydantic errors located at the field (or at its ``type``), never a bare
    exception: a validator that calls this reports one line per problem with the JSON path."""
    from .plugins import RegistryError, get_manager

    base = BASES[kind]
    if isinstance(value, base):
        name = value.component_name()
    elif isinstance(value, dict) and "type" in value:
        name = value["type"]
    else:
        manager = get_manager()
        known = ", ".join(sorted(manager.components(kind)))
        if isinstance(value, dict):
            raise _problem(f'missing "type"; one of: {known}')
        example = _EXAMPLES.get(kind) or next(iter(sorted(manager.components(kind))), "...")
        raise _problem(f'must be an object with a "type", e.g. {{"type": "{example}"}}')
    where = owner or "this component"
    try:
        if name in exclude:
            raise RegistryError(f"{where} cannot hold a {name}")
        cls = get_manager().get(kind, str(name))
    except RegistryError as e:
        raise ValidationError.from_exception_data(base.__name__, [InitErrorDetails(
            type=_problem(str(e)), loc=("type",), input=value)]) from None
    return value if isinstance(value, cls) else cls.model_validate(value)


def NestedConfig(kind: str, exclude: tuple[str, ...] = (), owner: str = "") -> Any:
    """The annotation of a field that holds one ``kind`` config chosen by its ``"type"`` (``exclude``:
    types it may not hold; ``owner``: the holding component's name, for that error)."""
    def check(value, handler):
        return validate_nested(kind, value, exclude, owner)

    schema = {"type": "object", "required": ["type"],
              "description": f"a {kind} config, chosen by its \"type\" (kinlm list {kind})"}
    return Annotated[SerializeAsAny[BASES[kind]], WrapValidator(check), WithJsonSchema(schema)]


__all__ = ["NestedConfig", "validate_nested"]
