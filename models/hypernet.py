"""Batched application of hypernetwork-generated linear layers.

A hypernetwork emits, per sample, a flat vector holding a whole linear layer. The vector is read
row-major as an (in + 1) x out matrix whose last row is the bias, which is the layout of the
reference HyperPose checkpoints. Applying it equals ``[x, 1] @ W`` per sample.
"""
from __future__ import annotations

from typing import Sequence

import torch


def swish(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU activation, x * sigmoid(x)."""
    return x * torch.sigmoid(x)


def apply_generated_linear(x_BI: torch.Tensor, w_flat_BK: torch.Tensor, out_features: int) -> torch.Tensor:
    """Apply per-sample generated layers: ``y_B[o] = sum_i x_B[i] W_B[i, o] + W_B[in, o]``.

    ``w_flat_BK`` has K = (in + 1) * out numbers per sample (row-major (in + 1) x out, bias last).
    """
    batch, in_features = x_BI.shape
    assert w_flat_BK.shape == (batch, (in_features + 1) * out_features), (
        f"generated weights {tuple(w_flat_BK.shape)} do not fit input {tuple(x_BI.shape)} "
        f"and {out_features} outputs")
    w_BIO = w_flat_BK.reshape(batch, in_features + 1, out_features)
    y_B1O = torch.bmm(x_BI.unsqueeze(1), w_BIO[:, :in_features])
    return y_B1O.squeeze(1) + w_BIO[:, in_features]


def apply_generated_mlp(x_BI: torch.Tensor, w_flats: Sequence[torch.Tensor],
                        out_features: Sequence[int]) -> torch.Tensor:
    """Apply a chain of generated layers, with swish between them and nothing after the last."""
    assert len(w_flats) == len(out_features) > 0
    for k, (w_flat_BK, n_out) in enumerate(zip(w_flats, out_features)):
        x_BI = apply_generated_linear(x_BI, w_flat_BK, n_out)
        if k < len(w_flats) - 1:
            x_BI = swish(x_BI)
    return x_BI
