"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with ``weights_only=True``.

Our format holds the full training state (model, optimizer, scheduler, loss weights s_x/s_q, epoch, config,
scene-id map). A reference checkpoint is a bare ``state_dict``; it loads into the same models because the
parameter names are the reference's.

This module knows no model: which model a bare reference state_dict holds, and what a checkpoint decides
about the config of the model that loads it, are the registry's to say (``models/loading.py``).
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path

import torch

from util.errors import UserError
from util.io import atomic_torch_save, check_input_file

log = logging.getLogger(__name__)

FORMAT = "hyperpose-checkpoint"
FORMAT_VERSION = 1


def non_finite_tensors(*modules: torch.nn.Module | None) -> list[str]:
    """Names of the floating-point parameters and buffers (e.g. BatchNorm statistics) holding NaN or inf."""
    bad = []
    for module in modules:
        if module is None:
            continue
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
    return bad


def save_checkpoint(
    path: str | Path,
    *,
    model_name: str,
    config: dict,
    model: torch.nn.Module,
    epoch: int,
    scene_map: dict | None = None,
    loss: torch.nn.Module | None = None,
    optimizer=None,
    scheduler=None,
    extra: dict | None = None,
) -> Path:
    """Write the training state to ``path`` atomically (``optimizer=None`` leaves the optimizer state out).

    A model or loss with a non-finite value is never written: that is a UserError naming the tensor.
    """
    bad = non_finite_tensors(model, loss)
    if bad:
        raise UserError(f"not saving {Path(path).name}: {len(bad)} tensor(s) hold NaN or inf (e.g. {bad[0]})")
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


def drop_optimizer_state(path: str | Path) -> Path:
    """Rewrite a checkpoint without its optimizer state (``keep_optimizer_state: "last"``): Adam's two
    moments are twice the size of the weights, and only the latest checkpoint of a run needs them."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not state.get("optimizer"):
        return Path(path)
    state["optimizer"] = {}
    return atomic_torch_save(state, path)


def is_reference_state_dict(obj) -> bool:
    """A bare state_dict (name -> tensor), as the reference code writes."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (torch >= 1.6) or a pickle stream (protocol 2+ starts with 0x80: the legacy format)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def torch_load_problem(path: str | Path, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a short clause for a one-line error."""
    path = Path(path)
    try:
        torch_file = _looks_like_torch_file(path)
    except OSError:
        torch_file = True
    text = str(exc)
    if not torch_file or "Unsupported operand" in text:
        return "it is not a PyTorch file (neither a zip archive written by torch.save nor a pickle)"
    if isinstance(exc, pickle.UnpicklingError) and "eights" in text:  # torch's weights-only refusal
        match = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({match.group(1)})" if match else ""
        return f"it holds Python objects other than tensors{what}, which are never loaded from files for safety"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"it is not a readable PyTorch file ({type(exc).__name__}: {first[:80]})"


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely. Returns our dict; a reference state_dict is wrapped as ``format='reference'``
    with ``model_name`` None (``models.loading.load_checkpoint`` names its model from its keys)."""
    path = check_input_file(path, "checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on foreign or corrupt files
        raise UserError(f"cannot read checkpoint {path}: {torch_load_problem(path, exc)}") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise UserError(
                f"checkpoint {path} has format version {obj['format_version']}; this code reads up to {FORMAT_VERSION}"
            )
        return obj
    if is_reference_state_dict(obj):
        return {"format": "reference", "model_name": None, "model": obj, "config": {}, "scene_map": {}, "epoch": None}
    raise UserError(f"{path} is neither a HyperPose checkpoint nor a model state_dict")


def load_model_weights(model: torch.nn.Module, state_dict: dict, path: str | Path) -> None:
    """Strict load; a mismatch is one line naming how many keys differ and a few examples."""
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
            parts.append(
                f"{len(shape)} with other shapes (e.g. {k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise UserError(f"checkpoint {path} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
