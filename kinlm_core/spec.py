"""The experiment spec: pydantic models, loading with one clear line per problem, ``--set``
overrides and the JSON Schema.

The spec class is built at run time from the installed components: each component field is
``Annotated[Union[<every registered config of that kind>], Field(discriminator="type")]``, so
validation, error messages and the JSON Schema all cover every installed plugin.
"""

from __future__ import annotations

import difflib
import json
import weakref
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from . import userjson
from .api import COMPONENT_KINDS
from .errors import SpecError  # noqa: F401 - raised here, public in kinlm_core
from .userjson import MAX_DEPTH, format_path  # noqa: F401 - one definition, used here and by callers


class TrainConfig(BaseModel):
    """Optimisation and loop settings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_steps: int = Field(1000, gt=0, description="optimizer steps to train")
    batch_size: Union[Annotated[int, Field(gt=0)], Literal["auto"]] = Field(
        16, description='sequences per micro-batch (per rank); "auto": the largest micro-batch that fits on the '
        "device, with train.batch_size_target sequences per optimizer step kept through gradient accumulation")
    batch_size_target: Optional[int] = Field(
        None, gt=0, description='with batch_size "auto": sequences per optimizer step (per rank) = micro-batch x '
        "grad_accum, whatever micro-batch fits; required there, refused otherwise")
    block_size: int = Field(256, gt=1, description="tokens per training sequence (context length)")
    grad_accum: int = Field(1, gt=0, description="micro-batches accumulated per optimizer step")
    lr: float = Field(6e-4, gt=0, description="peak learning rate (AdamW)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr of the cosine decay, as a fraction of lr")
    warmup_steps: int = Field(100, ge=0, description="linear warmup steps")
    schedule: Literal["cosine", "constant", "linear"] = Field("cosine", description="lr schedule after warmup")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay, on the parameters `decay` picks")
    decay: Literal["matrices", "all", "transformers"] = Field(
        "matrices", description='which parameters weight decay reaches: "matrices" (kinlm\'s rule: never norms, '
        'biases, embeddings), "all" (every parameter, as AdamW(model.parameters()) in most research code), '
        '"transformers" (transformers.Trainer\'s rule: all but biases and norm weights, embeddings decayed). '
        "A model's decay_param_names() is decayed under every rule")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm (0 = off)")
    checkpoint_every: int = Field(500, gt=0, description="steps between checkpoints")
    log_every: int = Field(10, gt=0, description="steps between train log lines")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 autocast on a GPU that supports it, else fp32; fp16 = float16 autocast "
        "with a GradScaler (for GPUs without bf16: T4, V100)")
    keep_best: Optional[Literal["eval/loss", "eval/ppl", "eval/bpb", "eval/accuracy"]] = Field(
        None, description='keep the weights of the best evaluation so far as best/ beside final/, by this metric: '
        '"eval/loss", "eval/ppl", "eval/bpb" (lower is better) or "eval/accuracy" (higher is better)')
    compile: bool = Field(False, description="wrap the model in torch.compile")
    async_checkpoint: Optional[bool] = Field(
        None, description="write checkpoints in a background thread from host copies, so training goes on "
        "during the write (None: on for CUDA, off elsewhere)")
    export_final: bool = Field(
        True, description="at the end, write final/ (a transformers folder with a model card, or the model's "
        "safetensors); false: the final checkpoint only, for sweeps of many small runs (`kinlm export RUN` "
        "writes final/ later; eval, generate and resume read the checkpoint either way)")
    device: str = Field("auto", description='"auto", "cpu", "cuda", "cuda:1", ...')

    @model_validator(mode="after")
    def _batch_and_best(self):
        if self.batch_size == "auto":
            if self.batch_size_target is None:
                raise ValueError('batch_size "auto" needs batch_size_target (sequences per optimizer step, per rank)')
            if self.grad_accum != 1:
                raise ValueError('batch_size "auto" chooses grad_accum itself (batch_size_target / micro-batch); '
                                 "leave grad_accum out")
        elif self.batch_size_target is not None:
            raise ValueError('batch_size_target is only used with batch_size "auto"; the step is batch_size x '
                             "grad_accum sequences")
        return self

    @property
    def eval_batch_size(self) -> int:
        """Sequences per evaluation batch: batch_size, or with "auto" (chosen at run time) at most 16."""
        return self.batch_size if self.batch_size != "auto" else min(self.batch_size_target, 16)


BEST_METRICS = {"eval/loss": "min", "eval/ppl": "min", "eval/bpb": "min", "eval/accuracy": "max"}
"""train.keep_best's metrics and which way is better."""


