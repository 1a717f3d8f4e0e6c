"""The diagnostic suite's tasks and architectures: data that plugins register through the
``kinlm_diagnostics`` hook (the core registers its own in kinlm_core/builtins/diagnostics.py).

An entry is a plain dict. An **architecture**::

    {"architecture": "linear_attention",            # the name on the page and in --archs
     "model": {"type": "linear_attention", ...},     # the model spec the suite trains (CPU-tier size)
     "regularizers": [...],                          # optional: a method that is a regularizer
     "family": "fixed",                              # attention | fixed (fixed-size state) | other
     "state_knob": "feature_dim",                    # fixed: the model field the state-size curve sweeps
     "state_sizes": {"cpu": [2, 4, 8, 16]},          # its values per tier (at least 4 for the curve)
     "state_numbers": callable(model_dict, seq_len) -> int,   # numbers carried per sequence
     "skip": {"cpu": "why"}}                         # tiers that leave it out (--archs runs it anyway)

A **task** (a small config over a data source that writes documents as the ``synthetic`` source
does: T input ids then T label ids, trained with the ``ids`` tokenizer and ``supervised`` objective)::

    {"task": "associative_recall", "data": {"type": "synthetic", "task": "associative_recall"},
     "tiers": {"cpu": {"data": {...}, "knob": "num_kv_pairs", "levels": [2, 4, 8], "chance": 0.008,
                       "retune": {"ceiling": [[...], [...]], "chance": [[...]]}, "state_level": 4}},
     "readout": null | "compression", "state_curve": true}

Problems (a failing hook, a bad entry, a name registered twice) are collected one per line; the
other entries are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class ArchEntry(_Entry):
    architecture: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    about: str = ""
    model: dict
    regularizers: list[dict] = []
    family: Literal["attention", "fixed", "other"] = "other"
    state_knob: Optional[str] = None
    state_sizes: dict[str, list] = {}
    state_numbers: Optional[Callable[[dict, int], int]] = None
    skip: dict[str, str] = {}
    dist: str = ""

    @model_validator(mode="after")
    def _state(self):
        if self.state_sizes and not self.state_knob:
            raise ValueError("state_sizes needs a state_knob (the model field they set)")
        return self

    def state_bytes(self, model: dict, seq_len: int, bytes_per_number: int = 4) -> Optional[int]:
        """Bytes carried from token to token per sequence (fp32), or None when the entry gives no formula."""
        if self.state_numbers is None:
            return None
        return int(self.state_numbers(model, seq_len)) * bytes_per_number


class TaskTier(_Entry):
    data: dict = {}
    knob: str
    levels: list = Field(..., min_length=1)
    chance: float = Field(0.0, ge=0, le=1, description="accuracy of guessing (for the at-chance check)")
    retune: dict[Literal["ceiling", "chance"], list[list]] = {}
    state_level: Any = None


class TaskEntry(_Entry):
    task: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    about: str = ""
    data: dict
    tiers: dict[str, TaskTier]
    readout: Optional[Literal["compression"]] = None
    state_curve: bool = False
    dist: str = ""

    def longest(self, tier: str, levels: list | None = None) -> int:
        """The longest sequence of the task in a tier (the knob's levels included when the knob is seq_len)."""
        t = self.tiers[tier]
        lv = levels if levels is not None else t.levels
        return max([int({**self.data, **t.data}.get("seq_len") or 0), *(lv if t.knob == "seq_len" else [])])


@dataclass
class Registry:
    tasks: dict[str, TaskEntry] = field(default_factory=dict)
    archs: dict[str, ArchEntry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _one_line(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" if x["loc"] else x["msg"] for x in e.errors())


def from_entries(entries_by_dist: list[tuple[str, list]]) -> Registry:
    """A registry from (distribution, entries) pairs: each entry checked, the first of a name kept."""
    reg = Registry()
    for dist, entries in entries_by_dist:
        for i, e in enumerate(entries or []):
            kind = "architecture" if isinstance(e, dict) and "architecture" in e else \
                "task" if isinstance(e, dict) and "task" in e else None
            if kind is None:
                reg.problems.append(f"{dist}: kinlm_diagnostics entry {i}: expected a dict with the key "
                                    f"'architecture' or 'task'")
                continue
            try:
                entry = (ArchEntry if kind == "architecture" else TaskEntry).model_validate({**e, "dist": dist})
            except ValidationError as err:
                reg.problems.append(f"{dist}: {kind} {e.get(kind)!r}: {_one_line(err)}")
                continue
            table = reg.archs if kind == "architecture" else reg.tasks
            name = e[kind]
            if name in table:
                reg.problems.append(f"{kind} '{name}' is registered twice: by {table[name].dist} and {dist} "
                                    f"(the first is kept)")
                continue
            table[name] = entry
    return reg


def collect(manager=None) -> Registry:
    """Every task and architecture the installed plugins register (``kinlm_diagnostics``)."""
    if manager is None:
        from ..plugins import get_manager

        manager = get_manager()
    pairs, problems = [], []
    for impl in manager.pm.hook.kinlm_diagnostics.get_hookimpls():
        try:
            pairs.append((impl.plugin_name, impl.function()))
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the others
            problems.append(f"{impl.plugin_name}: kinlm_diagnostics failed: {type(e).__name__}: {e}")
    reg = from_entries(pairs)
    reg.problems[:0] = problems
    return reg
