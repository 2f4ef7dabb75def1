"""Fuzzing the two readers of user files: every input is a valid result or a UserError, nothing else."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datasets.labels import LABEL_COLUMNS, POSE_COLUMNS, read_labels
from models.config import accepted_keys, defaults, load_config
from util.errors import UserError

# Example counts come from the hypothesis profile (tests/conftest.py).
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEADER = ",".join(LABEL_COLUMNS)


def _read_labels_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.csv"
        path.write_bytes(data)
        try:
            labels = read_labels(path)
        except UserError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip(), repr(str(exc))
            return None
    assert list(labels.columns) == LABEL_COLUMNS and len(labels) > 0
    pose = labels[POSE_COLUMNS].to_numpy(dtype=float)
    assert all(math.isfinite(v) for v in pose.ravel())
    assert all(abs(sum(q * q for q in row) - 1) < 1e-6 for row in pose[:, 3:])
    return labels


@FUZZ
@given(st.binary(max_size=2000))
def test_label_reader_on_random_bytes(data):
    _read_labels_bytes(data)


_cell = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "-1",
            "1e309",
            "nan",
            "inf",
            "-0",
            "0.5",
            "1,2",
            '"',
            '""',
            "a,b",
            " ",
            "\t",
            "chess",
            "seq-01",
            "x/y.png",
            "../a.png",
            "/abs.png",
            "1e-320",
            "0x10",
            "１",
            "\ufeff",
        ]
    ),
    st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
_row = st.lists(_cell, min_size=0, max_size=13).map(",".join)


@FUZZ
@given(
    header=st.one_of(
        st.just(HEADER),
        st.just(HEADER.upper()),
        st.just(HEADER + ",extra"),
        st.just(",".join(reversed(LABEL_COLUMNS))),
        _row,
    ),
    rows=st.lists(_row, max_size=8),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
)
@example(header='",', rows=[',"'], newline="\n")  # found by a longer run: a quoted newline in the header
def test_label_reader_on_csv_like_text(header, rows, newline):
    text = newline.join([header, *rows]) + newline
    _read_labels_bytes(text.encode("utf-8"))


def _load_config_bytes(data: bytes, model: str = "hyperpose"):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_bytes(data)
        try:
            config = load_config(path, model)
        except UserError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip(), repr(str(exc))
            return None
    assert config["model_name"] == model
    return config


@FUZZ
@given(st.binary(max_size=1000))
def test_config_loader_on_random_bytes(data):
    _load_config_bytes(data)


_json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
_key = st.one_of(st.sampled_from(accepted_keys("hyperpose") + accepted_keys("mshyperpose")), st.text(max_size=12))
_section = st.dictionaries(_key, _json_value, max_size=6)


@FUZZ
@given(
    sections=st.dictionaries(
        st.sampled_from(["general", "hyperpose", "mshyperpose", "posenet", "other", ""]),
        st.one_of(_section, _json_value),
        max_size=4,
    ),
    model=st.sampled_from(["hyperpose", "mshyperpose", "effposenet"]),
)
@example(sections={"general": {"\n": None}}, model="hyperpose")  # found by a longer run: a newline as key
def test_config_loader_on_random_json(sections, model):
    config = _load_config_bytes(json.dumps(sections).encode(), model)
    if config is not None:  # whatever was accepted is a complete, typed config
        assert set(defaults(model)) <= set(config)


@FUZZ
@given(values=st.dictionaries(st.sampled_from(accepted_keys("hyperpose")), _json_value, max_size=5))
def test_config_loader_on_valid_keys_with_random_values(values):
    _load_config_bytes(json.dumps({"hyperpose": values}).encode())


def test_the_fuzzed_readers_accept_good_input():
    good = HEADER + "\nchess,train,seq-01,a.png,1,2,3,1,0,0,0\n"
    assert len(_read_labels_bytes(good.encode())) == 1
    assert _load_config_bytes(json.dumps({"hyperpose": {"lr": 0.01}}).encode())["lr"] == 0.01
