"""EfficientNet-B0 backbone: safe loading and one-pass extraction of every feature map the heads use.

The backbone is ``efficientnet_pytorch``'s EfficientNet-B0 with its standard parameter names
(including the 1000-way ``_fc`` that no head uses but every reference checkpoint stores), built for
224x224 input: its TensorFlow-style "SAME" padding is precomputed for that size.

Backbone files come in two kinds: a state_dict (what ``python -m models.backbone write`` creates),
or the reference's legacy ``efficient-net-b0.pth``, a whole pickled ``EfficientNet`` module.
The latter is unpickled with an allow-list of the few classes such a module is made of, never with
arbitrary code execution.
"""
from __future__ import annotations

import argparse
import logging
import pickle
import socket
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch import model as effnet_model
from efficientnet_pytorch import utils as effnet_utils
from torch import nn

from util.errors import UserError, run_cli
from util.io import atomic_torch_save

logger = logging.getLogger(__name__)

MODEL_NAME = "efficientnet-b0"
IMAGE_SIZE = 224
FEATURE_DIM = 1280
# Prefixes under which the reference models store their backbone; a state_dict copied out of such a
# checkpoint loads as a backbone file.
STATE_DICT_PREFIXES = ("backbone.0.body.", "_backbone.", "backbone.")

# The classes a pickled EfficientNet module is made of (found by reading the pickle's globals).
# Swish appears instead of MemoryEfficientSwish when set_swish(memory_efficient=False) ran first.
PICKLED_MODULE_CLASSES = (
    effnet_model.EfficientNet, effnet_model.MBConvBlock, effnet_utils.BlockArgs,
    effnet_utils.GlobalParams, effnet_utils.Conv2dStaticSamePadding,
    effnet_utils.MemoryEfficientSwish, effnet_utils.Swish,
    nn.BatchNorm2d, nn.ModuleList, nn.ZeroPad2d, nn.Identity, nn.AdaptiveAvgPool2d, nn.Dropout,
    nn.Linear,
)

_MISSING_HINT = ("pass 'random' for a randomly initialised backbone or create one with "
                 "`python -m models.backbone write OUT.pth [--pretrained]`")


def new_backbone() -> EfficientNet:
    """A randomly initialised EfficientNet-B0 for 224x224 input."""
    return EfficientNet.from_name(MODEL_NAME, image_size=IMAGE_SIZE)


def load_backbone(spec: str) -> EfficientNet:
    """EfficientNet-B0 from ``"random"`` or a backbone file (state_dict or legacy pickled module)."""
    if spec == "random":
        logger.warning("backbone: random init; results will be poor without ImageNet weights "
                       "(create them with `python -m models.backbone write OUT.pth --pretrained` "
                       "where there is internet)")
        return new_backbone()
    kind, state = read_backbone_file(spec)
    model = backbone_from_state_dict(state, source=spec)
    logger.info("backbone: loaded %s (%s)", spec, kind)
    return model


def backbone_from_state_dict(state: Mapping[str, torch.Tensor], source: str = "state_dict") -> EfficientNet:
    """A fresh EfficientNet-B0 holding ``state`` (strict: every key and shape must match)."""
    model = new_backbone()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise UserError(f"{source} is not an EfficientNet-B0: {detail[:300]}") from None
    return model


def read_backbone_file(path: str | Path) -> tuple[str, OrderedDict]:
    """Read a backbone file into ``(kind, state_dict)``; kind is "state_dict" or "pickled module"."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone file not found: {path}; {_MISSING_HINT}")
    try:
        with torch.serialization.safe_globals(list(PICKLED_MODULE_CLASSES)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a weights-only file"
        if zipfile.is_zipfile(path):
            raise UserError(f"{path} is neither an EfficientNet state_dict nor a pickled "
                            f"EfficientNet module ({_first_line(e)})") from None
        # torch refuses whole modules in the pre-1.6 format under weights_only: read it ourselves.
        obj = _load_legacy_pickled_module(path)
    if isinstance(obj, EfficientNet):
        try:
            return "pickled module", _module_tensors(obj)
        except (AttributeError, TypeError) as e:
            raise UserError(f"{path} holds a malformed EfficientNet module ({_first_line(e)})") from None
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "state_dict", _strip_prefix(OrderedDict(obj))
    raise UserError(f"{path} is neither an EfficientNet state_dict nor a pickled EfficientNet module "
                    f"(found {type(obj).__name__})")


def _first_line(e: Exception) -> str:
    """A one-line summary of an exception; for torch's long weights-only refusal, the reason line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = next((line.split(". ")[0] for line in lines if line.startswith("WeightsUnpickler error")),
                  lines[0] if lines else "")
    return f"{type(e).__name__}: {reason}"[:300]


