"""Multi-scene HyperPose (Ferens and Keller): MS-Transformer body plus hypernetwork regressors.

The per-scene heads of :class:`MSTransPoseNet` are replaced by one shared MLP head per branch, and a
hypernetwork generates, per image, the weights of a three-layer MLP that is added to it:

    h      = desc + hyper_in_proj(pooled backbone feature)              (B x d)
    W_k    = hypernet_fc_hk(swish(hyper_in_fc_k(h)))   for k = 0, 1, 2  (flat per-image matrices)
    out    = W_2(swish(W_1(swish(W_0(desc)))))                          (each W_k has a bias row)
    result = shared_head(desc) + out

Layer widths: t branch d -> Ht -> int(Ht * hyper_t_hidden_scale) -> 3, rot branch d -> Hr -> Hr -> 4
(the rot branch always uses hidden scale 1). With the reference config (d=256, Ht=256, Hr=512,
scale 0.5) the model has 142.7 M parameters for 7 scenes, 126 M of them in the four large generators.

State_dict layout equals ``tests/data/reference_checkpoints/mshyperpose_*.tsv``: the shared heads keep
the position the parent gave its per-scene heads (right after ``scene_embed``), but without the
``.{k}`` index; the hypernetwork layers follow.
"""

from __future__ import annotations

import torch
from torch import nn

from models.hypernet import GeneratedMLP
from models.ms_transposenet import MSTransPoseNet, PoseRegressor, require
from util.errors import UserError


class MSHyperPose(MSTransPoseNet):
    """MS-Transformer with a shared head plus per-image generated MLPs; same forward contract."""

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__(config, backbone)
        d = self.hidden_dim
        hyper_dim_t = int(require(config, "hyper_dim_t"))
        hyper_dim_rot = int(require(config, "hyper_dim_rot"))
        hidden_t2 = int(hyper_dim_t * float(require(config, "hyper_t_hidden_scale")))
        if min(hyper_dim_t, hyper_dim_rot, hidden_t2) < 1:
            raise UserError("hyper_dim_t, hyper_dim_rot and int(hyper_dim_t * hyper_t_hidden_scale) must be >= 1")
        # Registration order fixes the state_dict order, which must match the reference layout.
        self.hyper_in_t_proj = nn.Linear(backbone.feature_dim, d)
        GeneratedMLP(d, (d, hyper_dim_t, hidden_t2, 3)).attach(self, "t")
        self.hyper_in_rot_proj = nn.Linear(backbone.feature_dim, d)
        GeneratedMLP(d, (d, hyper_dim_rot, hyper_dim_rot, 4)).attach(self, "rot")
        # "reference" and "torch": the generators keep PyTorch's default init, as in the reference.
        head_init = config.get("head_init", "reference")
        if head_init in ("hyperfan", "zero"):
            for branch in ("t", "rot"):
                getattr(self, f"_hyper_head_{branch}").init_generators(head_init)

    def _build_regressor_heads(self, d: int, reg_hidden_dim: int, num_scenes: int) -> None:
        """One shared t head and one shared rot head (keys without a scene index)."""
        self.regressor_head_t = PoseRegressor(d, 3, reg_hidden_dim)
        self.regressor_head_rot = PoseRegressor(d, 4, reg_hidden_dim)

    def hyper_regress(self, branch: str, desc_Bd: torch.Tensor, pooled_BC: torch.Tensor) -> torch.Tensor:
        """The generated-MLP output of ``branch`` ("t" -> B x 3, "rot" -> B x 4), batched."""
        h_Bd = desc_Bd + getattr(self, f"hyper_in_{branch}_proj")(pooled_BC)
        return getattr(self, f"_hyper_head_{branch}")(h_Bd, desc_Bd)

    def regress(
        self,
        desc_t_Bd: torch.Tensor,
        desc_rot_Bd: torch.Tensor,
        scene_B: torch.Tensor,
        pooled_BC: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared head plus generated MLP, per branch -> (t_B3, q_B4); the scene only picks the query."""
        t_B3 = self.regressor_head_t(desc_t_Bd) + self.hyper_regress("t", desc_t_Bd, pooled_BC)
        q_B4 = self.regressor_head_rot(desc_rot_Bd) + self.hyper_regress("rot", desc_rot_Bd, pooled_BC)
        return t_B3, q_B4
