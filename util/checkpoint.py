"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with ``weights_only=True``.

Our format holds the full training state (model, optimizer, scheduler, loss weights s_x/s_q, epoch, config,
scene-id map). A reference checkpoint is a bare ``state_dict``; it loads into the same models because the
parameter names are the reference's.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from util.errors import UserError
from util.io import atomic_torch_save

log = logging.getLogger(__name__)

FORMAT = "hyperpose-checkpoint"
FORMAT_VERSION = 1

def save_checkpoint(path: str | Path, *, model_name: str, config: dict, model: torch.nn.Module,
                    epoch: int, scene_map: dict | None = None, loss: torch.nn.Module | None = None,
                    optimizer=None, scheduler=None, extra: dict | None = None) -> Path:
    """Write the full training state to ``path`` atomically."""
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "config": dict(config),
        "scene_map": dict(scene_map or {}),
        "epoch": int(epoch),
        "model": model.state_dict(),
        "loss": loss.state_dict() if loss is not None else {},
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "extra": dict(extra or {}),
    }
    return atomic_torch_save(state, path)


def is_reference_state_dict(obj) -> bool:
    """A bare state_dict (name -> tensor), as the reference code writes."""
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely. Returns our dict; a reference state_dict is wrapped as ``format='reference'``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on foreign or corrupt files
        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
            raise UserError(f"cannot read checkpoint {path}: it holds Python objects other than tensors and "
                            f"plain containers, which are not loaded from files for safety") from None
        raise UserError(f"cannot read checkpoint {path}: not a readable torch file "
                        f"({type(exc).__name__})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise UserError(f"checkpoint {path} has format version {obj['format_version']}; "
                            f"this code reads up to {FORMAT_VERSION}")
        return obj
    if is_reference_state_dict(obj):
        from models.registry import guess_reference_model

        return {"format": "reference", "model_name": guess_reference_model(obj), "model": obj,
                "config": {}, "scene_map": {}, "epoch": None}
    raise UserError(f"{path} is neither a HyperPose checkpoint nor a model state_dict")


def architecture_keys(model_name: str) -> tuple[str, ...]:
    """Config keys that change a model's architecture (shapes or numerics), from its registry entry."""
    from models.registry import get_spec

    return ("backbone_type",) + get_spec(model_name).arch_keys


def check_compatible(ckpt: dict, model_name: str, config: dict, path: str | Path) -> None:
    """Raise a one-line UserError when a checkpoint belongs to another model or architecture config."""
    trained = ckpt.get("model_name")
    if trained not in (None, "unknown") and trained != model_name:
        how = " (by its parameter names)" if ckpt.get("format") == "reference" else ""
        raise UserError(f"checkpoint {path} holds a '{trained}' model{how}, not '{model_name}'")
    if ckpt.get("format") != FORMAT:
        return
    diffs = [f"{k}={ckpt['config'].get(k)!r} (config: {config.get(k)!r})" for k in architecture_keys(model_name)
             if k in config and k in ckpt["config"] and ckpt["config"][k] != config[k]]
    if diffs:
        raise UserError(f"checkpoint {path} was trained with another architecture: " + ", ".join(diffs))


def load_model_weights(model: torch.nn.Module, state_dict: dict, path: str | Path) -> None:
    """Strict load; a mismatch is one line naming how many keys differ and a few examples."""
    missing, unexpected = [], []
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} with other shapes (e.g. {k}: {tuple(state_dict[k].shape)} vs "
                         f"{tuple(own[k].shape)})")
        raise UserError(f"checkpoint {path} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
