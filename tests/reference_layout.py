"""Reference checkpoint layouts (the ``<model>_<dataset>.tsv`` fact tables) for tests.

A layout is the ordered list of ``(name, shape, dtype)`` entries of a state_dict written by the
reference implementation. Tests compare our models' state_dicts with it and build random
state_dicts from it to prove that reference checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# The tables ship with the tests (copied from the reference layouts); a missing one is a failure, not a skip.
LAYOUT_DIR = REPO_ROOT / "tests" / "data" / "reference_checkpoints"
DATASETS = ("7Scenes", "CambridgeLandmarks")

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


class LayoutEntry(NamedTuple):
    """One state_dict entry of a reference checkpoint."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def layout_path(model_name: str, dataset: str) -> Path:
    """Path of ``<model>_<dataset>.tsv``."""
    path = LAYOUT_DIR / f"{model_name}_{dataset}.tsv"
    assert path.is_file(), f"missing reference table {path}"
    return path


def read_layout(path: str | os.PathLike) -> list[LayoutEntry]:
    """Parse a layout table into its ordered entries (comment lines skipped)."""
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape, dtype = line.split("\t")
        dims = shape.strip()[1:-1]
        entries.append(
            LayoutEntry(name, tuple(int(d) for d in dims.split(",")) if dims else (), _DTYPES[dtype.strip()])
        )
    return entries


def read_layout_header(path: str | os.PathLike) -> dict[str, int]:
    """The integer ``key=value`` facts of the comment lines, e.g. ``total_params``."""
    facts = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            facts.update({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)(?=\s|$)", line)})
    return facts


def state_dict_layout(state_dict) -> list[LayoutEntry]:
    """The layout of a state_dict, in its order, for comparison with :func:`read_layout`."""
    return [LayoutEntry(k, tuple(v.shape), v.dtype) for k, v in state_dict.items()]


def random_state_dict(layout: list[LayoutEntry], seed: int = 0) -> OrderedDict:
    """A state_dict with the given layout and random, numerically tame values.

    Weights get a 1/sqrt(fan_in) scale so activations stay finite through deep stacks; BatchNorm
    running variances are positive; integer counters are small non-negative numbers.
    """
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for name, shape, dtype in layout:
        if not dtype.is_floating_point:
            value = torch.randint(0, 1000, shape, generator=gen).to(dtype)
        elif name.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=gen)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            value = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        elif name.endswith("weight"):  # BatchNorm/LayerNorm scale
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:  # biases, running means, embeddings of rank 1
            value = 0.1 * torch.randn(shape, generator=gen)
        state[name] = value.to(dtype)
    return state
