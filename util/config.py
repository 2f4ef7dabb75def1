"""Configs in the reference JSON layout, validated at load, with every default in one place.

A config file holds a ``general`` section (printing, checkpointing, workers, device) and one section per
model name, as the reference ``configs/*.json`` do. The effective config of a model is its section
updated by ``general`` (``general`` wins on a clash). An optional override file with the same layout
updates the first file section by section before that merge, so passing the same file twice is harmless.
Only the section of the model being run is read.

This module is the schema engine (:class:`Key`) plus the keys every model has (``general`` and the
training recipe); each model's own keys, defaults, accepted backbones and checks between its keys come
from its entry in ``models/registry.py``.

Every key of the effective config is checked: its name (an unknown key names the closest valid one),
its JSON type (``true`` is not an integer; integers are accepted where a number is expected), its range,
and the constraints between keys. Keys that are accepted for compatibility but change nothing are
logged as warnings and left out of the result. ``docs/configs.md`` describes every key.

Run ``python -m util.config CONFIG MODEL [--override FILE]`` to print the effective config.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

from util.errors import UserError, printable
from util.logs import setup_logging

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


# ---------------------------------------------------------------------------------------------------
# The schema engine: how one key is described and checked.

@dataclass(frozen=True)
class Key:
    """One config key: its default, JSON type, an optional range check, and whether null is allowed."""

    default: Any
    kind: str  # "int", "float", "bool", "str" or "str_list"
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns what is wrong, or None
    nullable: bool = False
    scalar_as_list: bool = False  # a "str_list" key also takes one bare string
    doc: str = ""


def greater(lo: float) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v > lo else f"must be > {lo:g}"


def at_least(lo: float) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v >= lo else f"must be >= {lo:g}"


def check_fraction(v: float) -> Optional[str]:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def check_dropout(v: float) -> Optional[str]:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def one_of(*options: str) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v in options else "must be " + " or ".join(f"'{o}'" for o in options)


def _check_seed(v: int) -> Optional[str]:
    return None if 0 <= v < 2**32 else "must be in [0, 2**32)"


def _check_device(v: str) -> Optional[str]:
    return None if _DEVICE_RE.match(v) else "must be 'cpu', 'cuda' or 'cuda:N'"


def _check_phrases(v: list) -> Optional[str]:
    # An empty phrase is a substring of every parameter name, so it would silently unfreeze everything.
    return "must not contain an empty string" if any(p == "" for p in v) else None


def _check_backbone_type(v: str) -> Optional[str]:
    from models.backbone import parse_backbone_type

    try:
        parse_backbone_type(v)
    except UserError as e:
        return f"is invalid ({e})"
    return None


_INT_GE1 = dict(kind="int", check=at_least(1))

# ---------------------------------------------------------------------------------------------------
# Keys every model has. Model-specific keys live in the model's registry entry (models/registry.py).
# Values are the reference 7Scenes ones.

GENERAL_KEYS: Mapping[str, Key] = MappingProxyType({
    "n_freq_print": Key(5, **_INT_GE1, doc="log every N batches"),
    "n_freq_checkpoint": Key(5, **_INT_GE1, doc="write a checkpoint every N epochs"),
    "n_workers": Key(4, "int", at_least(0), doc="DataLoader worker processes (capped at the CPU count)"),
    "keep_optimizer_state": Key("last", "str", one_of("last", "all"),
                                doc="which checkpoints hold the optimizer state: the latest one, or all"),
    "device_id": Key("cuda:0", "str", _check_device, doc="device used when CUDA is there"),
    "cache_dir": Key("auto", "str", nullable=True,
                     doc="folder of the decoded-image cache (datasets/image_cache.py); \"auto\": a per-user folder "
                         "where it can be written and has room; null or \"off\": decode every epoch"),
})
TRAINING_KEYS: Mapping[str, Key] = MappingProxyType({
    "batch_size": Key(8, **_INT_GE1, doc="training batch size"),
    "learnable": Key(True, "bool", doc="learn the loss weights s_x, s_q (Kendall 2017)"),
    "s_x": Key(0.0, "float", doc="initial (learnable) or fixed position loss weight"),
    "s_q": Key(0.0, "float", doc="initial (learnable) or fixed orientation loss weight"),
    "norm": Key(2.0, "float", at_least(1), doc="p of the p-norm in the loss"),
    "lr": Key(1e-4, "float", greater(0), doc="Adam learning rate"),
    "weight_decay": Key(1e-4, "float", at_least(0), doc="Adam weight decay (model parameters only)"),
    "eps": Key(1e-10, "float", greater(0), doc="Adam epsilon"),
    "lr_scheduler_step_size": Key(5, **_INT_GE1, doc="StepLR period in epochs"),
    "lr_scheduler_gamma": Key(0.75, "float", check_fraction, doc="StepLR factor"),
    "n_epochs": Key(10, **_INT_GE1, doc="training epochs"),
    "freeze": Key(False, "bool", doc="train only parameters named by freeze_exclude_phrase"),
    "freeze_exclude_phrase": Key([], "str_list", _check_phrases, scalar_as_list=True,
                                 doc="substrings of the parameter names that stay trainable with freeze"),
    "no_augment": Key(False, "bool", doc="train with the test transform"),
    "seed": Key(0, "int", _check_seed, doc="seed of the run; every epoch reseeds from (seed, epoch)"),
    "image_resize": Key(256, "int", at_least(32), doc="short side after resizing, pixels"),
    "image_crop": Key(224, "int", at_least(32), doc="square crop size, pixels"),
    "bn_momentum": Key(None, "float", check_fraction, nullable=True,
                       doc="BatchNorm momentum; null keeps each backbone's own"),
    "bn_recalibrate_batches": Key(None, "int", at_least(0), nullable=True,
                                  doc="recompute the BatchNorm statistics over this many training batches "
                                      "before each checkpoint; null: 20 for a random backbone with "
                                      "bn_momentum null, else 0"),
    "resize_backend": Key("tensor", "str", one_of("tensor", "pil"),
                          doc="resize uint8 tensors (torchvision) or PIL images, as the reference does"),
})
# The key every model has whose default and accepted values come from its registry entry.
BACKBONE_TYPE_KEY = Key("efficientnet", "str", _check_backbone_type,
                        doc="efficientnet, googlenet, resnet34 or timm:<name>")

# Names users reach for that are spelled differently here; used only to suggest the right key.
_SYNONYMS = {
    "learning_rate": "lr", "nhead": "nheads", "num_heads": "nheads", "n_heads": "nheads",
    "epochs": "n_epochs", "num_epochs": "n_epochs", "batchsize": "batch_size", "num_workers": "n_workers",
    "workers": "n_workers", "device": "device_id", "gamma": "lr_scheduler_gamma",
    "step_size": "lr_scheduler_step_size", "random_seed": "seed", "crop_size": "image_crop",
    "resize": "image_resize", "n_scenes": "num_scenes", "d_model": "hidden_dim", "backbone": "backbone_type",
}

_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "str_list": "a list of strings"}


# ---------------------------------------------------------------------------------------------------
# The keys of a model, from its registry entry

def _spec(model_name: str):
    from models.registry import get_spec  # the registry builds on this module's schema engine

    return get_spec(model_name)


def model_keys(model_name: str) -> dict[str, Key]:
    """Every key the effective config of ``model_name`` holds, with the model's own defaults."""
    spec = _spec(model_name)
    keys = {**GENERAL_KEYS, **TRAINING_KEYS}
    for key, default in spec.training_defaults.items():
        keys[key] = dataclasses.replace(keys[key], default=default)
    keys["backbone_type"] = dataclasses.replace(BACKBONE_TYPE_KEY, default=spec.default_backbone)
    keys.update(spec.keys)
    return keys


