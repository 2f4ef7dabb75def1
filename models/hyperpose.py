"""HyperPose (single scene): the EffPoseNet head plus a hypernetwork head, outputs summed.

For t (and likewise rot, with hyper_dim_rot and 4 outputs), from the pooled features f:
    w_t  = hypernet_t_fc_h2(swish(hyper_in_t_fc_2(hyper_in_t_proj(f))))   # per image, 3 (Ht + 1)
    t    = fc2(dropout(relu(fc1(f)))) + [hyper_in_t(f), 1] @ w_t.view(Ht + 1, 3)
So ``hyper_in_t_proj`` feeds the weight generator and ``hyper_in_t`` is the input the generated
layer is applied to (the reference names, kept so its checkpoints load strictly).
"""
from __future__ import annotations

import torch
from torch import nn

from models.backbone import FEATURE_DIM, extract_features, global_pool
from models.effposenet import LATENT_DIM, regress_static
from models.hypernet import apply_generated_linear, swish


class HyperPose(nn.Module):
    """Single-scene pose regressor with per-image generated regression layers: image -> pose_B7."""

    multi_scene = False

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__()
        hyper_dim_t, hyper_dim_rot = int(config["hyper_dim_t"]), int(config["hyper_dim_rot"])
        # Registration order defines the state_dict order of the reference checkpoints.
        self._backbone = backbone
        self.fc1 = nn.Linear(FEATURE_DIM, LATENT_DIM)
        self.fc2 = nn.Linear(LATENT_DIM, 3)
        self.fc3 = nn.Linear(LATENT_DIM, 4)
        self.dropout = nn.Dropout(p=0.1)

        self.hyper_in_t_proj = nn.Linear(FEATURE_DIM, hyper_dim_t)
        self.hyper_in_t = nn.Linear(FEATURE_DIM, hyper_dim_t)
        self.hyper_in_t_fc_2 = nn.Linear(hyper_dim_t, hyper_dim_t)
        self.hypernet_t_fc_h2 = nn.Linear(hyper_dim_t, 3 * (hyper_dim_t + 1))

        self.hyper_in_rot_proj = nn.Linear(FEATURE_DIM, hyper_dim_rot)
        self.hyper_in_rot = nn.Linear(FEATURE_DIM, hyper_dim_rot)
        self.hyper_in_rot_fc_2 = nn.Linear(hyper_dim_rot, hyper_dim_rot)
        self.hypernet_rot_fc_h2 = nn.Linear(hyper_dim_rot, 4 * (hyper_dim_rot + 1))

    @staticmethod
    def _hyper_branch(feat_BC: torch.Tensor, generator_in: nn.Linear, generator_hidden: nn.Linear,
                      generator_out: nn.Linear, regressor_in: nn.Linear, out_features: int) -> torch.Tensor:
        """Generate one linear layer per image and apply it to that image's projected features."""
        w_flat_BK = generator_out(swish(generator_hidden(generator_in(feat_BC))))
        return apply_generated_linear(regressor_in(feat_BC), w_flat_BK, out_features)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        feat_BC = global_pool(extract_features(self._backbone, img_B3HW)["features"])
        t_B3, q_B4 = regress_static(self.fc1, self.fc2, self.fc3, self.dropout, feat_BC)
        t_B3 = t_B3 + self._hyper_branch(feat_BC, self.hyper_in_t_proj, self.hyper_in_t_fc_2,
                                         self.hypernet_t_fc_h2, self.hyper_in_t, 3)
        q_B4 = q_B4 + self._hyper_branch(feat_BC, self.hyper_in_rot_proj, self.hyper_in_rot_fc_2,
                                         self.hypernet_rot_fc_h2, self.hyper_in_rot, 4)
        return torch.cat((t_B3, q_B4), dim=1)
