"""AtLoc (Wang et al., AAAI 2020) as the reference HyperPose code builds it: ResNet34 -> fc 2048 -> ReLU ->
non-local self-attention on the feature vector -> dropout 0.5 -> fc_xyz (3) and fc_wpqr (4, a raw quaternion).

Difference from the reference, deliberate: the reference calls ``F.dropout(z, p=0.5)`` without
``training=``, so its dropout stays on in eval mode and its test outputs are random. Here the dropout is
off in eval mode, so ``test`` is deterministic. Parameter names and order equal the reference checkpoints
(``feature_extractor.*``, ``att.*``, ``fc_xyz``, ``fc_wpqr``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DROPOUT = 0.5  # the reference factory always builds droprate 0.5


class AttentionBlock(nn.Module):
    """Non-local attention on one vector per image, width C with inner width C / 8.

    With g, theta, phi = Linear(C, C/8)(r): a[n, i, j] = softmax_j(phi[n, i] * theta[n, j]) (an outer
    product, softmax over j), y[n, i] = sum_j a[n, i, j] g[n, j], and z = W(y) + r.
    """

    def __init__(self, channels: int):
        super().__init__()
        inner = channels // 8
        self.g = nn.Linear(channels, inner)
        self.theta = nn.Linear(channels, inner)
        self.phi = nn.Linear(channels, inner)
        self.W = nn.Linear(inner, channels)

    def forward(self, r_BC: torch.Tensor) -> torch.Tensor:
        g_BI, theta_BI, phi_BI = self.g(r_BC), self.theta(r_BC), self.phi(r_BC)
        attn_BII = torch.softmax(phi_BI.unsqueeze(2) * theta_BI.unsqueeze(1), dim=2)
        y_BI = torch.bmm(attn_BII, g_BI.unsqueeze(2)).squeeze(2)
        return self.W(y_BI) + r_BC


class AtLoc(nn.Module):
    """AtLoc: ``forward(img) -> (pose_B7, None)``; the backbone's pooled feature is its 2048-wide fc."""

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__()
        width = backbone.feature_dim
        self.feature_extractor = backbone
        self.att = AttentionBlock(width)
        self.fc_xyz = nn.Linear(width, 3)
        self.fc_wpqr = nn.Linear(width, 4)
        if config.get("head_init", "reference") != "torch":
            for layer in (self.fc_xyz, self.fc_wpqr):  # the reference's re-initialisation of the heads
                nn.init.kaiming_normal_(layer.weight)
                nn.init.zeros_(layer.bias)

    def attend(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Backbone, ReLU and attention: the feature vector z (B x width) before dropout."""
        r_BC = F.relu(self.feature_extractor.extract(img_B3HW)["pooled"])
        return self.att(r_BC)

    def forward(self, img_B3HW: torch.Tensor, scene_B: torch.Tensor | None = None):
        z_BC = F.dropout(self.attend(img_B3HW), p=DROPOUT, training=self.training)
        return torch.cat((self.fc_xyz(z_BC), self.fc_wpqr(z_BC)), dim=1), None