def defaults(model_name: str) -> dict[str, Any]:
    """The default effective config of ``model_name`` (without ``model_name``)."""
    return {k: copy.deepcopy(key.default) for k, key in model_keys(model_name).items()}


def accepted_keys(model_name: str) -> tuple[str, ...]:
    """Every key a section read for ``model_name`` may hold (used and ignored ones)."""
    spec = _spec(model_name)
    keys = tuple(model_keys(model_name))
    return keys + tuple(k for k in spec.ignored_keys if k not in keys)


def all_keys() -> dict[str, Key]:
    """Every key of every registered model (for checking ignored keys' types)."""
    from models.registry import model_names

    out: dict[str, Key] = {}
    for name in model_names():
        out.update(model_keys(name))
    return out


# ---------------------------------------------------------------------------------------------------
# Validation

def _json_type(value: Any) -> str:
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


def _closest_key(key: str, valid: tuple[str, ...]) -> Optional[str]:
    """The valid key ``key`` most likely meant (by spelling or a common synonym), if any is close."""
    candidates = {k.lower(): k for k in valid}
    for synonym, target in _SYNONYMS.items():
        if target in valid:
            candidates.setdefault(synonym, target)
    match = difflib.get_close_matches(key.lower(), list(candidates), n=1, cutoff=0.6)
    return candidates[match[0]] if match else None


