"""From a checkpoint file to a model: which model it holds, the config that builds it, its scene map, its weights.

``util/checkpoint.py`` reads and writes checkpoint files and knows no model; this module asks the registry
what a checkpoint means for the model that loads it. :func:`load_model` is the one loader that testing
(``engine.evaluation.evaluate.Evaluator.load``), inference (``engine.deployment.localize.load_for_inference``)
and starting a training run from a checkpoint's weights (``engine.training.train``) build their model with.

The scene map has one policy: a checkpoint of this toolkit records the map it was trained with, and that
map wins. A bare reference state_dict records none; the caller chooses one for its scene heads
(``scene_map_for``), as ``datasets.dataset.reference_scene_map`` does from ``--scene_map``, the known
training orders and the test CSV's scenes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from models.backbone import new_backbone
from models.registry import build_model, canonical_model_name, get_spec, guess_reference_model
from util import checkpoint
from util.checkpoint import FORMAT, load_model_weights
from util.errors import UserError

log = logging.getLogger(__name__)

# The scene map of a checkpoint that records none, for its number of scene heads (None: a single-scene model).
SceneMapFor = Callable[[int | None], dict]


def load_checkpoint(path: str | Path) -> dict:
    """:func:`util.checkpoint.load_checkpoint`, with the model of a bare reference state_dict named from its
    keys (``"unknown"`` when no registered model fits)."""
    ckpt = checkpoint.load_checkpoint(path)
    if ckpt.get("format") == "reference":
        ckpt["model_name"] = guess_reference_model(ckpt["model"])
    return ckpt


def architecture_keys(model_name: str) -> tuple[str, ...]:
    """Config keys that change a model's architecture (shapes or numerics), from its registry entry."""
    return ("backbone_type",) + get_spec(model_name).arch_keys


def check_compatible(ckpt: dict, model_name: str, path: str | Path) -> None:
    """Raise a one-line UserError when a checkpoint holds another model."""
    trained = ckpt.get("model_name")
    if trained not in (None, "unknown") and trained != model_name:
        how = " (by its parameter names)" if ckpt.get("format") == "reference" else ""
        raise UserError(f"checkpoint {path} holds a '{trained}' model{how}, not '{model_name}'")


def checkpoint_scene_count(ckpt: dict, model_name: str) -> int | None:
    """How many scenes the model in ``ckpt`` was built for: its scene map, else its weights."""
    if ckpt.get("scene_map"):
        return len(ckpt["scene_map"])
    count = getattr(get_spec(model_name).cls, "scenes_in_state_dict", None)
    return count(ckpt["model"]) if count is not None else None


def reconcile_config(ckpt: dict, model_name: str, config: dict, path: str | Path) -> dict:
    """The config to build the model that loads ``ckpt``, for testing it, resuming it or starting from it.

    The checkpoint decides the architecture: a checkpoint of this toolkit records its architecture keys,
    and they win over ``config`` with one warning listing the differences (a model fine-tuned with 8 heads
    tests with a config that says 4). A bare reference state_dict of a multi-scene model gets 8 attention
    heads (the reference ignored ``nheads``) and the scene count of its weights. Other keys (batch size,
    workers, image size, ...) stay the config's. A checkpoint of another model is a UserError.
    """
    check_compatible(ckpt, model_name, path)
    spec, config = get_spec(model_name), dict(config)
    if ckpt.get("format") == FORMAT:
        wanted = {k: ckpt["config"][k] for k in architecture_keys(model_name) if k in ckpt["config"]}
    elif spec.multi_scene:
        wanted = {"nheads": 8}  # what the reference code ran, whatever its config said
    else:
        wanted = {}
    if spec.multi_scene:
        n_scenes = checkpoint_scene_count(ckpt, model_name)
        if n_scenes is not None:
            wanted["num_scenes"] = n_scenes
    differ = [k for k, v in wanted.items() if config.get(k) is not None and config.get(k) != v]
    if ckpt.get("format") == "reference" and "nheads" in differ:
        log.warning(
            "reference checkpoint %s: using 8 attention heads, as the reference code did (it ignored nheads=%s)",
            Path(path).name,
            config["nheads"],
        )
        differ.remove("nheads")
    if differ:
        whose = "the scene count of its weights" if ckpt.get("format") == "reference" else "its architecture"
        log.warning(
            "checkpoint %s: using %s: %s",
            Path(path).name,
            whose,
            ", ".join(f"{k}={wanted[k]!r} (config: {config[k]!r})" for k in differ),
        )
    config.update(wanted)
    return config


@dataclass
class LoadedCheckpoint:
    """A model with a checkpoint's weights, and what it was built from."""

    model: nn.Module
    model_name: str
    config: dict  # the effective config the model was built with (architecture keys: the checkpoint's)
    scene_map: dict  # scene name -> id; empty when unknown
    ckpt: dict  # the checkpoint as read (weights, and for ours the training state and extra facts)


def empty_model(model_name: str, config: dict) -> nn.Module:
    """The model of ``config`` around a backbone that starts empty (a checkpoint then holds every weight)."""
    return build_model(model_name, config, new_backbone(config["backbone_type"]))


def load_model(
    checkpoint_path: str | Path,
    model_name: str | None,
    config: dict,
    *,
    scene_map_for: SceneMapFor | None = None,
    ckpt: dict | None = None,
    build: Callable[[dict], nn.Module] | None = None,
) -> LoadedCheckpoint:
    """Build the model a checkpoint (ours or a bare reference state_dict) holds and load its weights strictly.

    ``model_name`` None takes the checkpoint's (guessed from the keys of a reference state_dict). ``config``
    is the effective config to start from; the checkpoint's architecture keys win over it
    (:func:`reconcile_config`). The scene map is the checkpoint's; for a checkpoint that records none it is
    ``scene_map_for(number of scene heads)`` (``None`` for a single-scene model), or empty without
    ``scene_map_for``. A multi-scene model gets ``num_scenes`` from the checkpoint, else from that map.
    ``ckpt`` is the checkpoint when the caller has read it already; ``build(config)`` makes the model (default
    :func:`empty_model`; training passes its own, which puts the model on its device first).
    """
    ckpt = load_checkpoint(checkpoint_path) if ckpt is None else ckpt
    if model_name is None:
        if ckpt.get("model_name") in (None, "unknown"):
            raise UserError(f"cannot tell which model {checkpoint_path} holds: pass model_name=")
        model_name = ckpt["model_name"]
    model_name = canonical_model_name(model_name)
    config = reconcile_config(ckpt, model_name, config, checkpoint_path)
    multi = get_spec(model_name).multi_scene
    if ckpt.get("scene_map"):
        scene_map = {str(s): int(i) for s, i in dict(ckpt["scene_map"]).items()}
    elif scene_map_for is not None:
        scene_map = scene_map_for(config.get("num_scenes") if multi else None)
    else:
        scene_map = {}
    if multi:
        config["num_scenes"] = config.get("num_scenes") or len(scene_map)
        if not config["num_scenes"]:
            raise UserError(
                f"{checkpoint_path}: a multi-scene reference state_dict needs the scene names "
                f"(scenes=[...]) or num_scenes in the config"
            )
    model = build(config) if build is not None else empty_model(model_name, config)
    load_model_weights(model, ckpt["model"], checkpoint_path)
    return LoadedCheckpoint(model, model_name, config, scene_map, ckpt)