class EvalConfig(BaseModel):
    """Evaluation settings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    every: int = Field(100, gt=0, description="steps between evaluations")
    batches: int = Field(20, gt=0, description="validation batches per evaluation")
    split: Literal["validation", "test"] = Field("validation", description="split evaluated during training")
    early_stop_patience: Optional[int] = Field(None, gt=0, description="stop when this many evaluations in a row "
                                               "have not improved the best eval loss (None: never)")
    early_stop_min_delta: float = Field(0.0, ge=0, description="an improvement smaller than this does not count")


NAME_MAX = 100
"""The longest spec ``name``: the run directory ``NAME-YYYYmmdd-HHMMSS`` and the link's temporary name
``.NAME@latest.PID`` stay far below the file systems' 255 bytes."""


def check_name(name: str) -> str:
    """A spec name that is safe as a file name in the runs folder, or ValueError saying why not: it
    cannot leave the folder (no ``/`` or ``\\``, no leading ``.``, so neither ``.`` nor ``..``), holds no
    control character or lone surrogate, and has at most :data:`NAME_MAX` characters and twice as
    many UTF-8 bytes."""
    if not name:
        raise ValueError("must not be empty")
    bad = next((c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) < 0xE000), None)
    if bad is not None:
        what = "a path separator" if bad in "/\\" else f"a control character ({ascii(bad)})"
        raise ValueError(f"holds {what}; a name is one folder name in the runs folder, e.g. \"my-run\"")
    if name.startswith("."):
        raise ValueError("starts with '.'; a name is a visible folder name in the runs folder, e.g. \"my-run\"")
    if len(name) > NAME_MAX:
        raise ValueError(f"{len(name)} characters; at most {NAME_MAX} (it names the run's directory)")
    if len(name.encode()) > 2 * NAME_MAX:
        raise ValueError(f"{len(name.encode())} bytes in UTF-8; at most {2 * NAME_MAX} (it names the run's directory)")
    return name


RunName = Annotated[str, AfterValidator(check_name)]
NAME_PATTERN = r"^[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]*$"  # check_name's rules but the byte count, for editors

# fields that may differ between a run's saved spec and a resumed one
RESUMABLE_FIELDS = ("train.max_steps", "train.checkpoint_every", "train.log_every", "eval.every",
                    "eval.batches", "generate", "analyzers", "train.device", "train.compile",
                    "train.async_checkpoint", "train.export_final")

_SPEC_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # manager -> its Spec class


def _no_component(kind: str):
    def fail(v):
        raise ValueError(f"no {kind} component is installed")
    return Annotated[dict, AfterValidator(fail)]


def _union(kind: str, classes: list[type]):
    if not classes:
        return _no_component(kind)
    return Annotated[Union[tuple(classes)], Field(discriminator="type")]


def spec_model(manager=None) -> type[BaseModel]:
    """The Spec class for the installed components (cached per manager)."""
    from .plugins import get_manager

    manager = manager or get_manager()
    if manager in _SPEC_CACHE:
        return _SPEC_CACHE[manager]
    fields = {}
    for k in COMPONENT_KINDS:
        u = _union(k.name, list(manager.components(k.name).values()))
        if k.spec == "one":
            fields[k.field] = (u, Field(..., description=k.help))
        elif k.spec == "optional":
            fields[k.field] = (Optional[u], Field(None, description=k.help))
        elif k.spec == "list":
            fields[k.field] = (list[u], Field(default_factory=list, description=k.help))
        else:  # "default:<name>": one, defaulting to that component when it is installed
            default = manager.components(k.name).get(k.spec.split(":", 1)[1])
            fields[k.field] = (u, Field(default_factory=default, description=k.help) if default
                               else Field(..., description=k.help))
    order = ("data", "tokenizer", "model", "objective", "regularizers", "curriculum")
    Spec = create_model(
        "Spec",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False, title="kinlm experiment spec"),
        __doc__="A kinlm experiment. Components are chosen by their `type`.",
        name=(RunName, Field(..., description=f"experiment name: the run directory's (NAME-TIME) and its link's "
                             f"(NAME@latest); 1-{NAME_MAX} characters, no path separator, control character or "
                             f"leading dot", json_schema_extra={"minLength": 1, "maxLength": NAME_MAX,
                                                                "pattern": NAME_PATTERN})),
        seed=(int, Field(1337, description="seed for weights, data order and sampling")),
        requires=(dict[str, str], Field(default_factory=dict,
                  description="distribution -> version specifier that must be installed, e.g. {'kinlm-hamiltonian': '>=0.1'}")),
        **{f: fields[f] for f in order},
        train=(TrainConfig, Field(default_factory=TrainConfig)),
        eval=(EvalConfig, Field(default_factory=EvalConfig)),
        **{f: v for f, v in fields.items() if f not in order},
    )
    _SPEC_CACHE[manager] = Spec
    return Spec