def _check_key_names(section: Mapping[str, Any], model: str, where: str) -> None:
    """UserError for the first key of ``section`` that ``model`` does not accept."""
    from models.registry import model_names

    valid = accepted_keys(model)
    for key in section:
        if key in valid or key == "model_name":
            continue
        owners = [m for m in model_names() if m != model and key in accepted_keys(m)]
        if owners:
            raise UserError(f"{where}: key '{key}' does not apply to model '{model}' "
                            f"(it is a key of {', '.join(owners)})")
        closest = _closest_key(str(key), valid)
        hint = f"did you mean '{closest}'?" if closest else f"valid keys: {', '.join(valid)}"
        raise UserError(f"{where}: unknown key '{printable(key)}' for model '{model}'; {hint}")


def _coerce(key: str, spec: Key, value: Any, where: str) -> Any:
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
        raise UserError(f"{where}: '{key}' must be {expected}, got {json.dumps(value, default=str)} "
                        f"({_json_type(value)})")
    if kind == "str":
        value = value.strip().lower() if key in ("device_id", "backbone_type") else value
    problem = spec.check(value) if spec.check else None
    if problem:
        raise UserError(f"{where}: '{key}' {problem}, got {json.dumps(value)}")
    return value


def _check_relations(config: dict, model: str, where: Callable[[str], str]) -> None:
    """Constraints between keys, each reported at the place the first key named came from."""
    if config["image_crop"] > config["image_resize"]:
        raise UserError(f"{where('image_crop')}: 'image_crop' ({config['image_crop']}) must be <= "
                        f"'image_resize' ({config['image_resize']}): the crop is cut from the resized image")
    if not config["learnable"] and (min(config["s_x"], config["s_q"]) < 0 or config["s_x"] == config["s_q"] == 0):
        # Fixed weights: L = s_x * l_x + s_q * l_q. A negative weight rewards error; zero for both trains nothing.
        raise UserError(f"{where('learnable')}: with 'learnable' false, 's_x' ({config['s_x']:g}) and 's_q' "
                        f"({config['s_q']:g}) are fixed loss weights and must be >= 0, not both 0")
    if config["freeze"] and not config["freeze_exclude_phrase"]:
        raise UserError(f"{where('freeze')}: 'freeze' is true but 'freeze_exclude_phrase' is empty, "
                        f"so no parameter would train")
    spec = _spec(model)
    if not spec.accepts_backbone(config["backbone_type"]):
        raise UserError(f"{where('backbone_type')}: model '{model}' does not accept backbone_type "
                        f"'{config['backbone_type']}'; it accepts: {', '.join(spec.backbones)}")
    problem = spec.check(config) if spec.check else None
    if problem:
        key, message = problem
        raise UserError(f"{where(key)}: {message}")


