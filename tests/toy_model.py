"""A toy single-scene pose regressor, as a user would add one: a module built as ``cls(config, backbone)``
that returns ``(pose_B7, None)``, and one :class:`models.registry.ModelSpec`. ``tests/test_toys.py``
registers it and runs every command through it."""

from __future__ import annotations

import torch
from torch import nn

from models.registry import ModelSpec
from util.schema import Key, at_least


class ToyAPR(nn.Module):
    """Pooled backbone feature -> Linear -> ReLU -> Linear -> (t, q); any backbone."""

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        width = config["toy_width"]
        self.head = nn.Sequential(nn.Linear(backbone.feature_dim, width), nn.ReLU(), nn.Linear(width, 7))

    def forward(self, img_B3HW: torch.Tensor, scene_B: torch.Tensor | None = None):
        return self.head(self.backbone.extract(img_B3HW)["pooled"]), None


SPEC = ModelSpec(
    name="toyapr",
    target=ToyAPR,
    multi_scene=False,
    summary="a toy single-scene regressor (tests only)",
    keys={"toy_width": Key(8, "int", at_least(1), doc="head width")},
    arch_keys=("toy_width",),
)
