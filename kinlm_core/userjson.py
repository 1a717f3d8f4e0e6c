"""The one way kinlm parses JSON a user wrote: spec and claim files, ``--set``, ``--set-grid`` and
``--opt`` values. Torch- and pydantic-free.

Every parse here

- refuses nesting deeper than :data:`MAX_DEPTH` before parsing (json's C parser recurses: a
  100,000-deep file would raise ``RecursionError``),
- refuses non-finite numbers (``NaN``, ``Infinity``, ``-Infinity``, and numbers too large for a
  float such as ``1e309``), naming each one's JSON path,
- reports a problem as one line in a :class:`~kinlm_core.errors.SpecError` that starts with where
  the text came from (the file, or the ``--set`` item).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .errors import SpecError

MAX_DEPTH = 64
"""The deepest nesting of arrays and objects accepted in any user JSON."""


def depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text (brackets inside strings do not count); a
    plain loop, safe on any input."""
    d = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            d += 1
            best = max(best, d)
        elif ch in "]}":
            d -= 1
    return best


def format_path(loc) -> str:
    """A JSON path as the spec's messages write it: ``model.layers[2].d``; empty: ``(top level)``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


class _NonFinite(float):
    """A non-finite number as parsed, keeping its literal text for the message."""

    text = ""


def _non_finite(text: str, value: float) -> float:
    if math.isfinite(value):
        return value
    out = _NonFinite(value)
    out.text = text
    return out


def _parse(text: str) -> Any:
    return json.loads(text, parse_float=lambda s: _non_finite(s, float(s)),
                      parse_constant=lambda s: _non_finite(s, float(s)))


def nonfinite(value: Any, loc: tuple = ()) -> list[tuple[tuple, str]]:
    """``(JSON path, literal)`` of every non-finite float in ``value`` (dicts, lists and tuples are
    searched; anything else is a leaf)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [(loc, getattr(value, "text", "") or repr(value))]
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in nonfinite(v, (*loc, k))]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in nonfinite(v, (*loc, i))]
    return []


def nonfinite_problems(value: Any, where: str, base: tuple = ()) -> list[str]:
    """One line per non-finite number in ``value``: ``WHERE: PATH: LITERAL is not a finite number``."""
    return [f"{where}: {format_path((*base, *loc))}: {text} is not a finite number" for loc, text in nonfinite(value)]


def _check(value: Any, where: str, base: tuple = ()) -> Any:
    problems = nonfinite_problems(value, where, base)
    if problems:
        raise SpecError(problems)
    return value


def _too_deep(text: str, where: str) -> None:
    d = depth(text)
    if d > MAX_DEPTH:
        raise SpecError([f"{where}: nesting {d} levels deep; at most {MAX_DEPTH} allowed"])


def read(path: str | Path, what: str = "a spec") -> Any:
    """The JSON value in the file ``path``, or :class:`SpecError` with one line naming the file:
    missing (with nearby names), a folder, not UTF-8, empty, too deep, invalid JSON (with its
    likely cause and the line to fix), a number too long, or a non-finite number."""
    p = Path(path)
    if not p.exists():
        from .rundir import did_you_mean

        raise SpecError([f"{path}: file not found{did_you_mean(p)}"])
    if p.is_dir():
        raise SpecError([f"{path}: is a directory, not {what} file"])
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise SpecError([f"{path}: cannot read ({e.strerror or e})"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError([f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"]) from None
    if not text.strip():
        raise SpecError([f"{path}: empty file; {what} is a JSON object"])
    _too_deep(text, str(path))
    try:
        data = _parse(text)
    except json.JSONDecodeError as e:
        raise SpecError([f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
                         f"{_json_cause(path, text, e)}"]) from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise SpecError([f"{path}: a number too long ({str(e).split(':')[0]})"]) from None
    except RecursionError:  # not reached below MAX_DEPTH; kept so no traceback can escape
        raise SpecError([f"{path}: nesting too deep"]) from None
    return _check(data, str(path))


def value(text: str, where: str, base: tuple = ()) -> Any:
    """A command-line VALUE (``--set PATH=VALUE``, ``--opt KEY=VALUE``): its JSON value when it
    parses as JSON, else the text itself as a string. Too deep or non-finite: :class:`SpecError`
    naming ``where``; ``base``: the JSON path the value goes to (for the message)."""
    _too_deep(text, where)
    try:
        parsed = _parse(text)
    except ValueError:  # JSONDecodeError included: the value is a plain string
        return text
    except RecursionError:
        raise SpecError([f"{where}: nesting too deep"]) from None
    return _check(parsed, where, base)


def _json_cause(path, text: str, e: json.JSONDecodeError) -> str:
    """The likely cause of a JSON error, with the file:line where to fix it (or "")."""

    def where(pos: int) -> str:
        return f"{path}:{text.count(chr(10), 0, pos) + 1}"

    before = text[:e.pos].rstrip()
    nxt = text[e.pos:e.pos + 1]
    if before.endswith(",") and nxt in "}]":
        return f"; likely cause: a trailing comma at {where(len(before) - 1)} (JSON allows none before '{nxt}')"
    if text[e.pos:e.pos + 2] in ("//", "/*") or (nxt == "#" and e.msg.startswith("Expecting")):
        return f"; likely cause: a comment at {where(e.pos)} (JSON has no comments)"
    if nxt == "'":
        return f"; likely cause: single quotes at {where(e.pos)} (JSON strings and keys take double quotes)"
    word = re.match(r"[A-Za-z_]+", text[e.pos:])
    if word and word.group() in ("True", "False", "None", "NaN", "Infinity"):
        fix = {"True": "true", "False": "false", "None": "null"}.get(word.group(), "a number or a string")
        return f"; likely cause: {word.group()} at {where(e.pos)} (JSON writes {fix})"
    if word and e.msg.startswith("Expecting property name"):
        return f"; likely cause: an unquoted key at {where(e.pos)} (write \"{word.group()}\")"
    if e.msg.startswith("Expecting ',' delimiter") and before and text.count("\n", len(before), e.pos):
        return f"; likely cause: a missing comma at the end of {where(len(before) - 1)}"
    if e.msg.startswith("Extra data"):
        return f"; likely cause: text after the spec's closing '}}' at {where(e.pos)}"
    return ""


__all__ = ["MAX_DEPTH", "depth", "format_path", "nonfinite", "nonfinite_problems", "read", "value"]
