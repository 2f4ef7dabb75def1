"""EffPoseNet: the PoseNet head on EfficientNet-B0 features (the reference's baseline, no hypernetwork)."""
from __future__ import annotations

from models.posenet import PoseNet


class EffPoseNet(PoseNet):
    """PoseNet with PyTorch's default initialisation of its head, as the reference EffPoseNet."""

    kaiming_init = False