def _strip_prefix(state: OrderedDict) -> OrderedDict:
    """Drop a reference model prefix shared by every key."""
    for prefix in STATE_DICT_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            return OrderedDict((k[len(prefix):], v) for k, v in state.items())
    return state


def _module_tensors(module: nn.Module, prefix: str = "") -> OrderedDict:
    """The persistent tensors of an unpickled module, in state_dict order, without running any
    of its (unpickled) hooks."""
    out = OrderedDict()
    for name, p in module._parameters.items():
        if p is not None:
            out[prefix + name] = p.detach()
    for name, b in module._buffers.items():
        if b is not None and name not in getattr(module, "_non_persistent_buffers_set", ()):
            out[prefix + name] = b.detach()
    for name, child in module._modules.items():
        if child is not None:
            out.update(_module_tensors(child, f"{prefix}{name}."))
    return out


# ---------------------------------------------------------------------------------------------
# Pre-1.6 ("legacy", non-zip) torch files holding a whole module. Layout: pickles of the magic
# number, the protocol version and system info; the object pickle (tensors refer to storages by
# persistent id); a pickle of the storage keys; then per storage an int64 element count and raw bytes.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
    "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *metadata):
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor record without storage")
    return storage.as_strided(size, stride, offset)


def _rebuild_parameter(data, requires_grad, hooks=None, *extra):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter record without tensor")
    return nn.Parameter(data, requires_grad)


class _AllowListUnpickler(pickle.Unpickler):
    """Builds only allow-listed classes; tensors are views of flat buffers filled after unpickling."""

    def __init__(self, file, max_bytes: int = 0):
        super().__init__(file)
        self.max_bytes = max_bytes  # storages cannot hold more than the file does
        self.allowed = {(c.__module__, c.__qualname__): c for c in PICKLED_MODULE_CLASSES}
        self.allowed.update({
            ("collections", "OrderedDict"): OrderedDict,
            ("__builtin__", "set"): set, ("builtins", "set"): set,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        })
        self.allowed.update({("torch", k): v for k, v in _LEGACY_STORAGE_DTYPES.items()})
        self.buffers: dict[str, torch.Tensor] = {}

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return self.allowed[(module, name)]

    def persistent_load(self, pid):
        kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":  # (kind, class, source file, source): the class passed find_class
            return pid[1]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        dtype, key, _location, numel, view = pid[1:]
        if not isinstance(dtype, torch.dtype) or view is not None:
            raise pickle.UnpicklingError("unsupported storage record")
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key not in self.buffers:
            self.max_bytes -= int(numel) * dtype.itemsize
            if self.max_bytes < 0:
                raise pickle.UnpicklingError("storage sizes exceed the file size")
            self.buffers[key] = torch.empty(int(numel), dtype=dtype)
        return self.buffers[key]


