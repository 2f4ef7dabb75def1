"""HyperAtLoc: AtLoc plus hypernetwork output layers generated from the attention output.

Both hyper branches read the attention output z before the dropout (as in the reference), with the
single-scene hyper branch of HyperPose (``hyper_in_<b>_proj`` -> ``hyper_in_<b>_fc_2`` -> swish ->
``hypernet_<b>_fc_h2`` generates an (H + 1) x out layer, applied to ``[hyper_in_<b>(z), 1]``); their
outputs are added to ``fc_xyz`` / ``fc_wpqr`` of the dropped-out z. As for AtLoc, the dropout is off in
eval mode here (the reference leaves it on). State_dict: AtLoc's keys, then the t and rot hyper layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.atloc import DROPOUT, AtLoc
from models.hyperpose import add_hyper_branch, hyper_branch_output, init_hyper_model


class HyperAtLoc(AtLoc):
    """AtLoc with per-image generated output layers: ``forward(img) -> (pose_B7, None)``."""

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__(config, backbone)
        width = backbone.feature_dim
        add_hyper_branch(self, "t", width, int(config["hyper_dim_t"]), 3)
        add_hyper_branch(self, "rot", width, int(config["hyper_dim_rot"]), 4)
        # The reference draws every Linear weight of the model (attention and hyper layers included)
        # with kaiming_normal, then the heads again with zero bias (AtLoc's constructor did the latter).
        head = [name for name, _ in self.named_children() if name != "feature_extractor"]
        init_hyper_model(self, backbone, config.get("head_init", "reference"), head)

    def forward(self, img_B3HW: torch.Tensor, scene_B: torch.Tensor | None = None):
        z_BC = self.attend(img_B3HW)
        t_B3 = hyper_branch_output(self, "t", z_BC)
        q_B4 = hyper_branch_output(self, "rot", z_BC)
        zd_BC = F.dropout(z_BC, p=DROPOUT, training=self.training)
        return torch.cat((self.fc_xyz(zd_BC) + t_B3, self.fc_wpqr(zd_BC) + q_B4), dim=1), None
