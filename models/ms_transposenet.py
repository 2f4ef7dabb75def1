"""Multi-scene transformer pose regressor (MS-Transformer, "ems-transposenet"; Shavit et al., ICCV 2021).

One backbone pass gives two intermediate maps: the position (t) branch reads ``reduction[0]``
(default reduction_4, stride 16: 112 ch, 14x14 at 224 px on B0) and the orientation (rot) branch
``reduction[1]`` (default reduction_3, stride 8: 40 ch, 28x28 on B0), on any backbone. Each map is projected to d
channels, given a learned 2D position
embedding and fed to its own transformer, whose decoder has one learned query per scene. A linear
layer over the concatenated t and rot query outputs scores the scenes; the selected scene's
descriptors go through that scene's own MLP heads.

Differences from the reference implementation, all deliberate:
- ``nheads`` from the config is honoured. The reference read a misspelled key and always ran 8 heads,
  so a reference-trained checkpoint reproduces its outputs only with ``nheads = 8``.
- Scene scores are ``log_softmax`` (the reference took ``log(softmax)``, which underflows to -inf).
- The backbone runs once per forward (the reference ran it twice to get the pooled features).
- Per-scene heads are applied batched, without a Python loop over the batch.

The state_dict layout (names, shapes and order) equals the reference's, so its checkpoints load with
``strict=True``; see ``tests/data/reference_checkpoints/ems-transposenet_*.tsv``.
"""

from __future__ import annotations

import contextlib
import numbers

import torch
from torch import nn
from torch.nn import functional as F

from models.transformer import Transformer
from util.errors import UserError

# Size of the learned position tables: the largest feature-map height/width the model accepts.
MAX_POSITIONS = 50


def require(config: dict, key: str):
    """``config[key]``, or a UserError naming the missing key."""
    if config.get(key) is None:
        raise UserError(f"model config has no value for '{key}'")
    return config[key]


class BackboneBody(nn.Module):
    """Holds the EfficientNet as ``body`` so its keys read ``backbone.0.body.*`` like the reference."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body


class LearnedPositionEmbedding2d(nn.Module):
    """Learned 2D position embedding: channels [0, d/2) are ``col_embed[x]``, [d/2, d) ``row_embed[y]``."""

    def __init__(self, num_pos_feats: int, max_positions: int = MAX_POSITIONS):
        super().__init__()
        self.row_embed = nn.Embedding(max_positions, num_pos_feats)
        self.col_embed = nn.Embedding(max_positions, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """Position map ``d x height x width`` (no batch dimension)."""
        max_positions = self.row_embed.num_embeddings
        if height > max_positions or width > max_positions:
            raise UserError(
                f"feature map of {height}x{width} cells exceeds the learned position table "
                f"({max_positions}x{max_positions}); use a smaller input image"
            )
        device = self.row_embed.weight.device
        col_Wc = self.col_embed(torch.arange(width, device=device))
        row_Hc = self.row_embed(torch.arange(height, device=device))
        pos_HWd = torch.cat(
            [
                col_Wc.unsqueeze(0).expand(height, -1, -1),
                row_Hc.unsqueeze(1).expand(-1, width, -1),
            ],
            dim=-1,
        )
        return pos_HWd.permute(2, 0, 1)


class PoseRegressor(nn.Module):
    """MLP head: ``fc_h`` -> GELU -> ``fc_o``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 1024):
        super().__init__()
        self.fc_h = nn.Linear(in_dim, hidden_dim)
        self.fc_o = nn.Linear(hidden_dim, out_dim)
        nn.init.xavier_uniform_(self.fc_h.weight)
        nn.init.xavier_uniform_(self.fc_o.weight)

    def forward(self, x_BI: torch.Tensor) -> torch.Tensor:
        return self.fc_o(F.gelu(self.fc_h(x_BI)))


def apply_scene_heads(heads: nn.ModuleList, x_Bd: torch.Tensor, scene_B: torch.Tensor) -> torch.Tensor:
    """Apply ``heads[scene_B[b]]`` to ``x_Bd[b]`` for every b at once -> ``B x out``.

    All S heads are evaluated on every sample with two einsums and the wanted outputs gathered; that
    costs S small MLPs per sample but no per-sample weight copies and no loop over the batch.
    """
    w_h_SHd = torch.stack([head.fc_h.weight for head in heads])
    b_h_SH = torch.stack([head.fc_h.bias for head in heads])
    w_o_SOH = torch.stack([head.fc_o.weight for head in heads])
    b_o_SO = torch.stack([head.fc_o.bias for head in heads])
    hidden_BSH = F.gelu(torch.einsum("bd,shd->bsh", x_Bd, w_h_SHd) + b_h_SH)
    out_BSO = torch.einsum("bsh,soh->bso", hidden_BSH, w_o_SOH) + b_o_SO
    index_B1O = scene_B.view(-1, 1, 1).expand(-1, 1, out_BSO.shape[2])
    return out_BSO.gather(1, index_B1O).squeeze(1)