def json_schema(manager=None) -> dict:
    schema = spec_model(manager).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


# --- loading --------------------------------------------------------------------------------


def read_json(path: str | Path) -> dict:
    """Read a spec file into a dict, or raise SpecError with one clear line (``userjson.read``: the
    depth limit, non-finite numbers, the likely cause of invalid JSON)."""
    data = userjson.read(path)
    if not isinstance(data, dict):
        raise SpecError([f"{path}: a spec must be a JSON object, got {_json_type(data)}"])
    return data


def _json_type(v: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(v), type(v).__name__)


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], where: str = "--set") -> dict:
    """Apply ``dotted.path=VALUE`` overrides (VALUE parsed as JSON when it parses, else a string;
    through ``userjson.value``: depth-limited, finite numbers only)."""
    problems = []
    for item in overrides or ():
        if "=" not in item or not item.split("=", 1)[0].strip():
            problems.append(f"{where} {item!r}: expected dotted.path=VALUE")
            continue
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) > MAX_DEPTH:
            problems.append(f"{where} {_shown(item)}: a path {len(parts)} levels deep; at most {MAX_DEPTH} allowed")
            continue
        try:
            parsed = userjson.value(value, f"{where} {_shown(item)}", tuple(parts))
        except SpecError as e:
            problems += e.problems
            continue
        node: Any = data
        try:
            for i, part in enumerate(parts[:-1]):
                if isinstance(node, list):
                    node = node[int(part)]
                else:
                    if not isinstance(node.get(part), (dict, list)):
                        node[part] = {}
                    node = node[part]
            last = parts[-1]
            if isinstance(node, list):
                node[int(last)] = parsed
            else:
                node[last] = parsed
        except (ValueError, IndexError, AttributeError, TypeError):
            problems.append(f"{where} {item!r}: path {key!r} does not exist in the spec")
    if problems:
        raise SpecError(problems)
    return data


def _shown(item: str, limit: int = 80) -> str:
    """An override as a message shows it, on one line: control characters escaped, whole or, when it
    is long, its start."""
    item = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in item)
    return item if len(item) <= limit else item[:limit - 20] + f"... ({len(item):,} characters)"


def validate(data: dict, source: str = "<spec>", manager=None, check_requires: bool = True, overrides=()):
    """Validate a spec dict; return the Spec instance or raise SpecError listing every problem.
    ``overrides``: the ``--set`` items already applied to ``data``; a problem in a value one of
    them set names that ``--set`` instead of ``source``."""
    from .plugins import get_manager

    manager = manager or get_manager()
    Spec = spec_model(manager)
    problems: list[str] = []
    spec = None
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        problems += [f"{_blame(path, source, overrides)}: {line}" for path, line in _format_errors(e, data, manager)]
    if spec is not None:  # every float of the spec, in any config (a plain nested model too), is finite
        problems += [f"{_blame(format_path(loc), source, overrides)}: {format_path(loc)}: {text} is not a finite "
                     f"number" for loc, text in userjson.nonfinite(spec.model_dump())]
        from .composition import problems as composition_problems  # every component's needs against its model's offer

        problems += [f"{_blame(path, source, overrides)}: {path}: {line}" for path, line in composition_problems(spec)]
        if spec.train.keep_best is not None and spec.eval.split == "test":
            problems.append(f"{_blame('train.keep_best', source, overrides)}: train.keep_best: selects on eval.split "
                            f"\"test\"; choosing the best checkpoint on the test split leaks it into the result; "
                            f"evaluate on \"validation\" during training")
    if check_requires and isinstance(data.get("requires"), dict):
        problems += [f"{source}: {line}" for line in check_requirements(data["requires"])]
    if problems:
        raise SpecError(problems)
    return spec


def load_spec(path: str | Path, overrides=(), manager=None, check_requires: bool = True):
    data = read_json(path)
    apply_overrides(data, overrides)
    return validate(data, str(path), manager, check_requires, overrides)


def _blame(path: str, source: str, overrides) -> str:
    """Who set the value at ``path``: ``--set ITEM`` when an override set it (or something inside
    it), ``SOURCE with --set ITEM`` when an override changed a value under it, else ``source``."""
    def under(a, b):
        return a == b or a.startswith(b + ".") or a.startswith(b + "[")

    inside = None
    for item in reversed(list(overrides or ())):
        key = item.split("=", 1)[0].strip()
        kpath = format_path([int(k) if k.isdigit() else k for k in key.split(".")])
        if under(path, kpath):
            return f"--set {_shown(item)}"
        if inside is None and path != "(top level)" and under(kpath, path):
            inside = item
    return f"{source} with --set {_shown(inside)}" if inside else source


