"""Training recipes as data: which stages a model trains, each a config section applied on top of the model's.

A recipe file (``configs/recipes/``) is ``{"<model>": [stage, ...], "default": [stage, ...]}``; a stage is
``{"name": ..., "override": {<config keys>}, "doc": ...}``. ``released.json`` holds the released configs'
stages, ``paper_<dataset>.json`` the paper's. :mod:`engine.reproduction.reproduce` runs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.registry import canonical_model_name
from util.errors import UserError

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"


@dataclass(frozen=True)
class Stage:
    """One training stage of a recipe: a config section applied on top of the model's section."""

    number: int  # its place in the recipe, from 1: the folder stage<number>
    name: str
    override: dict
    doc: str = ""


STAGE_KEYS = ("name", "override", "doc")


def _stage(path: Path, key: str, k: int, raw) -> Stage:
    where = f"recipe {path}: {key!r} stage {k}"
    if not isinstance(raw, dict):
        raise UserError(f'{where} is not an object ({{"name": ..., "override": {{...}}}})')
    unknown = sorted(set(raw) - set(STAGE_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; a stage has {', '.join(STAGE_KEYS)}")
    if "override" not in raw:
        raise UserError(f"{where} has no override (write {{}} to train with the config as it is)")
    if not isinstance(raw["override"], dict):
        raise UserError(f"{where}: override must be an object of config keys, got {type(raw['override']).__name__}")
    if not isinstance(raw.get("name"), str) or not raw["name"].strip():
        raise UserError(f"{where} needs a name")
    if not isinstance(raw.get("doc", ""), str):
        raise UserError(f"{where}: doc must be a string")
    return Stage(k, raw["name"].strip(), dict(raw["override"]), raw.get("doc", ""))


def load_recipe(path: str | Path) -> dict[str, tuple[Stage, ...]]:
    """A recipe file, checked: ``{"<model>": [stage, ...], "default": [stage, ...]}`` -> model name (canonical)
    or ``default`` -> its stages. A stage is ``{"name": ..., "override": {<config keys>}, "doc": ...}`` (doc
    optional). Every mistake is a one-line UserError; the override's keys are checked against the config
    (:func:`util.config.load_config`) when the stage's ``override.json`` is written."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--recipe {path}: file not found (use released, paper or the path of a recipe JSON file)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"recipe {path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f'recipe {path}: expected an object {{"<model>": [stage, ...], "default": [stage, ...]}}')
    recipe: dict[str, tuple[Stage, ...]] = {}
    keys: dict[str, str] = {}
    for key, stages in raw.items():
        try:
            name = key if key == "default" else canonical_model_name(key)
        except UserError as exc:
            raise UserError(f"recipe {path}: {exc}") from None
        if name in recipe:
            raise UserError(f"recipe {path}: {keys[name]!r} and {key!r} both name {name}; give its stages once")
        keys[name] = key
        if not isinstance(stages, list) or not stages:
            raise UserError(f"recipe {path}: {key!r} needs a non-empty list of stages")
        recipe[name] = tuple(_stage(path, key, k, s) for k, s in enumerate(stages, 1))
    return recipe


def freezes_nothing(stage: Stage, config: dict) -> bool:
    """A stage that turns ``freeze`` on while the effective config names no parameter to keep training."""
    override = stage.override
    return bool(override.get("freeze", config["freeze"])) and not override.get(
        "freeze_exclude_phrase", config["freeze_exclude_phrase"]
    )
