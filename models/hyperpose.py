"""HyperPose (single scene): the PoseNet head plus a hypernetwork head, outputs summed.

For t (and likewise rot, with hyper_dim_rot and 4 outputs), from the pooled features f:
    w_t  = hypernet_t_fc_h2(swish(hyper_in_t_fc_2(hyper_in_t_proj(f))))   # per image, 3 (Ht + 1)
    t    = fc2(dropout(relu(fc1(f)))) + [hyper_in_t(f), 1] @ w_t.view(Ht + 1, 3)
So ``hyper_in_t_proj`` feeds the weight generator and ``hyper_in_t`` is the input the generated
layer is applied to (the reference names, kept so its checkpoints load strictly).
"""

from __future__ import annotations

import torch
from torch import nn

from models.hypernet import GeneratedMLP, kaiming_linears
from models.posenet import add_static_head, reference_head_layers, static_head_output


def add_hyper_branch(owner: nn.Module, branch: str, in_dim: int, hyper_dim: int, n_out: int) -> GeneratedMLP:
    """The single-scene hyper branch of hyperpose and hyperatloc, registered on ``owner`` in reference order:
    ``hyper_in_<branch>_proj`` (generator input), ``hyper_in_<branch>`` (regressor input), then the head."""
    owner.add_module(f"hyper_in_{branch}_proj", nn.Linear(in_dim, hyper_dim))
    owner.add_module(f"hyper_in_{branch}", nn.Linear(in_dim, hyper_dim))
    return GeneratedMLP(hyper_dim, (hyper_dim, n_out)).attach(owner, branch)


def init_hyper_model(owner: nn.Module, backbone: nn.Module, head_init: str, head_names) -> None:
    """``head_init`` of a single-scene hyper model: "reference" draws every Linear weight of the head (and
    the backbone's feature layer) with kaiming_normal, as the reference's loop over ``self.modules()``;
    "hyperfan" and "zero" then redraw the generators' output layers (:meth:`GeneratedMLP.init_generators`);
    "torch" keeps PyTorch's default everywhere."""
    if head_init == "torch":
        return
    kaiming_linears(reference_head_layers(owner, backbone, head_names))
    if head_init in ("hyperfan", "zero"):
        for branch in ("t", "rot"):
            getattr(owner, f"_hyper_head_{branch}").init_generators(head_init)


def hyper_branch_output(owner: nn.Module, branch: str, feat_BC: torch.Tensor) -> torch.Tensor:
    """The generated layer of ``branch`` applied to its projected input."""
    head = getattr(owner, f"_hyper_head_{branch}")
    return head(getattr(owner, f"hyper_in_{branch}_proj")(feat_BC), getattr(owner, f"hyper_in_{branch}")(feat_BC))


class HyperPose(nn.Module):
    """Single-scene pose regressor with per-image generated regression layers: ``img -> (pose_B7, None)``."""

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__()
        # Registration order defines the state_dict order of the reference checkpoints.
        self._backbone = backbone
        add_static_head(self, backbone.feature_dim)
        add_hyper_branch(self, "t", backbone.feature_dim, int(config["hyper_dim_t"]), 3)
        add_hyper_branch(self, "rot", backbone.feature_dim, int(config["hyper_dim_rot"]), 4)
        head = [name for name, _ in self.named_children() if name != "_backbone"]
        init_hyper_model(self, backbone, config.get("head_init", "reference"), head)

    def forward(self, img_B3HW: torch.Tensor, scene_B: torch.Tensor | None = None):
        feat_BC = self._backbone.extract(img_B3HW)["pooled"]
        t_B3, q_B4 = static_head_output(self, feat_BC)
        t_B3 = t_B3 + hyper_branch_output(self, "t", feat_BC)
        q_B4 = q_B4 + hyper_branch_output(self, "rot", feat_BC)
        return torch.cat((t_B3, q_B4), dim=1), None
