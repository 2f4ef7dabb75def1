"""The one JSON codec for results: strict JSON (no NaN/Infinity tokens), non-finite floats kept as tagged objects.

JSON has no inf or NaN, and an unlocalised frame's error is inf (see util.metrics). :func:`encode` writes a
non-finite float as ``{"$float": "inf"}`` (``"-inf"``, ``"nan"``), an object no string can be confused with
(a scene named "nan" stays a string); :func:`decode` turns those objects back into floats. A dict that itself
has the single key ``$float`` or ``$dict`` is wrapped as ``{"$dict": ...}``, so every value round-trips. numpy
scalars and arrays become plain numbers and lists, tuples lists, paths strings. Every
result file (caches, summaries, the data embedded in HTML reports) goes through :func:`dumps`.
"""

from __future__ import annotations

import json
import math
from pathlib import PurePath

import numpy as np

_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_TAGS = ("$float", "$dict")


def encode(obj):
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(obj, (np.generic, np.ndarray)):
        obj = obj.tolist()
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return {"$float": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, dict):
        out = {str(k): encode(v) for k, v in obj.items()}
        return {"$dict": out} if len(out) == 1 and next(iter(out)) in _TAGS else out
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def decode(obj):
    """Inverse of :func:`encode`: tagged non-finite floats become floats again, strings stay strings."""
    if isinstance(obj, dict):
        if len(obj) == 1 and "$float" in obj and obj["$float"] in _NON_FINITE:
            return _NON_FINITE[obj["$float"]]
        if len(obj) == 1 and isinstance(obj.get("$dict"), dict):
            return {k: decode(v) for k, v in obj["$dict"].items()}
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
