"""Configs in the reference JSON layout, validated at load, with every default in one place.

A config file holds a ``general`` section (printing, checkpointing, workers, device) and one section per
model name, as the reference ``configs/*.json`` do. The effective config of a model is its section
updated by ``general`` (``general`` wins on a clash). An optional override file with the same layout
updates the first file section by section before that merge, so passing the same file twice is harmless.
Sections of models not implemented here (``posenet``, ``atloc``, ``hyperatloc``) may be present; they
are not read.

Every key of the effective config is checked: its name (an unknown key names the closest valid one),
its JSON type (``true`` is not an integer; integers are accepted where a number is expected), its range,
and the constraints between keys. Keys that are accepted for compatibility but change nothing are
logged as warnings and left out of the result. ``docs/configs.md`` describes every key.

Run ``python -m util.config CONFIG MODEL [--override FILE]`` to print the effective config.
"""
from __future__ import annotations

import argparse
import copy
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

from util.errors import UserError

log = logging.getLogger(__name__)

MODEL_NAMES = ("effposenet", "hyperpose", "ems-transposenet", "mshyperpose")
MULTI_SCENE_MODELS = ("ems-transposenet", "mshyperpose")
MODEL_ALIASES = MappingProxyType({"mstransformer": "ems-transposenet"})
# Sections the reference configs carry for models this toolkit does not implement; never read.
UNIMPLEMENTED_MODELS = ("posenet", "atloc", "hyperatloc")

# Stride of each EfficientNet-B0 endpoint usable by the multi-scene transformers. With the backbone's
# fixed "SAME" padding every stride-2 stage floors, so a crop of c pixels gives maps of c // stride cells.
REDUCTION_STRIDES = MappingProxyType(
    {"reduction_1": 2, "reduction_2": 4, "reduction_3": 8, "reduction_4": 16, "reduction_5": 32})
# Rows of the learned 2D position tables of the multi-scene models (a reference-checkpoint shape).
MAX_POSITIONS = 50
_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


# ---------------------------------------------------------------------------------------------------
# Defaults: the one place they live. Built from shared parts, one dict per model.
# Values are the reference 7Scenes ones; the multi-scene schedule is the reference mshyperpose one.

_GENERAL_DEFAULTS = {
    "n_freq_print": 5,
    "n_freq_checkpoint": 5,
    "n_workers": 4,
    "device_id": "cuda:0",
    "cache_dir": None,
}
_TRAINING_DEFAULTS = {
    "batch_size": 8,
    "learnable": True,
    "s_x": 0.0,
    "s_q": 0.0,
    "norm": 2.0,
    "lr": 1e-4,
    "weight_decay": 1e-4,
    "eps": 1e-10,
    "lr_scheduler_step_size": 5,
    "lr_scheduler_gamma": 0.75,
    "n_epochs": 10,
    "freeze": False,
    "freeze_exclude_phrase": [],
    "no_augment": False,
    "backbone_type": "efficientnet",
    "seed": 0,
    "image_resize": 256,
    "image_crop": 224,
    "bn_momentum": None,
}
_HYPER_DEFAULTS = {
    "hyper_dim_t": 256,
    "hyper_dim_rot": 512,
}
_MULTI_SCENE_DEFAULTS = {
    "lr_scheduler_step_size": 10,
    "n_epochs": 50,
    "equalize_scenes": False,
    "num_scenes": None,
    "num_t_encoder_layers": 4,
    "num_t_decoder_layers": 4,
    "num_rot_encoder_layers": 4,
    "num_rot_decoder_layers": 4,
    "dim_feedforward": 256,
    "hidden_dim": 256,
    "reg_hidden_dim": 1024,
    "dropout": 0.1,
    "nheads": 8,
    "reduction": ["reduction_4", "reduction_3"],
}

DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "effposenet": MappingProxyType({**_GENERAL_DEFAULTS, **_TRAINING_DEFAULTS}),
    "hyperpose": MappingProxyType({**_GENERAL_DEFAULTS, **_TRAINING_DEFAULTS, **_HYPER_DEFAULTS}),
    "ems-transposenet": MappingProxyType({**_GENERAL_DEFAULTS, **_TRAINING_DEFAULTS, **_MULTI_SCENE_DEFAULTS}),
    "mshyperpose": MappingProxyType({**_GENERAL_DEFAULTS, **_TRAINING_DEFAULTS, **_MULTI_SCENE_DEFAULTS,
                                     **_HYPER_DEFAULTS, "hyper_t_hidden_scale": 0.5}),
})
GENERAL_KEYS = tuple(_GENERAL_DEFAULTS)

_NO_HYPERNETWORK = "it has no hypernetwork"
# Keys a model accepts (so a section copied from a sibling model loads) but does not use.
IGNORED_KEYS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "effposenet": MappingProxyType({"hyper_dim_t": _NO_HYPERNETWORK, "hyper_dim_rot": _NO_HYPERNETWORK,
                                    "hyper_t_hidden_scale": _NO_HYPERNETWORK}),
    "hyperpose": MappingProxyType({"hyper_t_hidden_scale": "it scales a hidden layer that only mshyperpose's "
                                                           "generated position regressor has"}),
    "ems-transposenet": MappingProxyType({"hyper_dim_t": _NO_HYPERNETWORK, "hyper_dim_rot": _NO_HYPERNETWORK,
                                          "hyper_t_hidden_scale": _NO_HYPERNETWORK}),
    "mshyperpose": MappingProxyType({}),
})

# Names users reach for that are spelled differently here; used only to suggest the right key.
_SYNONYMS = {
    "learning_rate": "lr", "nhead": "nheads", "num_heads": "nheads", "n_heads": "nheads",
    "epochs": "n_epochs", "num_epochs": "n_epochs", "batchsize": "batch_size", "num_workers": "n_workers",
    "workers": "n_workers", "device": "device_id", "gamma": "lr_scheduler_gamma",
    "step_size": "lr_scheduler_step_size", "random_seed": "seed", "crop_size": "image_crop",
    "resize": "image_resize", "n_scenes": "num_scenes", "d_model": "hidden_dim",
}


# ---------------------------------------------------------------------------------------------------
# Key specifications: JSON type and range of every key (defaults are above, not here).

@dataclass(frozen=True)
class KeySpec:
    """How one key is checked: its JSON type, an optional range check, and whether null is allowed."""

    kind: str  # "int", "float", "bool", "str" or "str_list"
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns what is wrong, or None
    nullable: bool = False
    scalar_as_list: bool = False  # a "str_list" key also takes one bare string


def _greater(lo: float) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v > lo else f"must be > {lo:g}"


def _at_least(lo: float) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v >= lo else f"must be >= {lo:g}"


def _choice(*options: str) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v in options else "must be " + " or ".join(f"'{o}'" for o in options)


def _check_gamma(v: float) -> Optional[str]:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def _check_dropout(v: float) -> Optional[str]:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _check_seed(v: int) -> Optional[str]:
    return None if 0 <= v < 2**32 else "must be in [0, 2**32)"


def _check_device(v: str) -> Optional[str]:
    return None if _DEVICE_RE.match(v) else "must be 'cpu', 'cuda' or 'cuda:N'"


def _check_phrases(v: list) -> Optional[str]:
    # An empty phrase is a substring of every parameter name, so it would silently unfreeze everything.
    return "must not contain an empty string" if any(p == "" for p in v) else None


def _check_reduction(v: list) -> Optional[str]:
    if len(v) != 2:
        return "must list two endpoints: [position branch, orientation branch]"
    bad = [r for r in v if r not in REDUCTION_STRIDES]
    return f"has unknown endpoint(s) {bad}; valid: {', '.join(REDUCTION_STRIDES)}" if bad else None