def check_requirements(requires: dict) -> list[str]:
    import importlib.metadata as md

    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    out = []
    for dist, spec in requires.items():
        if not isinstance(spec, str):
            continue  # the type error is reported by validation
        try:
            wanted = SpecifierSet(spec)
        except InvalidSpecifier:
            out.append(f"requires.{dist}: {spec!r} is not a version specifier (e.g. '>=0.1')")
            continue
        try:
            have = md.version(dist)
        except md.PackageNotFoundError:
            out.append(f"requires.{dist}: '{dist}' is not installed; run: kinlm install '{dist}{spec}'")
            continue
        if have not in wanted:
            out.append(f"requires.{dist}: installed {have} does not satisfy '{spec}'; "
                       f"run: kinlm install '{dist}{spec}'")
    return out


# --- error formatting ---------------------------------------------------------------------------

_COMPONENT_FIELDS = {k.field: k.name for k in COMPONENT_KINDS}
_LIST_FIELDS = tuple(k.field for k in COMPONENT_KINDS if k.spec == "list")


def _user_path(loc: tuple, manager) -> tuple[list, str | None]:
    """Strip the discriminator tag pydantic puts into locations (model.gpt.n_layer -> model.n_layer)."""
    loc = list(loc)
    kind = _COMPONENT_FIELDS.get(loc[0]) if loc else None
    if kind:
        tag_at = 2 if loc[0] in _LIST_FIELDS else 1
        if len(loc) > tag_at and isinstance(loc[tag_at], str) and loc[tag_at] in manager.components(kind):
            del loc[tag_at]
    return loc, kind


def _lookup(data, loc):
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _format_errors(e: ValidationError, data: dict, manager) -> list[tuple[str, str]]:
    """``(JSON path, line)`` for each error."""
    from .plugins import unknown_message

    lines = []
    failed = manager.failed() if hasattr(manager, "failed") else []
    for err in e.errors():
        loc, kind = _user_path(err["loc"], manager)
        path = format_path(loc)
        t = err["type"]
        inp = err.get("input")
        if t == "union_tag_invalid":
            tag = err["ctx"]["tag"]
            known = manager.components(kind) if kind else {}
            off = manager.disabled.get(kind)  # a name two plugins register
            line = f"{path}.type: {unknown_message(kind or 'component', tag, known, failed, off)}"
        elif t == "value_error" and kind and not manager.components(kind) and isinstance(inp, dict):
            # a kind no installed component provides (_no_component)
            line = f"{path}.type: {unknown_message(kind, inp.get('type'), {}, failed)}"
        elif t == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            got = "" if isinstance(inp, (dict, list)) else f" (got {json.dumps(inp, default=str)[:60]})"
            line = f"{path}: {msg}{got}"
        elif t == "union_tag_not_found":
            known = ", ".join(sorted(manager.components(kind))) if kind else ""
            if not isinstance(inp, dict):
                line = f"{path}: must be an object with a \"type\" (got {_json_type(inp)})"
            else:
                line = f"{path}: missing \"type\"; one of: {known}"
        elif t == "extra_forbidden":
            allowed = _allowed_fields(data, loc, manager)
            msg = f"{path}: unknown field"
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            if close:
                msg += f"; did you mean '{close[0]}'?"
            elif allowed:
                msg += f"; allowed: {', '.join(allowed)}"
            line = msg
        elif t == "missing":
            what = "section" if len(loc) == 1 else "field"
            line = f"{path}: required {what} is missing"
        else:
            line = f"{path}: {err['msg'][0].lower() + err['msg'][1:]} (got {json.dumps(inp, default=str)[:60]})"
        lines.append((path, line))
    return lines


def _allowed_fields(data, loc, manager) -> list[str]:
    parent_loc = loc[:-1]
    if not parent_loc:
        return list(spec_model(manager).model_fields)
    if parent_loc[0] == "train":
        return list(TrainConfig.model_fields)
    if parent_loc[0] == "eval":
        return list(EvalConfig.model_fields)
    kind = _COMPONENT_FIELDS.get(parent_loc[0])
    node = _lookup(data, parent_loc)
    if kind and isinstance(node, dict):
        cls = manager.components(kind).get(node.get("type"))
        if cls is not None:
            return list(cls.model_fields)
    return []


def dump(spec) -> dict:
    """The fully resolved spec as plain JSON data (what a run directory keeps)."""
    return spec.model_dump(mode="json")


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "(top level)"]
