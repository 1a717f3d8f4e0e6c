"""Which component composes with which model: the capability contract, checked before a run starts
(torch-free).

Models declare what they offer on their config (``ModelConfig.provides``: capability -> what it is in
that model; ``lacks``: capability -> why it cannot have it); components declare what they need
(``requires``, a class attribute of any component config). The contract's capabilities:

- ``hidden_states``: ``forward(output_hidden_states=True)`` returns one (B, T, C) state per layer in
  ``ModelOutput.hidden_states`` (every model; the conformance kit checks it).
- ``input_embeddings``: ``get_input_embeddings()`` returns the module that maps token ids (B, T) to the
  input vectors (B, T, C) and is called in forward (transformers' convention; ``set_input_embeddings``
  is its pair).
- ``blocks``: block lists whose modules map the states of the whole sequence (B, T, C) -> (B, T, C),
  one call per forward: ``block_lists()`` or ModuleLists named blocks / layers / h.

A model may also declare capabilities of its own (cvfp's ``cvfp_parts``, what its curriculum needs);
a wrapper's config passes its inner model's contract capabilities on (its ``capabilities()``), never
the inner model's own ones (the wrapper hides its attributes). :func:`problems` is the one check: ``kinlm_core.spec.validate`` calls
it, so ``kinlm validate`` and ``kinlm run`` refuse a spec (exit 2, nothing written) where

- a component requires a capability its model lacks (a wrapper: its ``inner``; a regularizer,
  curriculum, objective or analyzer: the spec's model), or
- the spec names regularizers and its curriculum applies none of them (``ignores_regularizers``).

:func:`cell` gives one (model, component) pair's verdict from the same declarations; the docs table
(docs/composition.md, ``tools/gen_composition_doc.py``) and tests/test_composition.py read it.
"""

from __future__ import annotations

from .api import ComponentConfig, ModelConfig

CAPABILITIES = {
    "hidden_states": "`forward(output_hidden_states=True)` returns one (B, T, C) state per layer "
                     "(`ModelOutput.hidden_states`)",
    "input_embeddings": "`get_input_embeddings()`: the module mapping token ids (B, T) to the input vectors "
                        "(B, T, C), called in forward (transformers' convention)",
    "blocks": "block lists whose modules map the whole sequence's states (B, T, C) -> (B, T, C) once per "
              "forward (`block_lists()`, or ModuleLists named blocks, layers or h)",
}
"""The contract's capabilities (a wrapper passes these on from its inner model)."""

BLOCK_LIST_NAMES = ("blocks", "layers", "layer", "block", "h")
"""Names of the ModuleLists taken as block lists when a model declares no ``block_lists()``."""

FIRST_PARTY_MODELS = ("gpt", "llama_like", "hamiltonian", "context_vector", "cvfp", "t5", "transformers",
                      "conv_attention")
"""The rows of the published matrix (docs/composition.md)."""

COMPONENTS = ("diff_wrapper", "vt_embeddings", "accel_penalty")
"""Its columns: the first-party wrappers and regularizers that act on another model."""


def nested_models(cfg: ComponentConfig) -> list[tuple[str, ModelConfig]]:
    """(field name, config) of every model config held in ``cfg``'s fields (a wrapper's ``inner``)."""
    return [(name, getattr(cfg, name)) for name in type(cfg).model_fields
            if isinstance(getattr(cfg, name, None), ModelConfig)]


def model_capabilities(cfg: ModelConfig) -> set[str]:
    """What the configured model offers (``cfg.capabilities()``; a ``ModelWrapper``'s config returns its
    inner model's contract capabilities, ``self.inner.capabilities() & set(CAPABILITIES)``)."""
    return set(cfg.capabilities())


def describe_model(cfg: ModelConfig) -> str:
    """``gpt``, or ``vt_embeddings(hamiltonian)`` for a wrapper."""
    inner = nested_models(cfg)
    name = cfg.component_name()
    return f"{name}({', '.join(describe_model(m) for _, m in inner)})" if inner else name


def refusal(model: ModelConfig, component: ComponentConfig) -> str | None:
    """Why ``component`` cannot act on ``model`` (one line), or None when it can."""
    missing = [c for c in component.requires if c not in model_capabilities(model)]
    if not missing:
        return None
    c = missing[0]
    why = _lacks(model, c)
    what = CAPABILITIES.get(c, "not a contract capability; a model offers it by naming it in its config's provides")
    return (f"{component.component_name()} needs {c} of the model, and {describe_model(model)} lacks it"
            f"{': ' + why if why else ''} ({c}: {what})")


