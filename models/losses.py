"""Training losses: the camera pose loss with fixed or learned (Kendall 2017) weighting, plus the scene
classification term of the multi-scene models."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CameraPoseLoss(nn.Module):
    """L = l_x exp(-s_x) + s_x + l_q exp(-s_q) + s_q when learnable, else s_x l_x + s_q l_q.

    l_x = mean ||t - t_gt||_p and l_q = mean ||q/|q| - q_gt/|q_gt|||_p with p = ``norm``. ``s_x`` and ``s_q`` are
    parameters of this module, so they are saved in checkpoints (the reference dropped them) and the
    trainer keeps them out of weight decay (the reference decayed them).
    """

    def __init__(self, learnable: bool = True, s_x: float = 0.0, s_q: float = 0.0, norm: float = 2):
        super().__init__()
        self.learnable = learnable
        self.norm = norm
        self.s_x = nn.Parameter(torch.tensor([float(s_x)]), requires_grad=learnable)
        self.s_q = nn.Parameter(torch.tensor([float(s_q)]), requires_grad=learnable)

    @classmethod
    def from_config(cls, config: dict) -> CameraPoseLoss:
        return cls(config["learnable"], config["s_x"], config["s_q"], config["norm"])

    def forward(self, pose_pred_B7: torch.Tensor, pose_gt_B7: torch.Tensor) -> torch.Tensor:
        pose_pred_B7 = pose_pred_B7.float()
        l_x = torch.linalg.vector_norm(pose_pred_B7[:, :3] - pose_gt_B7[:, :3], ord=self.norm, dim=1).mean()
        q_pred = nn.functional.normalize(pose_pred_B7[:, 3:], dim=1)
        q_gt = nn.functional.normalize(pose_gt_B7[:, 3:], dim=1)
        l_q = torch.linalg.vector_norm(q_pred - q_gt, ord=self.norm, dim=1).mean()
        if self.learnable:
            return l_x * torch.exp(-self.s_x[0]) + self.s_x[0] + l_q * torch.exp(-self.s_q[0]) + self.s_q[0]
        return self.s_x[0] * l_x + self.s_q[0] * l_q

    def total(
        self,
        pose_pred_B7: torch.Tensor,
        pose_gt_B7: torch.Tensor,
        scene_logp_BS: torch.Tensor | None = None,
        scene_gt_B: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The training loss of a batch: the pose term plus, when the model classifies scenes, the NLL of the
        true scene (unweighted, as in the reference). Returns (loss, pose term, scene term or None)."""
        pose_loss = self(pose_pred_B7, pose_gt_B7)
        if scene_logp_BS is None:
            return pose_loss, pose_loss, None
        scene_nll = F.nll_loss(scene_logp_BS.float(), scene_gt_B)
        return pose_loss + scene_nll, pose_loss, scene_nll