def _load_legacy_pickled_module(path: Path):
    """Unpickle a pre-1.6 torch file holding a whole module, allowing only the backbone's classes."""
    try:
        with open(path, "rb") as f:
            magic = _AllowListUnpickler(f).load()
            if magic != _LEGACY_MAGIC:
                raise pickle.UnpicklingError("not a torch file (bad magic number)")
            _AllowListUnpickler(f).load()  # protocol version
            _AllowListUnpickler(f).load()  # system info
            unpickler = _AllowListUnpickler(f, max_bytes=path.stat().st_size)
            obj = unpickler.load()
            for key in _AllowListUnpickler(f).load():
                buf = unpickler.buffers[str(key)]
                (count,) = struct.unpack("<q", f.read(8))
                raw = f.read(buf.numel() * buf.element_size())
                if count != buf.numel() or len(raw) != buf.numel() * buf.element_size():
                    raise pickle.UnpicklingError("truncated storage data")
                buf.view(-1).view(torch.uint8).copy_(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    except Exception as e:  # noqa: BLE001 - every failure is reported as "not a backbone file"
        raise UserError(f"{path} is neither an EfficientNet state_dict nor a pickled EfficientNet "
                        f"module ({_first_line(e)})") from None
    return obj


# ---------------------------------------------------------------------------------------------
def endpoint_blocks(backbone: EfficientNet) -> dict[str, int]:
    """Block index whose output is each ``reduction_k`` endpoint, as efficientnet_pytorch defines
    them: the last block before each stride-2 block, and the last block.

    For B0: reduction_1..5 = blocks 0, 2, 4, 10, 15 (reduction_3: 40 ch, reduction_4: 112 ch).
    """
    strides = [block._depthwise_conv.stride[0] for block in backbone._blocks]
    ends = [i - 1 for i, s in enumerate(strides) if s > 1 and i > 0] + [len(strides) - 1]
    return {f"reduction_{k + 1}": idx for k, idx in enumerate(ends)}


def extract_features(backbone: EfficientNet, img_B3HW: torch.Tensor,
                     endpoints: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """One pass through the backbone: "features" (B x 1280 x h x w, after _conv_head, _bn1, swish)
    plus each requested intermediate map, e.g. "reduction_3" (B x 40 x 28 x 28 at 224) and
    "reduction_4" (B x 112 x 14 x 14 at 224)."""
    blocks = endpoint_blocks(backbone)
    unknown = [name for name in endpoints if name not in blocks]
    if unknown:
        raise ValueError(f"unknown backbone endpoints {unknown}; valid: {sorted(blocks)}")
    wanted = {blocks[name]: name for name in endpoints}
    out = {}
    x = backbone._swish(backbone._bn0(backbone._conv_stem(img_B3HW)))
    n_blocks = len(backbone._blocks)
    for idx, block in enumerate(backbone._blocks):
        # Stochastic depth grows linearly with depth; the block applies it in training mode only.
        rate = backbone._global_params.drop_connect_rate
        if rate:
            rate *= float(idx) / n_blocks
        x = block(x, drop_connect_rate=rate)
        if idx in wanted:
            out[wanted[idx]] = x
    out["features"] = backbone._swish(backbone._bn1(backbone._conv_head(x)))
    return out


def global_pool(features_BCHW: torch.Tensor) -> torch.Tensor:
    """Average-pool a feature map over space: B x C x h x w -> B x C."""
    return F.adaptive_avg_pool2d(features_BCHW, 1).flatten(start_dim=1)


# ---------------------------------------------------------------------------------------------
def _write(out: Path, pretrained: bool) -> str:
    if not pretrained:
        model = new_backbone()
    else:
        socket.setdefaulttimeout(60)  # fail rather than hang without a network
        try:
            model = EfficientNet.from_pretrained(MODEL_NAME)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            raise UserError(f"could not download ImageNet weights for {MODEL_NAME} ({_first_line(e)}); "
                            f"this needs internet access, or use `write {out}` for a random init") from None
    atomic_torch_save(model.state_dict(), out)
    init = "ImageNet-pretrained" if pretrained else "randomly initialised"
    return f"wrote {init} {MODEL_NAME} state_dict to {out}"


def main(argv: Sequence[str] | None = None) -> str:
    """Write a backbone state_dict, or check what a backbone file holds."""
    parser = argparse.ArgumentParser(prog="python -m models.backbone", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write an EfficientNet-B0 state_dict")
    write.add_argument("out", type=Path, help="output .pth file")
    write.add_argument("--pretrained", action="store_true",
                       help="download ImageNet weights (needs internet) instead of a random init")
    check = sub.add_parser("check", help="say what kind of backbone file FILE is")
    check.add_argument("file", type=Path, help="backbone file")
    args = parser.parse_args(argv)
    if args.command == "write":
        return _write(args.out, args.pretrained)
    kind, state = read_backbone_file(args.file)
    backbone_from_state_dict(state, source=str(args.file))
    return f"{args.file}: EfficientNet-B0 {kind}, loads strictly"


if __name__ == "__main__":
    sys.exit(run_cli(lambda: print(main())))
