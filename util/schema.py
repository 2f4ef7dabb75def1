"""The schema engine of configs: how one key is described (:class:`Key`) and how a value is checked against it.

It knows nothing of models or of any particular key: the keys every model has are in ``util/config.py``,
each model's own in its registry entry (``models/registry.py``), and ``models/config.py`` puts them together
into the effective config of a model.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from util.errors import UserError


@dataclass(frozen=True)
class Key:
    """One config key: its default, JSON type, an optional range check, and whether null is allowed."""

    default: Any
    kind: str  # "int", "float", "bool", "str" or "str_list"
    check: Callable[[Any], str | None] | None = None  # returns what is wrong, or None
    nullable: bool = False
    scalar_as_list: bool = False  # a "str_list" key also takes one bare string
    doc: str = ""
    lowercase: bool = False  # a "str" key is stripped and lower-cased before its check (device_id, backbone_type)


def greater(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > lo else f"must be > {lo:g}"


def at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo:g}"


def check_fraction(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def check_dropout(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def one_of(*options: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else "must be " + " or ".join(f"'{o}'" for o in options)


INT_GE1 = dict(kind="int", check=at_least(1))

_KIND_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "str_list": "a list of strings",
}


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def closest_key(key: str, valid: tuple[str, ...], synonyms: Mapping[str, str] | None = None) -> str | None:
    """The valid key ``key`` most likely meant (by spelling or one of ``synonyms``), if any is close."""
    candidates = {k.lower(): k for k in valid}
    for synonym, target in (synonyms or {}).items():
        if target in valid:
            candidates.setdefault(synonym, target)
    match = difflib.get_close_matches(key.lower(), list(candidates), n=1, cutoff=0.6)
    return candidates[match[0]] if match else None


def coerce(key: str, spec: Key, value: Any, where: str) -> Any:
    """``value`` checked against the type and range of ``key``, as the effective config stores it."""
    if value is None and spec.nullable:
        return None
    kind, ok = spec.kind, False
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise UserError(f"{where}: '{key}' must be a finite number, got {value}")
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "str_list":
        if isinstance(value, str) and spec.scalar_as_list:
            value = [value]
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = list(value) if ok else value
    if not ok:
        expected = _KIND_NAMES[kind] + (" or null" if spec.nullable else "")
        raise UserError(
            f"{where}: '{key}' must be {expected}, got {json.dumps(value, default=str)} ({json_type(value)})"
        )
    if kind == "str" and spec.lowercase:
        value = value.strip().lower()
    problem = spec.check(value) if spec.check else None
    if problem:
        raise UserError(f"{where}: '{key}' {problem}, got {json.dumps(value)}")
    return value