def _lacks(model: ModelConfig, capability: str) -> str:
    """The declared reason a model (or the model it wraps) lacks ``capability``, or ''."""
    if capability in model.lacks:
        return model.lacks[capability]
    for _, inner in nested_models(model):
        why = _lacks(inner, capability)
        if why:
            return why
    return ""


def problems(spec) -> list[tuple[str, str]]:
    """(JSON path, one-line message) for every composition in ``spec`` that cannot work."""
    out = []

    def walk(model: ModelConfig, path: str):
        for name, inner in nested_models(model):
            why = refusal(inner, model)
            if why:
                out.append((f"{path}.type", why))
            walk(inner, f"{path}.{name}")

    walk(spec.model, "model")
    users = [("objective", spec.objective), ("curriculum", spec.curriculum),
             *((f"regularizers[{i}]", r) for i, r in enumerate(spec.regularizers)),
             *((f"analyzers[{i}]", a) for i, a in enumerate(spec.analyzers))]
    for path, comp in users:  # components that act on the spec's model
        why = refusal(spec.model, comp) if comp is not None else None
        if why:
            out.append((f"{path}.type", why))
    cur = spec.curriculum
    if cur is not None and cur.ignores_regularizers:
        for i, reg in enumerate(spec.regularizers):
            out.append((f"regularizers[{i}].type", f"{reg.component_name()} would never act: curriculum "
                        f"{cur.component_name()} applies no regularizers ({cur.ignores_regularizers})"))
    return out


# --- the published matrix -----------------------------------------------------------------------


ACTS_ON = {"input_embeddings": "VT of the input embedding's output", "blocks": "each block's output mixed with "
           "its first and second differences over time", "hidden_states": "second differences over time of the "
           "hidden states (default layers 1, L//2+1, L)"}
"""What a component needing this capability does, in the table's column header."""


def cell(model_cls: type[ModelConfig], component_cls: type[ComponentConfig]) -> tuple[bool, str]:
    """(acts, text) of one pair from the declarations: what the component acts on inside the model, or
    why it is refused."""
    for c in component_cls.requires:
        if c not in model_cls.provides:
            why = model_cls.lacks.get(c, "")
            return False, f"refused: lacks {c}" + (f" ({why})" if why else "")
    c = component_cls.requires[0] if component_cls.requires else "hidden_states"
    return True, f"acts on {model_cls.provides.get(c, c)}"


def curriculum_notes(manager=None) -> list[str]:
    """One markdown line per installed curriculum that refuses something: the regularizers it never
    applies, the capabilities it needs of the model (a wrapper hides a model's own ones)."""
    from .plugins import get_manager

    manager = manager or get_manager()
    out = []
    for name, cls in sorted(manager.components("curriculum").items()):
        if cls.requires:
            out.append(f"- **{name}** needs `{'`, `'.join(cls.requires)}` of the model: a model of its own that "
                       "declares it, not wrapped (a wrapper passes on only the contract's capabilities).")
        if cls.ignores_regularizers:
            out.append(f"- **{name}** refuses regularizers: {cls.ignores_regularizers}.")
    return out


def table(manager=None) -> str:
    """The matrix as a markdown table: FIRST_PARTY_MODELS x COMPONENTS (installed ones)."""
    from .plugins import get_manager

    manager = manager or get_manager()
    models, comps = manager.components("model"), {}
    for kind in ("model", "regularizer"):
        comps.update({n: c for n, c in manager.components(kind).items() if n in COMPONENTS})
    cols = [n for n in COMPONENTS if n in comps]
    def head(n):
        need = comps[n].requires
        return f"{n}: {ACTS_ON.get(need[0], '') if need else ''} (needs `{'`, `'.join(need)}`)"

    rows = ["| model | " + " | ".join(head(n) for n in cols) + " |",
            "|---" * (len(cols) + 1) + "|"]
    for m in FIRST_PARTY_MODELS:
        if m in models:
            rows.append(f"| {m} | " + " | ".join(cell(models[m], comps[n])[1].replace("|", "/") for n in cols) + " |")
    return "\n".join(rows)


__all__ = ["BLOCK_LIST_NAMES", "CAPABILITIES", "COMPONENTS", "FIRST_PARTY_MODELS", "cell", "model_capabilities", "problems",
           "refusal", "table", "curriculum_notes"]
