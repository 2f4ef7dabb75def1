"""PoseNet: a backbone's pooled feature -> fc1 (1024) -> ReLU -> dropout 0.1 -> fc2 (t, 3) and fc3 (q, 4).

This is the reference's ``posenet`` (on GoogLeNet, whose pooled feature is its 1000-way ``fc`` output) and,
on EfficientNet-B0, its ``effposenet`` baseline (see ``models/effposenet.py``). Parameter names and order
equal the reference checkpoints (``backbone.*``, then fc1, fc2, fc3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.hypernet import kaiming_linears

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


def reference_head_layers(owner: nn.Module, backbone: nn.Module, head_names) -> list[nn.Module]:
    """What the reference's init loop over ``self.modules()`` redraws with kaiming: the head's layers and
    the backbone's feature layer, if its pooled feature is a Linear's output (GoogLeNet's pretrained ``fc``,
    whose 1000 outputs are PoseNet's feature; the reference keeps its bias). The backbone's other layers
    hold no Linear the head reads."""
    layer = getattr(backbone, "feature_layer", None)
    return [getattr(owner, name) for name in head_names] + ([layer] if layer is not None else [])


class PoseNet(nn.Module):
    """Single-scene absolute pose regressor: ``forward(img) -> (pose_B7, None)``, pose = [t, q unnormalised].

    ``head_init`` "reference" (the reference's, for its PoseNet and EffPoseNet alike): kaiming_normal on the
    weight of fc1-fc3 and of the backbone's feature layer, biases at PyTorch's default; "torch": PyTorch's
    default, the backbone's feature layer as loaded."""

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        add_static_head(self, backbone.feature_dim)
        if config.get("head_init", "reference") != "torch":
            kaiming_linears(reference_head_layers(self, backbone, ("fc1", "fc2", "fc3")))

    def forward(self, img_B3HW: torch.Tensor, scene_B: torch.Tensor | None = None):
        t_B3, q_B4 = static_head_output(self, self.backbone.extract(img_B3HW)["pooled"])
        return torch.cat((t_B3, q_B4), dim=1), None
