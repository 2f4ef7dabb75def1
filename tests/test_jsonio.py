"""The one result JSON codec: strict JSON out, non-finite floats back in."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from util import jsonio


def test_non_finite_floats_round_trip_as_tagged_values():
    obj = {
        "pos": [1.5, math.inf, -math.inf, math.nan],
        "n": np.int64(3),
        "x": np.float32(0.5),
        "arr": np.array([[1.0, np.inf]]),
        "path": Path("a/b.csv"),
        "t": (1, 2),
    }
    text = jsonio.dumps(obj)
    raw = json.loads(text)  # strict JSON: no NaN / Infinity tokens
    assert raw["pos"] == [1.5, {"$float": "inf"}, {"$float": "-inf"}, {"$float": "nan"}]
    assert raw["arr"] == [[1.0, {"$float": "inf"}]]
    assert raw["n"] == 3 and raw["x"] == 0.5 and raw["path"] == "a/b.csv" and raw["t"] == [1, 2]
    back = jsonio.loads(text)
    assert back["pos"][:3] == [1.5, math.inf, -math.inf] and math.isnan(back["pos"][3])
    with pytest.raises(ValueError):
        json.dumps({"x": math.inf}, allow_nan=False)  # what the codec exists for


@given(st.lists(st.floats(allow_nan=False), max_size=20))
def test_floats_survive_exactly(values):
    assert jsonio.loads(jsonio.dumps({"v": values}))["v"] == values


def test_strings_that_spell_non_finite_floats_stay_strings():
    """A scene named "nan" (or "inf") is a name, not a number, and tags inside user dicts survive."""
    obj = {
        "scenes": {"nan": [0.5, math.inf], "inf": "inf"},
        "names": ["nan", "-inf"],
        "odd": {"$float": "inf"},
        "odder": {"$dict": {"a": 1}},
    }
    back = jsonio.loads(jsonio.dumps(obj))
    assert back["names"] == ["nan", "-inf"] and back["scenes"]["inf"] == "inf"
    assert back["scenes"]["nan"] == [0.5, math.inf]
    assert back["odd"] == {"$float": "inf"} and back["odder"] == {"$dict": {"a": 1}}