def select_queries(desc_BSd: torch.Tensor, scene_B: torch.Tensor) -> torch.Tensor:
    """``desc_BSd[b, scene_B[b]]`` for every b -> ``B x d``."""
    index_B1d = scene_B.view(-1, 1, 1).expand(-1, 1, desc_BSd.shape[2])
    return desc_BSd.gather(1, index_B1d).squeeze(1)


class MSTransPoseNet(nn.Module):
    """Multi-scene transformer: ``forward(img_B3HW, scene_B=None) -> (pose_B7, scene_log_probs_BS)``.

    ``scene_B`` (LongTensor B) picks each sample's scene query, as in training with ground-truth
    scenes; when None the most probable scene is used, as at test time. ``pose_B7`` is t (3) then an
    unnormalised quaternion (4). ``config["nheads"]`` sets the attention heads; checkpoints trained
    by the reference implementation need ``nheads = 8`` to reproduce their outputs.
    """

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__()
        d = int(require(config, "hidden_dim"))
        nheads = int(require(config, "nheads"))
        num_scenes = require(config, "num_scenes")
        if isinstance(num_scenes, bool) or not isinstance(num_scenes, numbers.Integral) or num_scenes < 1:
            raise UserError(f"num_scenes must be a positive integer, got {num_scenes!r}")
        if d % 2 != 0 or d % nheads != 0:
            raise UserError(f"hidden_dim ({d}) must be even and divisible by nheads ({nheads})")
        reduction = list(require(config, "reduction"))
        channels = {name: endpoint.channels for name, endpoint in backbone.endpoints.items()}
        if len(reduction) != 2 or any(name not in channels for name in reduction):
            raise UserError(
                f"reduction must name two endpoints of backbone {backbone.type_name} among "
                f"{sorted(channels)}, got {reduction}"
            )
        self.reduction = tuple(reduction)
        self.hidden_dim = d
        self.num_scenes = num_scenes = int(num_scenes)
        reg_hidden_dim = int(require(config, "reg_hidden_dim"))

        # Registration order fixes the state_dict order, which must match the reference layout.
        self.backbone = nn.ModuleList([BackboneBody(backbone), LearnedPositionEmbedding2d(d // 2)])

        def make_transformer(branch: str) -> Transformer:
            return Transformer(
                d_model=d,
                nheads=nheads,
                num_encoder_layers=int(require(config, f"num_{branch}_encoder_layers")),
                num_decoder_layers=int(require(config, f"num_{branch}_decoder_layers")),
                dim_feedforward=int(require(config, "dim_feedforward")),
                dropout=float(require(config, "dropout")),
            )

        self.transformer_t = make_transformer("t")
        self.transformer_rot = make_transformer("rot")
        self.input_proj_t = nn.Conv2d(channels[reduction[0]], d, kernel_size=1)
        self.input_proj_rot = nn.Conv2d(channels[reduction[1]], d, kernel_size=1)
        self.query_embed_t = nn.Embedding(num_scenes, d)
        self.query_embed_rot = nn.Embedding(num_scenes, d)
        self.scene_embed = nn.Linear(2 * d, 1)
        self._build_regressor_heads(d, reg_hidden_dim, num_scenes)
        if config.get("head_init", "reference") == "torch":  # the reference draws the MLP heads with xavier
            for head in (self.regressor_head_t, self.regressor_head_rot):
                for layer in head.modules():
                    if isinstance(layer, nn.Linear):
                        layer.reset_parameters()
        self.frozen_body = False

    def body_modules(self) -> tuple[nn.Module, ...]:
        """What the reference's ``forward_transformers`` runs: backbone, position tables, input projections,
        transformers and scene queries. The heads (scene classifier, regressors, generators) read its output."""
        return (
            self.backbone,
            self.input_proj_t,
            self.input_proj_rot,
            self.transformer_t,
            self.transformer_rot,
            self.query_embed_t,
            self.query_embed_rot,
        )

    def freeze_body(self) -> None:
        """The reference's frozen stage (``freeze_mode`` "reference"): the body runs in eval mode (BatchNorm on
        running statistics, dropout off) under ``no_grad``, whatever the model's mode, and none of its
        parameters trains; only the heads do."""
        self.frozen_body = True
        for module in self.body_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_body:
            for module in self.body_modules():
                module.eval()
        return self

    @staticmethod
    def scenes_in_state_dict(state_dict: dict) -> int | None:
        """How many scenes a state_dict of this model was built for (the rows of its scene queries), or
        None if it has no such table; a bare reference state_dict carries no other record of it."""
        table = state_dict.get("query_embed_t.weight")
        return int(table.shape[0]) if table is not None and table.dim() == 2 else None

    def _build_regressor_heads(self, d: int, reg_hidden_dim: int, num_scenes: int) -> None:
        """One t head and one rot head per scene (``regressor_head_t.{k}``, ``regressor_head_rot.{k}``)."""
        self.regressor_head_t = nn.ModuleList(PoseRegressor(d, 3, reg_hidden_dim) for _ in range(num_scenes))
        self.regressor_head_rot = nn.ModuleList(PoseRegressor(d, 4, reg_hidden_dim) for _ in range(num_scenes))

    @property
    def body(self) -> nn.Module:
        """The backbone (EfficientNet-B0 in the reference layout)."""
        return self.backbone[0].body

    def encode(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One backbone pass, both transformers -> (desc_t_BSd, desc_rot_BSd, pooled_BC).

        ``desc_*_BSd`` holds the decoder output of every scene query; ``pooled_BC`` is the
        pooled backbone feature (B x feature_dim; 1280 on EfficientNet-B0).
        """
        with torch.no_grad() if self.frozen_body else contextlib.nullcontext():
            return self._encode(img_B3HW)

    def _encode(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = self.body.extract(img_B3HW)
        descs = []
        for name, proj, transformer, queries in (
            (self.reduction[0], self.input_proj_t, self.transformer_t, self.query_embed_t),
            (self.reduction[1], self.input_proj_rot, self.transformer_rot, self.query_embed_rot),
        ):
            src_BdHW = proj(maps[name])
            batch, _, height, width = src_BdHW.shape
            pos_BdHW = self.backbone[1](height, width).unsqueeze(0).expand(batch, -1, -1, -1)
            descs.append(transformer(src_BdHW, pos_BdHW.to(src_BdHW.dtype), queries.weight))
        pooled_BC = maps["pooled"]
        return descs[0], descs[1], pooled_BC

    def scene_log_probs(self, desc_t_BSd: torch.Tensor, desc_rot_BSd: torch.Tensor) -> torch.Tensor:
        """Log-probability of each scene, ``B x S``."""
        logits_BS = self.scene_embed(torch.cat([desc_t_BSd, desc_rot_BSd], dim=2)).squeeze(2)
        return F.log_softmax(logits_BS, dim=1)

    def regress(
        self,
        desc_t_Bd: torch.Tensor,
        desc_rot_Bd: torch.Tensor,
        scene_B: torch.Tensor,
        pooled_BC: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected descriptors -> (t_B3, q_B4) through each sample's scene heads."""
        t_B3 = apply_scene_heads(self.regressor_head_t, desc_t_Bd, scene_B)
        q_B4 = apply_scene_heads(self.regressor_head_rot, desc_rot_Bd, scene_B)
        return t_B3, q_B4

    def forward(self, img_B3HW: torch.Tensor, scene_B: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        desc_t_BSd, desc_rot_BSd, pooled_BC = self.encode(img_B3HW)
        # Under autocast the scene classifier and the heads (with MS-HyperPose's generators) still run in
        # the parameters' precision: they are a small part of the compute, and the poses keep full precision.
        with torch.autocast(img_B3HW.device.type, enabled=False):
            dtype = self.scene_embed.weight.dtype  # float32 under autocast; float64 after model.double()
            desc_t_BSd, desc_rot_BSd, pooled_BC = (x.to(dtype) for x in (desc_t_BSd, desc_rot_BSd, pooled_BC))
            log_probs_BS = self.scene_log_probs(desc_t_BSd, desc_rot_BSd)
            if scene_B is None:
                scene_B = log_probs_BS.argmax(dim=1)
            else:
                assert scene_B.shape == (img_B3HW.shape[0],), scene_B.shape
                scene_B = scene_B.to(device=log_probs_BS.device, dtype=torch.long)
            desc_t_Bd = select_queries(desc_t_BSd, scene_B)
            desc_rot_Bd = select_queries(desc_rot_BSd, scene_B)
            t_B3, q_B4 = self.regress(desc_t_Bd, desc_rot_Bd, scene_B, pooled_BC)
        return torch.cat([t_B3, q_B4], dim=1), log_probs_BS
