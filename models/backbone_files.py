"""Reading backbone weight files safely: a state_dict, or the reference's whole pickled EfficientNet.

A state_dict (what ``python -m models.backbone write`` creates, or a reference model's backbone part,
prefix and all) is read with ``torch.load(weights_only=True)``. The reference's legacy
``efficient-net-b0.pth`` is a whole pickled ``efficientnet_pytorch.EfficientNet`` module; it is unpickled
with an allow-list of the few classes such a module is made of, never with arbitrary code execution.
Which architecture the tensors belong to is checked later, by the backbone that loads them.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from efficientnet_pytorch import model as effnet_model
from efficientnet_pytorch import utils as effnet_utils
from torch import nn

from util.checkpoint import torch_load_problem
from util.errors import UserError

# Prefixes under which the reference models store their backbone; a state_dict copied out of such a
# checkpoint loads as a backbone file.
STATE_DICT_PREFIXES = ("backbone.0.body.", "_backbone.", "backbone.", "feature_extractor.")

# The classes a pickled EfficientNet module is made of (found by reading the pickle's globals).
# Swish appears instead of MemoryEfficientSwish when set_swish(memory_efficient=False) ran first.
PICKLED_MODULE_CLASSES = (
    effnet_model.EfficientNet,
    effnet_model.MBConvBlock,
    effnet_utils.BlockArgs,
    effnet_utils.GlobalParams,
    effnet_utils.Conv2dStaticSamePadding,
    effnet_utils.MemoryEfficientSwish,
    effnet_utils.Swish,
    nn.BatchNorm2d,
    nn.ModuleList,
    nn.ZeroPad2d,
    nn.Identity,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Linear,
)

MISSING_HINT = (
    "pass 'random' for a randomly initialised backbone, 'imagenet' for local ImageNet weights, "
    "or create a file with `python -m models.backbone write OUT.pth --type TYPE [--pretrained]`"
)
_NOT_A_BACKBONE = "is neither a backbone state_dict nor a pickled EfficientNet module"


def read_backbone_file(path: str | Path) -> tuple[str, OrderedDict]:
    """Read a backbone file into ``(kind, state_dict)``; kind is "state_dict" or "pickled module"."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"backbone file {path} is a directory, not a file; {MISSING_HINT}")
    if not path.is_file():
        raise UserError(f"backbone file not found: {path}; {MISSING_HINT}")
    try:
        with torch.serialization.safe_globals(list(PICKLED_MODULE_CLASSES)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure here means "not a weights-only file"
        if zipfile.is_zipfile(path):
            raise UserError(
                f"backbone file {path}: {torch_load_problem(path, e)}; make one with "
                f"`python -m models.backbone write OUT.pth`"
            ) from None
        # torch refuses whole modules in the pre-1.6 format under weights_only: read it ourselves.
        obj = _load_legacy_pickled_module(path)
    if isinstance(obj, effnet_model.EfficientNet):
        try:
            return "pickled module", _module_tensors(obj)
        except (AttributeError, TypeError) as e:
            raise UserError(f"{path} holds a malformed EfficientNet module ({first_line(e)})") from None
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "state_dict", _strip_prefix(OrderedDict(obj))
    raise UserError(f"{path} {_NOT_A_BACKBONE} (found {type(obj).__name__})")


def first_line(e: Exception) -> str:
    """A one-line summary of an exception; for torch's long weights-only refusal, the reason line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = next(
        (line.split(". ")[0] for line in lines if line.startswith("WeightsUnpickler error")), lines[0] if lines else ""
    )
    return f"{type(e).__name__}: {reason}"[:300]


def _strip_prefix(state: OrderedDict) -> OrderedDict:
    """Drop a reference model prefix shared by every key."""
    for prefix in STATE_DICT_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            return OrderedDict((k[len(prefix) :], v) for k, v in state.items())
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
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
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
        self.allowed.update(
            {
                ("collections", "OrderedDict"): OrderedDict,
                ("__builtin__", "set"): set,
                ("builtins", "set"): set,
                ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            }
        )
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
    except Exception as e:  # every failure is reported as "not a backbone file"
        raise UserError(f"{path} {_NOT_A_BACKBONE} ({first_line(e)})") from None
    return obj