def validate_config(model_name: str, section: Mapping[str, Any], *,
                    origins: Optional[Mapping[str, str]] = None) -> dict:
    """The effective config of ``model_name``: ``section`` checked, ignored keys dropped, defaults filled.

    ``section`` is one flat dict of settings (a model section already merged with ``general``, or a
    config saved earlier by this function). ``origins`` maps a key to where it was set, for messages.
    The result starts with ``model_name`` (canonical) and is a fresh dict that shares nothing mutable
    with ``section`` or the key defaults. Raises UserError on any invalid key or value.
    """
    model = _spec(model_name).name
    origins = origins or {}
    default_where = f"config of model '{model}'"

    def where(key: str) -> str:
        return origins.get(key, default_where)

    if not isinstance(section, Mapping):
        raise UserError(f"{default_where}: expected a JSON object of settings, got {_json_type(section)}")
    for key in section:
        _check_key_names({key: None}, model, where(key))
    if "model_name" in section and _spec(section["model_name"]).name != model:
        raise UserError(f"{where('model_name')}: 'model_name' is '{section['model_name']}' but the config "
                        f"is being read for '{model}'")

    config: dict[str, Any] = {"model_name": model}
    for key, spec in model_keys(model).items():
        config[key] = _coerce(key, spec, section[key], where(key)) if key in section else copy.deepcopy(spec.default)
    every_key = all_keys()
    for key, reason in _spec(model).ignored_keys.items():
        if key in section:
            _coerce(key, every_key[key], section[key], where(key))
            log.warning("%s: '%s' is accepted but ignored by %s: %s", where(key), key, model, reason)
    _check_relations(config, model, where)
    return config


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
        raise UserError(f"{path}: expected a JSON object of sections ({{\"general\": {{...}}, "
                        f"\"<model>\": {{...}}}}), got {_json_type(data)}")
    for name, section in data.items():
        if not isinstance(section, dict):
            raise UserError(f"{path}: top-level entry '{name}' must be a section (a JSON object of "
                            f"settings), got {_json_type(section)}; expected {{\"general\": {{...}}, "
                            f"\"<model>\": {{...}}}}")
    return data


def _model_section(sections: Mapping[str, dict], model: str, path: Path) -> Optional[tuple[str, dict]]:
    """(name, section) of the model's section in one file, under its canonical name or an alias."""
    names = [model] + list(_spec(model).aliases)
    present = [n for n in names if n in sections]
    if len(present) > 1:
        raise UserError(f"{path}: sections {present} describe the same model; keep one")
    return (present[0], sections[present[0]]) if present else None


def load_config(config_path: str | Path, model_name: str, override_path: str | Path | None = None) -> dict:
    """The validated effective config of ``model_name`` from a config file and an optional override.

    Each file's ``general`` and model sections are merged section by section (the override wins), then
    the model section is updated by ``general``. See the module docstring for the checks.
    """
    model = _spec(model_name).name
    general: dict[str, Any] = {}
    model_section: dict[str, Any] = {}
    general_origin: dict[str, str] = {}
    model_origin: dict[str, str] = {}
    files = [Path(config_path)] + ([Path(override_path)] if override_path is not None else [])
    found = False
    for path in files:
        sections = read_config_file(path)
        if "general" in sections:
            where = f"section 'general' of {path}"
            _check_key_names(sections["general"], model, where)
            general.update(sections["general"])
            general_origin.update({k: where for k in sections["general"]})
        named = _model_section(sections, model, path)
        if named is not None:
            found = True
            name, section = named
            where = f"section '{name}' of {path}"
            _check_key_names(section, model, where)
            model_section.update(section)
            model_origin.update({k: where for k in section})
    if not found:
        if len(files) == 1:
            where, listing = str(files[0]), ", ".join(read_config_file(files[0])) or "none"
        else:
            where = " or ".join(str(p) for p in files)
            listing = "; ".join(f"{p}: {', '.join(read_config_file(p)) or 'none'}" for p in files)
        raise UserError(f"no '{model}' section in {where} (sections present: {listing}); "
                        f"the files in configs/ have one for every model")

    for key in general.keys() & model_section.keys():
        if general[key] != model_section[key]:
            log.warning("'%s' is set in %s (%r) and in %s (%r); 'general' wins", key, model_origin[key],
                        model_section[key], general_origin[key], general[key])
    effective = {**model_section, **general}
    origins = {**model_origin, **general_origin}
    return validate_config(model, effective, origins=origins)


def main(argv: Optional[list[str]] = None) -> int:
    """Print the effective config of one model as JSON."""
    parser = argparse.ArgumentParser(prog="python -m util.config", description=main.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("config", help="config JSON file (general + one section per model)")
    parser.add_argument("model_name", help="model whose section to read (see models/registry.py)")
    parser.add_argument("--override", default=None, help="second config file whose sections update the first")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        config = load_config(args.config, args.model_name, args.override)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(config, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
