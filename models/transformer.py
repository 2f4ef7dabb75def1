"""DETR-style pre-norm transformer used by the multi-scene models (MS-Transformer, MSHyperPose).

Layout and behaviour follow the MS-Transformer reference so its checkpoints load and reproduce:
pre-norm encoder and decoder layers (LayerNorm before attention and before the feed-forward block),
GELU, dropout on attention weights and residual branches, a final LayerNorm after each stack.
Position embeddings are added to queries and keys only, never to values. The decoder target starts
at zeros and the learned query embeddings act as the decoder's query positions.

Parameter names: ``encoder.layers.{i}.self_attn.*``, ``linear1``, ``linear2``, ``norm1``, ``norm2``,
``encoder.norm``; ``decoder.layers.{i}.self_attn.*``, ``multihead_attn.*``, ``linear1``, ``linear2``,
``norm1..3``, ``decoder.norm``.

Tensors are batch-first throughout: tokens ``B x N x d``, queries ``B x S x d``. Attention runs through
``F.scaled_dot_product_attention``, which picks fused (flash / memory-efficient) kernels where the device
has them; its parameters are laid out as ``nn.MultiheadAttention``'s, which the reference used. Training on
a CPU with attention dropout is the exception (:func:`cpu_dropout_attention`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

DROP_LEVELS = 65536  # the dropout mask compares 16-bit random integers with a threshold


def _keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask that keeps each element with probability 1 - p', p' = round(p * 65536) / 65536 (within
    8e-6 of p), and the factor 1 / (1 - p') that keeps the expectation. Each 64-bit draw of the global torch
    generator gives four 16-bit values, so the mask costs a quarter of the draws ``bernoulli_`` makes."""
    n = math.prod(shape)
    drop_levels = round(p * DROP_LEVELS)
    words = torch.randint(-(2**63), 2**63 - 1, (-(-n // 4),), dtype=torch.int64, device=device)
    keep = words.view(torch.int16)[:n].view(shape) >= drop_levels - DROP_LEVELS // 2
    return keep, DROP_LEVELS / (DROP_LEVELS - drop_levels)


def cpu_dropout_attention(q_BhQc: torch.Tensor, k_BhKc: torch.Tensor, v_BhKc: torch.Tensor, p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(c)) with dropout p on the weights, times v: what ``scaled_dot_product_attention``
    computes in training, for the CPU. There, dropout makes it leave its fused kernel for a path that spends
    most of its time drawing the mask with ``bernoulli_``; this one draws it from 16-bit integers
    (``bench/bench_multi_scene.py`` measures the two)."""
    scores_BhQK = torch.matmul(q_BhQc * (q_BhQc.shape[-1] ** -0.5), k_BhKc.transpose(-2, -1))
    weights_BhQK = torch.softmax(scores_BhQK, dim=-1)
    keep_BhQK, factor = _keep_mask(weights_BhQK.shape, p, weights_BhQK.device)
    return torch.matmul(weights_BhQK * keep_BhQK, v_BhKc) * factor


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters (``in_proj_weight`` = [W_q; W_k; W_v],
    ``in_proj_bias``, ``out_proj``) and initialisation, computed by ``scaled_dot_product_attention``.

    ``forward(query_BQd, key_BKd, value_BKd) -> B x Q x d``; dropout on the attention weights in training.
    """

    def __init__(self, d_model: int, nheads: int, dropout: float):
        super().__init__()
        if d_model % nheads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by nheads={nheads}")
        self.nheads, self.dropout = nheads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        # The order of random draws of nn.MultiheadAttention, so a seed gives the same initial weights.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x_BNd: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        batch, n, d = x_BNd.shape
        return F.linear(x_BNd, w, b).view(batch, n, self.nheads, d // self.nheads).transpose(1, 2)

    def forward(self, query_BQd: torch.Tensor, key_BKd: torch.Tensor, value_BKd: torch.Tensor) -> torch.Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q_BhQc = self._heads(query_BQd, w_q, b_q)
        k_BhKc = self._heads(key_BKd, w_k, b_k)
        v_BhKc = self._heads(value_BKd, w_v, b_v)
        p = self.dropout if self.training else 0.0
        if p > 0 and q_BhQc.device.type == "cpu":
            out_BhQc = cpu_dropout_attention(q_BhQc, k_BhKc, v_BhKc, p)
        else:
            out_BhQc = F.scaled_dot_product_attention(q_BhQc, k_BhKc, v_BhKc, dropout_p=p)
        return self.out_proj(out_BhQc.transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward block."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, nheads, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src_BNd: torch.Tensor, pos_BNd: torch.Tensor) -> torch.Tensor:
        x_BNd = self.norm1(src_BNd)
        qk_BNd = x_BNd + pos_BNd
        attn_BNd = self.self_attn(qk_BNd, qk_BNd, x_BNd)
        src_BNd = src_BNd + self.dropout1(attn_BNd)
        x_BNd = self.norm2(src_BNd)
        x_BNd = self.linear2(self.dropout(F.gelu(self.linear1(x_BNd))))
        return src_BNd + self.dropout2(x_BNd)


class DecoderLayer(nn.Module):
    """Pre-norm self-attention over queries, cross-attention to memory, then feed-forward."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, nheads, dropout)
        self.multihead_attn = Attention(d_model, nheads, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        tgt_BSd: torch.Tensor,
        memory_BNd: torch.Tensor,
        pos_BNd: torch.Tensor,
        query_pos_BSd: torch.Tensor,
    ) -> torch.Tensor:
        x_BSd = self.norm1(tgt_BSd)
        qk_BSd = x_BSd + query_pos_BSd
        tgt_BSd = tgt_BSd + self.dropout1(self.self_attn(qk_BSd, qk_BSd, x_BSd))
        x_BSd = self.norm2(tgt_BSd)
        cross_BSd = self.multihead_attn(x_BSd + query_pos_BSd, memory_BNd + pos_BNd, memory_BNd)
        tgt_BSd = tgt_BSd + self.dropout2(cross_BSd)
        x_BSd = self.norm3(tgt_BSd)
        x_BSd = self.linear2(self.dropout(F.gelu(self.linear1(x_BSd))))
        return tgt_BSd + self.dropout3(x_BSd)


class Encoder(nn.Module):
    """A stack of pre-norm encoder layers followed by a final LayerNorm."""

    def __init__(self, num_layers: int, d_model: int, nheads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, nheads, dim_feedforward, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, src_BNd: torch.Tensor, pos_BNd: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src_BNd = layer(src_BNd, pos_BNd)
        return self.norm(src_BNd)


class Decoder(nn.Module):
    """A stack of pre-norm decoder layers followed by a final LayerNorm."""

    def __init__(self, num_layers: int, d_model: int, nheads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, nheads, dim_feedforward, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt_BSd: torch.Tensor,
        memory_BNd: torch.Tensor,
        pos_BNd: torch.Tensor,
        query_pos_BSd: torch.Tensor,
    ) -> torch.Tensor:
        for layer in self.layers:
            tgt_BSd = layer(tgt_BSd, memory_BNd, pos_BNd, query_pos_BSd)
        return self.norm(tgt_BSd)


class Transformer(nn.Module):
    """Encoder over a feature map, decoder with one learned query per output slot.

    ``forward(src_BdHW, pos_BdHW, query_embed_Sd) -> B x S x d``: the decoder output for every query.
    """

    def __init__(
        self,
        d_model: int = 256,
        nheads: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dim_feedforward: int = 256,
        dropout: float = 0.1,
    ):
        super().__init__()
        if d_model % nheads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by nheads={nheads}")
        self.d_model = d_model
        self.nheads = nheads
        self.encoder = Encoder(num_encoder_layers, d_model, nheads, dim_feedforward, dropout)
        self.decoder = Decoder(num_decoder_layers, d_model, nheads, dim_feedforward, dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Xavier-uniform for every weight matrix, as DETR-style transformers initialise.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src_BdHW: torch.Tensor, pos_BdHW: torch.Tensor, query_embed_Sd: torch.Tensor) -> torch.Tensor:
        batch = src_BdHW.shape[0]
        src_BNd = src_BdHW.flatten(2).transpose(1, 2)
        pos_BNd = pos_BdHW.flatten(2).transpose(1, 2)
        query_pos_BSd = query_embed_Sd.unsqueeze(0).expand(batch, -1, -1)
        memory_BNd = self.encoder(src_BNd, pos_BNd)
        tgt_BSd = torch.zeros_like(query_pos_BSd)
        return self.decoder(tgt_BSd, memory_BNd, pos_BNd, query_pos_BSd)
