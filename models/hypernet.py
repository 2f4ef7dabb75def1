"""The hyper head: per-image generated linear layers, applied batched.

A hypernetwork emits, per sample, a flat vector holding a whole linear layer. The vector is read
row-major as an (in + 1) x out matrix whose last row is the bias, which is the layout of the
reference HyperPose checkpoints. Applying it equals ``[x, 1] @ W`` per sample.

:class:`GeneratedMLP` is the one hyper head of every model (hyperpose, hyperatloc, mshyperpose): from a
generator input ``h`` it generates each layer k as ``W_k = head_k(swish(fc_k(h)))`` and applies the layers
to a regressor input ``x``, with swish between them. Reference checkpoints store these layers at the top
level of the model (``hyper_in_t_fc_2``, ``hypernet_t_fc_h2``, ...); :meth:`GeneratedMLP.attach` registers
them on the owning model under those names, so its state_dict equals the reference's.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


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


class GeneratedMLP(nn.Module):
    """Generates an MLP of widths ``widths = (in, hidden..., out)`` per image and applies it.

    ``forward(h_BG, x_BI)``: ``h_BG`` (B x gen_dim) drives the generators, ``x_BI`` (B x widths[0]) is the
    input the generated MLP is applied to; returns B x widths[-1].
    """

    def __init__(self, gen_dim: int, widths: Sequence[int]):
        super().__init__()
        assert len(widths) >= 2 and min(widths) >= 1, widths
        self.widths = tuple(int(w) for w in widths)
        layers = list(zip(self.widths[:-1], self.widths[1:]))
        self.fc = nn.ModuleList(nn.Linear(gen_dim, gen_dim) for _ in layers)
        self.heads = nn.ModuleList(nn.Linear(gen_dim, (n_in + 1) * n_out) for n_in, n_out in layers)

    def forward(self, h_BG: torch.Tensor, x_BI: torch.Tensor) -> torch.Tensor:
        n_layers = len(self.heads)
        for k, (fc, head) in enumerate(zip(self.fc, self.heads)):
            w_flat_BK = head(swish(fc(h_BG)))
            x_BI = apply_generated_linear(x_BI, w_flat_BK, self.widths[k + 1])
            if k < n_layers - 1:
                x_BI = swish(x_BI)
        return x_BI

    def attach(self, owner: nn.Module, branch: str) -> "GeneratedMLP":
        """Register this head's layers on ``owner`` under the reference names, generator layers first
        (``hyper_in_<branch>_fc_<k>``, then ``hypernet_<branch>_fc_h<k>``; the last layer is k = 2, as in
        every reference model), and keep the head itself unregistered so no key appears twice."""
        first = 3 - len(self.heads)
        for k, fc in enumerate(self.fc):
            owner.add_module(f"hyper_in_{branch}_fc_{first + k}", fc)
        for k, head in enumerate(self.heads):
            owner.add_module(f"hypernet_{branch}_fc_h{first + k}", head)
        object.__setattr__(owner, f"_hyper_head_{branch}", self)
        return self
