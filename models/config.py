"""The effective config of a model: config files read, merged, validated at load, with every default in one place.

A config file holds a ``general`` section (printing, checkpointing, workers, device) and one section per
model name, as the reference ``configs/*.json`` do. The effective config of a model is its section
updated by ``general`` (``general`` wins on a clash). An optional override file with the same layout
updates the first file section by section before that merge, so passing the same file twice is harmless.
Only the section of the model being run is read. A file needs a section only for the models it configures:
without one, the model's defaults apply (with a warning), unless a section name is neither ``general`` nor
a registered model, which is more likely a misspelt section than a file for other models.

The keys every model has (``general`` and the training recipe) and the file reader are in
``util/config.py``, the schema engine (:class:`util.schema.Key`) in ``util/schema.py``; each model's own
keys, defaults, accepted backbones and checks between its keys come from its entry in ``models/registry.py``.

Every key of the effective config is checked: its name (an unknown key names the closest valid one),
its JSON type (``true`` is not an integer; integers are accepted where a number is expected), its range,
and the constraints between keys. Keys that are accepted for compatibility but change nothing are
logged as warnings and left out of the result. ``docs/configs.md`` describes every key.

Run ``python -m models.config CONFIG MODEL [--override FILE]`` (or ``python -m util.config ...``) to print
the effective config.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from models.backbone import DEFAULT_BACKBONE, backbone_type_help, parse_backbone_type
from models.registry import cli_choices, get_spec, model_names
from util.config import GENERAL_KEYS, SYNONYMS, TRAINING_KEYS, check_training_relations, read_config_file
from util.errors import UserError, printable
from util.logs import setup_logging
from util.schema import Key, closest_key, coerce, json_type

log = logging.getLogger(__name__)


def _check_backbone_type(v: str) -> str | None:
    try:
        parse_backbone_type(v)
    except UserError as e:
        return f"is invalid ({e})"
    return None


# The key every model has whose default and accepted values come from its registry entry.
BACKBONE_TYPE_KEY = Key(DEFAULT_BACKBONE, "str", _check_backbone_type, lowercase=True, doc=backbone_type_help())

# Names users reach for that are spelled differently here, for the model keys; used only to suggest the right key.
_MODEL_SYNONYMS = MappingProxyType(
    {
        **SYNONYMS,
        "nhead": "nheads",
        "num_heads": "nheads",
        "n_heads": "nheads",
        "n_scenes": "num_scenes",
        "d_model": "hidden_dim",
        "backbone": "backbone_type",
    }
)


# ---------------------------------------------------------------------------------------------------
# The keys of a model, from its registry entry


def model_keys(model_name: str) -> dict[str, Key]:
    """Every key the effective config of ``model_name`` holds, with the model's own defaults."""
    spec = get_spec(model_name)
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
    spec = get_spec(model_name)
    keys = tuple(model_keys(model_name))
    return keys + tuple(k for k in spec.ignored_keys if k not in keys)


def all_keys() -> dict[str, Key]:
    """Every key of every registered model (for checking ignored keys' types)."""
    out: dict[str, Key] = {}
    for name in model_names():
        out.update(model_keys(name))
    return out


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_key_names(section: Mapping[str, Any], model: str, where: str) -> None:
    """UserError for the first key of ``section`` that ``model`` does not accept."""
    valid = accepted_keys(model)
    for key in section:
        if key in valid or key == "model_name":
            continue
        owners = [m for m in model_names() if m != model and key in accepted_keys(m)]
        if owners:
            raise UserError(
                f"{where}: key '{key}' does not apply to model '{model}' (it is a key of {', '.join(owners)})"
            )
        closest = closest_key(str(key), valid, _MODEL_SYNONYMS)
        hint = f"did you mean '{closest}'?" if closest else f"valid keys: {', '.join(valid)}"
        raise UserError(f"{where}: unknown key '{printable(key)}' for model '{model}'; {hint}")


def _check_relations(config: dict, model: str, where: Callable[[str], str]) -> None:
    """Constraints between keys, each reported at the place the first key named came from."""
    check_training_relations(config, where)
    spec = get_spec(model)
    if not spec.accepts_backbone(config["backbone_type"]):
        raise UserError(
            f"{where('backbone_type')}: model '{model}' does not accept backbone_type "
            f"'{config['backbone_type']}'; it accepts: {', '.join(spec.backbones)}"
        )
    problem = spec.check(config) if spec.check else None
    if problem:
        key, message = problem
        raise UserError(f"{where(key)}: {message}")


