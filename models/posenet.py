"""PoseNet: a backbone's pooled feature -> fc1 (1024) -> ReLU -> dropout 0.1 -> fc2 (t, 3) and fc3 (q, 4).

This is the reference's ``posenet`` (on GoogLeNet, whose pooled feature is its 1000-way ``fc`` output) and,
on EfficientNet-B0, its ``effposenet`` baseline (see ``models/effposenet.py``). Parameter names and order
equal the reference checkpoints (``backbone.*``, then fc1, fc2, fc3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LATENT_DIM = 1024  # fixed in the reference; its config key reg_hidden_dim does not reach this head


def add_static_head(owner: nn.Module, in_dim: int) -> None:
    """Register the PoseNet head on ``owner`` as the reference checkpoints keep it: fc1, fc2, fc3, dropout."""
    owner.fc1 = nn.Linear(in_dim, LATENT_DIM)
    owner.fc2 = nn.Linear(LATENT_DIM, 3)
    owner.fc3 = nn.Linear(LATENT_DIM, 4)
    owner.dropout = nn.Dropout(p=0.1)


def static_head_output(owner: nn.Module, feat_BC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_B3, q_B4) of the PoseNet head registered on ``owner``."""
    latent_BL = owner.dropout(F.relu(owner.fc1(feat_BC)))
    return owner.fc2(latent_BL), owner.fc3(latent_BL)


class PoseNet(nn.Module):
    """Single-scene absolute pose regressor: ``forward(img) -> (pose_B7, None)``, pose = [t, q unnormalised]."""

    # The reference PoseNet draws every Linear weight with kaiming_normal (fan_in); EffPoseNet keeps
    # PyTorch's default initialisation.
    kaiming_init = True

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__()
        del config  # the architecture has no configurable sizes
        self.backbone = backbone
        add_static_head(self, backbone.feature_dim)
        if self.kaiming_init:
            for layer in (self.fc1, self.fc2, self.fc3):
                nn.init.kaiming_normal_(layer.weight)

    def forward(self, img_B3HW: torch.Tensor, scene_B: torch.Tensor | None = None):
        t_B3, q_B4 = static_head_output(self, self.backbone.extract(img_B3HW)["pooled"])
        return torch.cat((t_B3, q_B4), dim=1), None