_INT_GE1 = KeySpec("int", _at_least(1))
KEY_SPECS: Mapping[str, KeySpec] = MappingProxyType({
    "n_freq_print": _INT_GE1,
    "n_freq_checkpoint": _INT_GE1,
    "n_workers": KeySpec("int", _at_least(0)),
    "device_id": KeySpec("str", _check_device),
    "cache_dir": KeySpec("str", nullable=True),
    "batch_size": _INT_GE1,
    "learnable": KeySpec("bool"),
    "s_x": KeySpec("float"),
    "s_q": KeySpec("float"),
    "norm": KeySpec("float", _at_least(1)),
    "lr": KeySpec("float", _greater(0)),
    "weight_decay": KeySpec("float", _at_least(0)),
    "eps": KeySpec("float", _greater(0)),
    "lr_scheduler_step_size": _INT_GE1,
    "lr_scheduler_gamma": KeySpec("float", _check_gamma),
    "n_epochs": _INT_GE1,
    "freeze": KeySpec("bool"),
    "freeze_exclude_phrase": KeySpec("str_list", _check_phrases, scalar_as_list=True),
    "no_augment": KeySpec("bool"),
    "backbone_type": KeySpec("str", _choice("efficientnet")),
    "seed": KeySpec("int", _check_seed),
    "image_resize": KeySpec("int", _at_least(32)),
    "image_crop": KeySpec("int", _at_least(32)),
    "bn_momentum": KeySpec("float", _check_gamma, nullable=True),
    "hyper_dim_t": _INT_GE1,
    "hyper_dim_rot": _INT_GE1,
    "hyper_t_hidden_scale": KeySpec("float", _greater(0)),
    "equalize_scenes": KeySpec("bool"),
    "num_scenes": KeySpec("int", _at_least(1), nullable=True),
    "num_t_encoder_layers": _INT_GE1,
    "num_t_decoder_layers": _INT_GE1,
    "num_rot_encoder_layers": _INT_GE1,
    "num_rot_decoder_layers": _INT_GE1,
    "dim_feedforward": _INT_GE1,
    "hidden_dim": KeySpec("int", _at_least(2)),
    "reg_hidden_dim": _INT_GE1,
    "dropout": KeySpec("float", _check_dropout),
    "nheads": _INT_GE1,
    "reduction": KeySpec("str_list", _check_reduction),
})

_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "str_list": "a list of strings"}


# ---------------------------------------------------------------------------------------------------
# Model names

def canonical_model_name(name: str) -> str:
    """The canonical model name (``mstransformer`` -> ``ems-transposenet``); UserError if unknown."""
    key = str(name).strip().lower()
    key = MODEL_ALIASES.get(key, key)
    if key not in MODEL_NAMES:
        aliases = ", ".join(f"{a} = {t}" for a, t in MODEL_ALIASES.items())
        raise UserError(f"unknown model '{name}'; valid models: {', '.join(MODEL_NAMES)} (alias: {aliases})")
    return key


def accepted_keys(model_name: str) -> tuple[str, ...]:
    """Every key a section read for ``model_name`` may hold (used and ignored ones)."""
    model = canonical_model_name(model_name)
    return tuple(DEFAULTS[model]) + tuple(k for k in IGNORED_KEYS[model] if k not in DEFAULTS[model])


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
    valid = accepted_keys(model)
    for key in section:
        if key in valid or key == "model_name":
            continue
        owners = [m for m in MODEL_NAMES if m != model and key in accepted_keys(m)]
        if owners:
            raise UserError(f"{where}: key '{key}' does not apply to model '{model}' "
                            f"(it is a key of {', '.join(owners)})")
        closest = _closest_key(str(key), valid)
        hint = f"did you mean '{closest}'?" if closest else f"valid keys: {', '.join(valid)}"
        raise UserError(f"{where}: unknown key '{key}' for model '{model}'; {hint}")


