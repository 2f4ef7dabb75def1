"""A toy backbone, as a user would add one: a module that offers the :class:`models.backbone.Backbone`
interface, and one :class:`models.backbone.BackboneSpec` for the registry. ``tests/test_toys.py`` registers
it and runs every command through it."""

from __future__ import annotations

import torch
from torch import nn

from models.backbone import Backbone, BackboneSpec, Endpoint, global_pool

WIDTHS = (4, 8, 8, 16, 16)  # channels of reduction_1 .. reduction_5 (stride 2 .. 32)


class ToyConv(nn.Module, Backbone):
    """Five stride-2 conv + ReLU stages; the pooled feature is the last map, averaged."""

    def __init__(self):
        super().__init__()
        widths = (3, *WIDTHS)
        self.toy_stages = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1) for c_in, c_out in zip(widths, widths[1:])
        )
        self.endpoints = {f"reduction_{k + 1}": Endpoint(c, 2 ** (k + 1)) for k, c in enumerate(WIDTHS)}
        self.feature_dim = WIDTHS[-1]

    def extract(self, img_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        out, x = {}, img_B3HW
        for name, stage in zip(self.endpoints, self.toy_stages):
            out[name] = x = torch.relu(stage(x))
        out["pooled"] = global_pool(x)
        return out


SPEC = BackboneSpec(
    name="toyconv",
    build=ToyConv,
    summary="a five-stage toy conv net (tests only)",
    recognise=lambda state: "toy_stages.0.weight" in state,
)
