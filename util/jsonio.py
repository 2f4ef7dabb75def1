"""The one JSON codec for results: strict JSON (no NaN/Infinity tokens), non-finite floats kept as strings.

JSON has no inf or NaN, and an unlocalised frame's error is inf (see util.metrics). :func:`encode` writes a
non-finite float as the string ``"inf"``, ``"-inf"`` or ``"nan"``; :func:`decode` turns those strings back
into floats. numpy scalars and arrays become plain numbers and lists, tuples lists, paths strings. Every
result file (caches, summaries, the data embedded in HTML reports) goes through :func:`dumps`.
"""
from __future__ import annotations

import json
import math
from pathlib import PurePath

import numpy as np

_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def encode(obj):
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(obj, (np.generic, np.ndarray)):
        obj = obj.tolist()
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def decode(obj):
    """Inverse of :func:`encode` for the floats: ``"inf"``, ``"-inf"`` and ``"nan"`` become floats again."""
    if isinstance(obj, str):
        return _NON_FINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """Strict JSON text of ``obj`` (see :func:`encode`)."""
    return json.dumps(encode(obj), allow_nan=False, **kwargs)


def loads(text: str):
    """Parse JSON written by :func:`dumps`, non-finite floats restored."""
    return decode(json.loads(text))
