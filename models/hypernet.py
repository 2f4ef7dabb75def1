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

from collections.abc import Iterator, Sequence

import torch
from torch import nn

# How a model's regression head starts (config key ``head_init``; the README's "Initialising the heads"):
# "reference": as the reference code drew it; "torch": PyTorch's default for every head layer;
# "hyperfan": the static layers as the reference, and each generator's output layer scaled so that the
# weights it generates have, over the training images, the variance kaiming_normal gives a layer of that
# shape (hyperfan-in, Chang, Flokas & Lipson, ICLR 2020), bias rows zero; "zero": the static layers as the
# reference, and generated layers that start at zero, so the model starts as its static twin.
HEAD_INITS = ("reference", "torch", "hyperfan", "zero")
STATIC_HEAD_INITS = ("reference", "torch")


def kaiming_linears(modules: Sequence[nn.Module]) -> None:
    """kaiming_normal_ (fan_in, gain sqrt 2) on the weight of every Linear in ``modules``; biases untouched,
    as the reference's init loops."""
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight)


def swish(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU activation, x * sigmoid(x)."""
    return x * torch.sigmoid(x)


def apply_generated_linear(x_BI: torch.Tensor, w_flat_BK: torch.Tensor, out_features: int) -> torch.Tensor:
    """Apply per-sample generated layers: ``y_B[o] = sum_i x_B[i] W_B[i, o] + W_B[in, o]``.

    ``w_flat_BK`` has K = (in + 1) * out numbers per sample (row-major (in + 1) x out, bias last).
    """
    batch, in_features = x_BI.shape
    assert w_flat_BK.shape == (batch, (in_features + 1) * out_features), (
        f"generated weights {tuple(w_flat_BK.shape)} do not fit input {tuple(x_BI.shape)} and {out_features} outputs"
    )
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

    def generated_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each generated layer."""
        return list(zip(self.widths[:-1], self.widths[1:]))

    @torch.no_grad()
    def init_generators(self, mode: str, h_BG: torch.Tensor | None = None) -> None:
        """Draw the generators' output layers for ``head_init`` ``mode`` ("hyperfan" or "zero"; the other
        modes are the constructors' business).

        hyperfan-in: generated weight ``W[i, o] = sum_j H[(i, o), j] e_j + b`` with ``e = swish(fc(h))``. With
        ``b = 0`` and ``H`` drawn N(0, s^2), ``Var W = s^2 G E[e^2]`` over the images, so
        ``s^2 = (2 / fan_in) / (G E[e^2])`` gives each generated layer kaiming's variance 2 / fan_in.
        ``h_BG``: generator inputs of real training images; without them a standard normal stands in (the
        training run redraws with its own images, :func:`hyperfan_from_images`). Generated bias rows start
        at zero."""
        for fc, head, (n_in, n_out) in zip(self.fc, self.heads, self.generated_shapes()):
            nn.init.zeros_(head.bias)
            if mode == "zero":
                nn.init.zeros_(head.weight)
                continue
            assert mode == "hyperfan", mode
            gen_dim = head.in_features
            probe = h_BG if h_BG is not None else torch.randn(256, gen_dim, device=head.weight.device)
            m2 = float(swish(fc(probe.to(head.weight.dtype))).square().mean().clamp_min(1e-12))
            std = (2.0 / n_in / (gen_dim * m2)) ** 0.5
            w_IOG = head.weight.view(n_in + 1, n_out, gen_dim)  # rows follow the (in + 1) x out layout
            w_IOG[:n_in].normal_(0.0, std)
            w_IOG[n_in:].zero_()

    def attach(self, owner: nn.Module, branch: str) -> GeneratedMLP:
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


def generated_heads(model: nn.Module) -> Iterator[GeneratedMLP]:
    """The hyper heads attached to ``model`` or any of its submodules (see :meth:`GeneratedMLP.attach`)."""
    for module in model.modules():
        for name, value in vars(module).items():
            if name.startswith("_hyper_head_") and isinstance(value, GeneratedMLP):
                yield value


@torch.no_grad()
def hyperfan_from_images(model: nn.Module, img_B3HW: torch.Tensor, train_mode: bool = False) -> int:
    """Redraw every generator output layer of ``model`` by hyperfan-in with the generator inputs of real
    training images (one forward, in eval mode unless ``train_mode``); returns how many hyper heads were
    drawn."""
    heads = list(generated_heads(model))
    inputs: dict[int, torch.Tensor] = {}

    def keep(k: int):
        def hook(module, args) -> None:
            inputs.setdefault(k, args[0].float())

        return hook

    hooks = [head.register_forward_pre_hook(keep(k)) for k, head in enumerate(heads)]
    was_training = model.training
    try:
        model.train(train_mode)
        model(img_B3HW, None)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for k, head in enumerate(heads):
        head.init_generators("hyperfan", inputs[k])
    return len(heads)