def _coerce(key: str, value: Any, where: str) -> Any:
    """``value`` checked against the type and range of ``key``, as the effective config stores it."""
    spec = KEY_SPECS[key]
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
    if model in MULTI_SCENE_MODELS:
        d, heads = config["hidden_dim"], config["nheads"]
        if d % 2:
            raise UserError(f"{where('hidden_dim')}: 'hidden_dim' ({d}) must be even: the 2D position "
                            f"embedding gives half of it to rows and half to columns")
        if d % heads:
            raise UserError(f"{where('hidden_dim')}: 'hidden_dim' ({d}) must be divisible by 'nheads' ({heads})")
        for endpoint in config["reduction"]:
            cells = config["image_crop"] // REDUCTION_STRIDES[endpoint]
            if cells > MAX_POSITIONS:
                raise UserError(f"{where('image_crop')}: 'image_crop' {config['image_crop']} gives "
                                f"{cells}x{cells} cells at {endpoint}, more than the {MAX_POSITIONS} rows of "
                                f"the learned position tables; use image_crop <= "
                                f"{(MAX_POSITIONS + 1) * REDUCTION_STRIDES[endpoint] - 1}")
    if model == "mshyperpose" and int(config["hyper_dim_t"] * config["hyper_t_hidden_scale"]) < 1:
        raise UserError(f"{where('hyper_t_hidden_scale')}: 'hyper_t_hidden_scale' * 'hyper_dim_t' must be "
                        f">= 1 (the width of a generated layer)")


def validate_config(model_name: str, section: Mapping[str, Any], *,
                    origins: Optional[Mapping[str, str]] = None) -> dict:
    """The effective config of ``model_name``: ``section`` checked, ignored keys dropped, defaults filled.

    ``section`` is one flat dict of settings (a model section already merged with ``general``, or a
    config saved earlier by this function). ``origins`` maps a key to where it was set, for messages.
    The result starts with ``model_name`` (canonical) and is a fresh dict that shares nothing mutable
    with ``section`` or :data:`DEFAULTS`. Raises UserError on any invalid key or value.
    """
    model = canonical_model_name(model_name)
    origins = origins or {}
    default_where = f"config of model '{model}'"

    def where(key: str) -> str:
        return origins.get(key, default_where)

    if not isinstance(section, Mapping):
        raise UserError(f"{default_where}: expected a JSON object of settings, got {_json_type(section)}")
    for key in section:
        _check_key_names({key: None}, model, where(key))
    if "model_name" in section and canonical_model_name(section["model_name"]) != model:
        raise UserError(f"{where('model_name')}: 'model_name' is '{section['model_name']}' but the config "
                        f"is being read for '{model}'")

    config: dict[str, Any] = {"model_name": model}
    for key, default in DEFAULTS[model].items():
        config[key] = _coerce(key, section[key], where(key)) if key in section else copy.deepcopy(default)
    for key, reason in IGNORED_KEYS[model].items():
        if key in section:
            _coerce(key, section[key], where(key))
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
    names = [model] + [alias for alias, target in MODEL_ALIASES.items() if target == model]
    present = [n for n in names if n in sections]
    if len(present) > 1:
        raise UserError(f"{path}: sections {present} describe the same model; keep one")
    return (present[0], sections[present[0]]) if present else None


def load_config(config_path: str | Path, model_name: str, override_path: str | Path | None = None) -> dict:
    """The validated effective config of ``model_name`` from a config file and an optional override.

    Each file's ``general`` and model sections are merged section by section (the override wins), then
    the model section is updated by ``general``. See the module docstring for the checks.
    """
    model = canonical_model_name(model_name)
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
    parser.add_argument("model_name", help="model whose section to read; one of " + ", ".join(MODEL_NAMES))
    parser.add_argument("--override", default=None, help="second config file whose sections update the first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.model_name, args.override)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(config, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
