"""Model registry: model name -> constructor ``cls(config, backbone)``.

Classes are imported on demand, so one model's module never has to import another's.
"""
from __future__ import annotations

import importlib

from torch import nn

from util.config import MODEL_ALIASES as ALIASES, MODEL_NAMES  # the one list of model names
_CLASSES = {
    "effposenet": ("models.effposenet", "EffPoseNet"),
    "hyperpose": ("models.hyperpose", "HyperPose"),
    "ems-transposenet": ("models.ms_transposenet", "MSTransPoseNet"),
    "mshyperpose": ("models.mshyperpose", "MSHyperPose"),
}
assert set(_CLASSES) == set(MODEL_NAMES)


def canonical_model_name(model_name: str) -> str:
    """Resolve aliases; an unknown name is a ValueError listing the valid names."""
    name = ALIASES.get(model_name, model_name)
    if name not in _CLASSES:
        valid = ", ".join(MODEL_NAMES + tuple(f"{a} (= {n})" for a, n in ALIASES.items()))
        raise ValueError(f"unknown model name {model_name!r}; valid names: {valid}")
    return name


def model_class(model_name: str) -> type[nn.Module]:
    """The class implementing ``model_name`` (aliases accepted)."""
    module_name, class_name = _CLASSES[canonical_model_name(model_name)]
    return getattr(importlib.import_module(module_name), class_name)


def build_model(model_name: str, config: dict, backbone: nn.Module) -> nn.Module:
    """Construct the named model around ``backbone`` with the effective ``config``."""
    return model_class(model_name)(config, backbone)