def validate_config(model_name: str, section: Mapping[str, Any], *, origins: Mapping[str, str] | None = None) -> dict:
    """The effective config of ``model_name``: ``section`` checked, ignored keys dropped, defaults filled.

    ``section`` is one flat dict of settings (a model section already merged with ``general``, or a
    config saved earlier by this function). ``origins`` maps a key to where it was set, for messages.
    The result starts with ``model_name`` (canonical) and is a fresh dict that shares nothing mutable
    with ``section`` or the key defaults. Raises UserError on any invalid key or value.
    """
    model = get_spec(model_name).name
    origins = origins or {}
    default_where = f"config of model '{model}'"

    def where(key: str) -> str:
        return origins.get(key, default_where)

    if not isinstance(section, Mapping):
        raise UserError(f"{default_where}: expected a JSON object of settings, got {json_type(section)}")
    for key in section:
        _check_key_names({key: None}, model, where(key))
    if "model_name" in section and get_spec(section["model_name"]).name != model:
        raise UserError(
            f"{where('model_name')}: 'model_name' is '{section['model_name']}' but the config "
            f"is being read for '{model}'"
        )

    config: dict[str, Any] = {"model_name": model}
    for key, spec in model_keys(model).items():
        config[key] = coerce(key, spec, section[key], where(key)) if key in section else copy.deepcopy(spec.default)
    every_key = all_keys()
    for key, reason in get_spec(model).ignored_keys.items():
        if key in section:
            coerce(key, every_key[key], section[key], where(key))
            log.warning("%s: '%s' is accepted but ignored by %s: %s", where(key), key, model, reason)
    _check_relations(config, model, where)
    return config


# ---------------------------------------------------------------------------------------------------
# Files


def _model_section(sections: Mapping[str, dict], model: str, path: Path) -> tuple[str, dict] | None:
    """(name, section) of the model's section in one file, under its canonical name or an alias."""
    names = [model] + list(get_spec(model).aliases)
    present = [n for n in names if n in sections]
    if len(present) > 1:
        raise UserError(f"{path}: sections {present} describe the same model; keep one")
    return (present[0], sections[present[0]]) if present else None


def _missing_section(model: str, files: list[tuple[Path, Mapping[str, dict]]]) -> None:
    """No file has the model's section: a warning and its defaults, or a UserError when a section name is
    neither ``general`` nor a registered model (a misspelt section, say)."""
    where = " or ".join(str(path) for path, _ in files)
    listing = "; ".join(f"{path}: {', '.join(sections) or 'none'}" for path, sections in files)
    if len(files) == 1:
        listing = ", ".join(files[0][1]) or "none"
    strangers = [name for _, sections in files for name in sections if name != "general" and not _is_model(name)]
    if strangers:
        close = difflib.get_close_matches(strangers[0], [model, *get_spec(model).aliases], n=1)
        hint = f"; is '{strangers[0]}' meant to be '{close[0]}'?" if close else ""
        raise UserError(
            f"no '{model}' section in {where} (sections present: {listing}), and "
            f"{', '.join(repr(n) for n in strangers)} {'is not a model' if len(strangers) == 1 else 'are not models'}"
            f"{hint}; valid sections: general, {', '.join(model_names())}"
        )
    log.warning("no '%s' section in %s (sections present: %s); its defaults apply", model, where, listing)


def _is_model(name: str) -> bool:
    """Whether a section name is a registered model's name or alias, as written."""
    return name in cli_choices(multi_scene=False) + cli_choices(multi_scene=True)


def load_config(config_path: str | Path, model_name: str, override_path: str | Path | None = None) -> dict:
    """The validated effective config of ``model_name`` from a config file and an optional override.

    Each file's ``general`` and model sections are merged section by section (the override wins), then
    the model section is updated by ``general``; a model no file has a section for takes its defaults. See
    the module docstring for the checks.
    """
    model = get_spec(model_name).name
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
        _missing_section(model, [(path, read_config_file(path)) for path in files])

    for key in general.keys() & model_section.keys():
        if general[key] != model_section[key]:
            log.warning(
                "'%s' is set in %s (%r) and in %s (%r); 'general' wins",
                key,
                model_origin[key],
                model_section[key],
                general_origin[key],
                general[key],
            )
    effective = {**model_section, **general}
    origins = {**model_origin, **general_origin}
    return validate_config(model, effective, origins=origins)


def main(argv: list[str] | None = None, prog: str = "python -m models.config") -> int:
    """Print the effective config of one model as JSON."""
    parser = argparse.ArgumentParser(
        prog=prog, description=main.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("config", help="config JSON file (general + a section per model it configures)")
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
