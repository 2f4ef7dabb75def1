"""EffPoseNet: the PoseNet head on EfficientNet-B0 features (the reference's baseline, no hypernetwork)."""

from __future__ import annotations

from models.posenet import PoseNet


class EffPoseNet(PoseNet):
    """PoseNet on EfficientNet-B0. The reference's constructor runs PoseNet's kaiming loop again after
    swapping in EfficientNet, so its head starts as PoseNet's does (``head_init`` "reference")."""
