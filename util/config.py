"""The model-free part of configs: the keys every model has, the checks between them, and reading a file.

A config file holds a ``general`` section (printing, checkpointing, workers, device) and one section per
model name, as the reference ``configs/*.json`` do. This module reads such a file (:func:`read_config_file`)
and holds the keys of ``general`` and of the training recipe, which every model has. The schema engine
(:class:`util.schema.Key`) is in ``util/schema.py``; each model's own keys, defaults, accepted backbones and
checks between its keys are in its entry in ``models/registry.py``; ``models/config.py`` merges the sections,
validates them and gives the effective config of a model (``load_config``). ``docs/configs.md`` describes
every key.

``python -m util.config CONFIG MODEL [--override FILE]`` prints the effective config (the command of
``models/config.py``, which this module hands over to when run as a script).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from util.errors import UserError
from util.schema import INT_GE1, Key, at_least, check_fraction, greater, json_type, one_of

_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


def _check_seed(v: int) -> str | None:
    return None if 0 <= v < 2**32 else "must be in [0, 2**32)"


def _check_device(v: str) -> str | None:
    return None if _DEVICE_RE.match(v) else "must be 'cpu', 'cuda' or 'cuda:N'"


def _check_phrases(v: list) -> str | None:
    # An empty phrase is a substring of every parameter name, so it would silently unfreeze everything.
    return "must not contain an empty string" if any(p == "" for p in v) else None


# ---------------------------------------------------------------------------------------------------
# Keys every model has. Model-specific keys live in the model's registry entry (models/registry.py).
# Values are the reference 7Scenes ones.

GENERAL_KEYS: Mapping[str, Key] = MappingProxyType(
    {
        "n_freq_print": Key(5, **INT_GE1, doc="log every N batches"),
        "n_freq_checkpoint": Key(5, **INT_GE1, doc="write a checkpoint every N epochs"),
        "n_workers": Key(4, "int", at_least(0), doc="DataLoader worker processes (capped at the CPU count)"),
        "keep_optimizer_state": Key(
            "last",
            "str",
            one_of("last", "all"),
            doc="which checkpoints hold the optimizer state: the latest one, or all",
        ),
        "device_id": Key("cuda:0", "str", _check_device, doc="device used when CUDA is there", lowercase=True),
        "cache_dir": Key(
            "auto",
            "str",
            nullable=True,
            doc='folder of the decoded-image cache (datasets/image_cache.py); "auto": a per-user folder '
            'where it can be written and has room; null or "off": decode every epoch',
        ),
    }
)
TRAINING_KEYS: Mapping[str, Key] = MappingProxyType(
    {
        "batch_size": Key(8, **INT_GE1, doc="training batch size"),
        "learnable": Key(True, "bool", doc="learn the loss weights s_x, s_q (Kendall 2017)"),
        "s_x": Key(0.0, "float", doc="initial (learnable) or fixed position loss weight"),
        "s_q": Key(0.0, "float", doc="initial (learnable) or fixed orientation loss weight"),
        "norm": Key(2.0, "float", at_least(1), doc="p of the p-norm in the loss"),
        "lr": Key(1e-4, "float", greater(0), doc="Adam learning rate"),
        "weight_decay": Key(1e-4, "float", at_least(0), doc="Adam weight decay (model parameters only)"),
        "eps": Key(1e-10, "float", greater(0), doc="Adam epsilon"),
        "lr_scheduler_step_size": Key(5, **INT_GE1, doc="StepLR period in epochs"),
        "lr_scheduler_gamma": Key(0.75, "float", check_fraction, doc="StepLR factor"),
        "n_epochs": Key(10, **INT_GE1, doc="training epochs"),
        "freeze": Key(False, "bool", doc="train only parameters named by freeze_exclude_phrase"),
        "freeze_exclude_phrase": Key(
            [],
            "str_list",
            _check_phrases,
            scalar_as_list=True,
            doc="substrings of the parameter names that stay trainable with freeze",
        ),
        "no_augment": Key(False, "bool", doc="train with the test transform"),
        "seed": Key(0, "int", _check_seed, doc="seed of the run; every epoch reseeds from (seed, epoch)"),
        "image_resize": Key(256, "int", at_least(32), doc="short side after resizing, pixels"),
        "image_crop": Key(224, "int", at_least(32), doc="square crop size, pixels"),
        "bn_momentum": Key(
            None, "float", check_fraction, nullable=True, doc="BatchNorm momentum; null keeps each backbone's own"
        ),
        "bn_recalibrate_batches": Key(
            None,
            "int",
            at_least(0),
            nullable=True,
            doc="recompute the BatchNorm statistics over this many training batches "
            "before each checkpoint; null: 20 for a random backbone with "
            "bn_momentum null, else 0",
        ),
        "resize_backend": Key(
            "tensor",
            "str",
            one_of("tensor", "pil"),
            doc="resize uint8 tensors (torchvision) or PIL images, as the reference does",
        ),
    }
)
# Names users reach for that are spelled differently here, for the keys above; used only to suggest the
# right key. Model keys' synonyms are in models/config.py.
SYNONYMS: Mapping[str, str] = MappingProxyType(
    {
        "learning_rate": "lr",
        "epochs": "n_epochs",
        "num_epochs": "n_epochs",
        "batchsize": "batch_size",
        "num_workers": "n_workers",
        "workers": "n_workers",
        "device": "device_id",
        "gamma": "lr_scheduler_gamma",
        "step_size": "lr_scheduler_step_size",
        "random_seed": "seed",
        "crop_size": "image_crop",
        "resize": "image_resize",
    }
)


def check_training_relations(config: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """Constraints between the keys every model has, each reported at the place the first key named came from."""
    if config["image_crop"] > config["image_resize"]:
        raise UserError(
            f"{where('image_crop')}: 'image_crop' ({config['image_crop']}) must be <= "
            f"'image_resize' ({config['image_resize']}): the crop is cut from the resized image"
        )
    if not config["learnable"] and (min(config["s_x"], config["s_q"]) < 0 or config["s_x"] == config["s_q"] == 0):
        # Fixed weights: L = s_x * l_x + s_q * l_q. A negative weight rewards error; zero for both trains nothing.
        raise UserError(
            f"{where('learnable')}: with 'learnable' false, 's_x' ({config['s_x']:g}) and 's_q' "
            f"({config['s_q']:g}) are fixed loss weights and must be >= 0, not both 0"
        )
    if config["freeze"] and not config["freeze_exclude_phrase"]:
        raise UserError(
            f"{where('freeze')}: 'freeze' is true but 'freeze_exclude_phrase' is empty, so no parameter would train"
        )


# ---------------------------------------------------------------------------------------------------
# Files


class _DuplicateKeyError(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """json object hook: a key written twice is a mistake (json would silently keep the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def read_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """The sections of a config file, checked only for layout (a JSON object of JSON objects)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config path is a directory, not a JSON file: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file is not UTF-8 text: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except _DuplicateKeyError as e:
        raise UserError(f"{path}: key '{e.args[0]}' appears twice in the same object") from None
    if not isinstance(data, dict):
        raise UserError(
            f'{path}: expected a JSON object of sections ({{"general": {{...}}, '
            f'"<model>": {{...}}}}), got {json_type(data)}'
        )
    for name, section in data.items():
        if not isinstance(section, dict):
            raise UserError(
                f"{path}: top-level entry '{name}' must be a section (a JSON object of "
                f'settings), got {json_type(section)}; expected {{"general": {{...}}, '
                f'"<model>": {{...}}}}'
            )
    return data


if __name__ == "__main__":
    # The effective config needs the model registry, a floor above this one: the command lives in
    # models/config.py, and this entry point (named in the docs) only hands over to it by name.
    import importlib

    sys.exit(importlib.import_module("models.config").main(prog="python -m util.config"))
