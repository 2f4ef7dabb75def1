"""EffPoseNet: the PoseNet-style baseline head on EfficientNet-B0 features (no hypernetwork).

pooled 1280 -> fc1 (1024) -> ReLU -> dropout 0.1 -> fc2 (t, 3) and fc3 (q, 4). Parameter names and
order equal the reference checkpoints (``backbone.*``, then fc1, fc2, fc3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import FEATURE_DIM, extract_features, global_pool

LATENT_DIM = 1024  # fixed in the reference; its config key reg_hidden_dim does not reach this head


def regress_static(fc1: nn.Linear, fc2: nn.Linear, fc3: nn.Linear, dropout: nn.Dropout,
                   feat_BC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared PoseNet head: (t_B3, q_B4) from pooled features."""
    latent_BL = dropout(F.relu(fc1(feat_BC)))
    return fc2(latent_BL), fc3(latent_BL)


class EffPoseNet(nn.Module):
    """Single-scene absolute pose regressor: image -> pose_B7 = [t (3), q (4, unnormalised)]."""

    multi_scene = False

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__()
        del config  # the architecture has no configurable sizes
        self.backbone = backbone
        self.fc1 = nn.Linear(FEATURE_DIM, LATENT_DIM)
        self.fc2 = nn.Linear(LATENT_DIM, 3)
        self.fc3 = nn.Linear(LATENT_DIM, 4)
        self.dropout = nn.Dropout(p=0.1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        feat_BC = global_pool(extract_features(self.backbone, img_B3HW)["features"])
        t_B3, q_B4 = regress_static(self.fc1, self.fc2, self.fc3, self.dropout, feat_BC)
        return torch.cat((t_B3, q_B4), dim=1)
