"""Export a checkpoint to ONNX or TorchScript for deployment, and check the file against PyTorch.

    python -m engine.deployment.export CKPT --format onnx|torchscript --out FILE [--opset N] [--batch dynamic]

The exported graph takes the image at the crop size, ``image`` B x 3 x crop x crop, as uint8 RGB (0-255,
the default) or float32 RGB in [0, 1] (``--input_dtype float32``); the ImageNet normalisation is inside the
graph, the resize and centre crop are not (they depend on the image's size). Outputs: ``position`` B x 3
(metres), ``quaternion`` B x 4 (unit norm, w first) and, for multi-scene models, ``scene_logp`` B x S
(log-probabilities; the pose is that of the most probable scene). The batch size is fixed (``--batch N``,
default 1) or dynamic. A JSON description (model, crop size, input dtype, batch, scene names) is stored under
the key ``hyperpose`` in the ONNX metadata or as the TorchScript extra file ``hyperpose.json``;
:mod:`engine.deployment.exported` reads it back to check inputs.

Before the file is written, the export is run (onnxruntime for ONNX) on check images and compared with the
PyTorch model: every output must agree within ``EXPORT_TOLERANCE`` (1e-4) times the output's largest
magnitude (at least 1), or the export is refused. Pass real images (``--check_images``): on random ones the
BatchNorm statistics of a trained model do not hold, outputs can reach 1e8 and float32 rounding with them.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasets.dataset import load_image_uint8
from datasets.image_source import resolve_image_source
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, build_resize_crop
from engine.deployment.localize import LoadedModel, load_for_inference
from models.registry import scene_setting
from util.errors import UserError, run_cli
from util.io import atomic_write_bytes, check_output_dir
from util.logs import setup_logging

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
INPUT_DTYPES = ("uint8", "float32")
DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch's ONNX exporter (torch.export based) writes opset 18 and newer
EXPORT_TOLERANCE = 1e-4  # |exported - PyTorch| <= EXPORT_TOLERANCE * max(1, max |PyTorch|), per output
METADATA_KEY = "hyperpose"
TORCHSCRIPT_EXTRA = "hyperpose.json"
METADATA_VERSION = 1


class ExportGraph(nn.Module):
    """Normalisation, the model and the quaternion normalisation as one graph: image -> (t, q[, scene_logp])."""

    def __init__(self, model: nn.Module, *, uint8_input: bool):
        super().__init__()
        self.model = model
        # x / 255 folded into the normalisation for uint8 input: (x / s - mean) / std.
        scale = 255.0 if uint8_input else 1.0
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * scale)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * scale)

    def forward(self, image_B3HW: torch.Tensor):
        img = (image_B3HW.float() - self.mean) / self.std
        pose_B7, scene_logp_BS = self.model(img)
        q_B4 = pose_B7[:, 3:]
        q_B4 = q_B4 / q_B4.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if scene_logp_BS is None:
            return pose_B7[:, :3], q_B4
        return pose_B7[:, :3], q_B4, scene_logp_BS


def prepare_for_export(model: nn.Module) -> nn.Module:
    """Swap graph-opaque pieces for plain ops (efficientnet-pytorch's memory-efficient swish is a custom
    autograd function, which neither exporter records); numerically the same."""
    for module in model.modules():
        if hasattr(module, "set_swish"):
            module.set_swish(memory_efficient=False)
    return model.to(memory_format=torch.contiguous_format).eval()


def output_names(multi_scene: bool) -> list[str]:
    return ["position", "quaternion", *scene_setting(multi_scene).export_outputs]


@dataclass
class ExportResult:
    path: Path
    metadata: dict
    max_abs_diff: dict  # output name -> max |exported - PyTorch| on the check images
    tolerance: dict  # output name -> the bound it was checked against


def example_input(batch: int, crop: int, input_dtype: str, seed: int = 0) -> torch.Tensor:
    """Random smooth images (bilinearly upsampled 8 x 8 noise): closer to photographs than white noise."""
    gen = torch.Generator().manual_seed(seed)
    img = F.interpolate(
        torch.rand((batch, 3, 8, 8), generator=gen), size=(crop, crop), mode="bilinear", align_corners=False
    )
    img_u8 = (img * 255).round().to(torch.uint8)
    return img_u8 if input_dtype == "uint8" else img_u8.float() / 255


def load_check_images(source: str, config: dict, limit: int = 8) -> torch.Tensor:
    """Up to ``limit`` images of an image source, resized and centre-cropped as at test time, uint8."""
    files = resolve_image_source(source).files[:limit]
    resize_crop = build_resize_crop(config)
    return torch.stack([resize_crop(load_image_uint8(f)) for f in files])


def _onnx_bytes(
    graph: ExportGraph, example: torch.Tensor, names: list[str], opset: int, dynamic: bool, metadata: dict
) -> bytes:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    quiet = logging.getLogger("onnxscript")  # logs a warning per constant it leaves unfolded
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns about internals users cannot act on
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            verbose=False,
            optimize=True,
        )
    quiet.setLevel(level)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return proto.SerializeToString()


def _torchscript_bytes(graph: ExportGraph, example: torch.Tensor, metadata: dict) -> bytes:
    with warnings.catch_warnings():
        # Shape assertions inside the models become constants of the trace; the checks below cover it.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit as deprecated
        traced = torch.jit.trace(graph, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})
    return buf.getvalue()


def run_export_bytes(data: bytes, fmt: str, image: np.ndarray) -> list[np.ndarray]:
    """Outputs of an exported model held in memory (onnxruntime on the CPU, or the TorchScript runtime)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return session.run(None, {"image": image})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit as deprecated
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    with torch.no_grad():
        return [t.numpy() for t in module(torch.from_numpy(image))]


def compare_outputs(
    exported: Sequence[np.ndarray], reference: Sequence[torch.Tensor], names: Sequence[str]
) -> tuple[dict, dict]:
    """(max |diff| per output, the tolerance per output) of an export against the PyTorch outputs."""
    diffs, bounds = {}, {}
    for name, got, ref in zip(names, exported, reference):
        ref = ref.detach().numpy()
        if got.shape != ref.shape:
            raise AssertionError(f"{name}: exported shape {got.shape} != PyTorch {ref.shape}")
        diffs[name] = float(np.abs(got.astype(np.float64) - ref).max())
        bounds[name] = EXPORT_TOLERANCE * max(1.0, float(np.abs(ref).max()))
    return diffs, bounds


def export_loaded(
    loaded: LoadedModel,
    out: str | Path,
    fmt: str,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | str = 1,
    input_dtype: str = "uint8",
    checkpoint: str = "",
    check_images: torch.Tensor | None = None,
    check: bool = True,
) -> ExportResult:
    """Export ``loaded`` to ``out`` after checking it against PyTorch on ``check_images`` (uint8
    N x 3 x crop x crop; default: random smooth images). ``check=False`` skips the comparison (benchmarks of
    random-weight models, whose tied scene scores rounding may break either way)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; expected {' or '.join(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise UserError(f"unknown input dtype {input_dtype!r}; expected {' or '.join(INPUT_DTYPES)}")
    dynamic = batch == "dynamic"
    if not dynamic and (not isinstance(batch, int) or batch < 1):
        raise UserError(f"--batch must be a positive integer or 'dynamic', got {batch!r}")
    if fmt == "onnx":
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= newest:
            raise UserError(f"--opset {opset}: the exporter writes opsets {MIN_OPSET} to {newest}")
    multi = loaded.num_scenes > 0
    crop = int(loaded.config["image_crop"])
    names = output_names(multi)
    id_to_scene = {i: s for s, i in loaded.scene_map.items()}
    metadata = {
        "version": METADATA_VERSION,
        "model_name": loaded.model_name,
        "checkpoint": Path(checkpoint).name,
        "input": "image",
        "input_dtype": input_dtype,
        "crop_size": crop,
        "batch": "dynamic" if dynamic else batch,
        "outputs": names,
        "scene_names": [id_to_scene.get(i) for i in range(loaded.num_scenes)],
        "image_resize": int(loaded.config["image_resize"]),
    }
    graph = ExportGraph(prepare_for_export(loaded.model), uint8_input=input_dtype == "uint8").eval()
    trace_batch = 2 if dynamic else batch
    if check_images is None:
        checks = [example_input(trace_batch, crop, input_dtype, seed=1)]
        checks += [example_input(3, crop, input_dtype, seed=2)] if dynamic else []
    else:
        if tuple(check_images.shape[1:]) != (3, crop, crop) or check_images.dtype != torch.uint8:
            raise UserError(
                f"check images must be uint8 N x 3 x {crop} x {crop}, got {check_images.dtype} "
                f"{tuple(check_images.shape)}"
            )
        images = check_images if input_dtype == "uint8" else check_images.float() / 255
        step = len(images) if dynamic else batch
        checks = [images[i : i + step] for i in range(0, len(images) - step + 1, step)]
        if not checks:
            raise UserError(f"a batch-{batch} export needs at least {batch} check images, got {len(images)}")
    example = example_input(trace_batch, crop, input_dtype)
    with torch.no_grad():
        data = (
            _onnx_bytes(graph, example, names, opset, dynamic, metadata)
            if fmt == "onnx"
            else _torchscript_bytes(graph, example, metadata)
        )
        diffs, bounds = {}, {}
        for image in checks if check else []:
            got = run_export_bytes(data, fmt, image.numpy())
            d, b = compare_outputs(got, graph(image), names)
            for name in names:
                diffs[name], bounds[name] = max(diffs.get(name, 0.0), d[name]), max(bounds.get(name, 0.0), b[name])
    bad = [f"{n} {diffs[n]:.3g} > {bounds[n]:.3g}" for n in diffs if not diffs[n] <= bounds[n]]
    if bad:
        hint = " (random check images; pass real ones with --check_images)" if check_images is None else ""
        raise UserError(f"the {fmt} export of {loaded.model_name} does not reproduce PyTorch{hint}: " + ", ".join(bad))
    path = atomic_write_bytes(out, data)
    return ExportResult(path, metadata, diffs, bounds)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | str = 1,
    input_dtype: str = "uint8",
    model_name: str | None = None,
    config=None,
    scenes: Sequence[str] | None = None,
    check_images: str | None = None,
) -> ExportResult:
    """Load a checkpoint (see :func:`engine.deployment.localize.load_for_inference`) and export it; ``check_images``
    is an image source (folder, glob, list, label CSV) for the comparison with PyTorch."""
    if fmt not in FORMATS:  # before the (slow) load
        raise UserError(f"unknown export format {fmt!r}; expected {' or '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the file to write, e.g. {out / 'model.onnx'}")
    check_output_dir(out.parent, "the folder of --out", create=False)  # before the load and the export
    loaded = load_for_inference(checkpoint, model_name=model_name, config=config, scenes=scenes)
    images = load_check_images(check_images, loaded.config) if check_images else None
    return export_loaded(
        loaded,
        out,
        fmt,
        opset=opset,
        batch=batch,
        input_dtype=input_dtype,
        checkpoint=str(checkpoint),
        check_images=images,
    )


def _batch_arg(text: str) -> int | str:
    if text == "dynamic":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'dynamic', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.deployment.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help="our checkpoint, or a reference state_dict (with --model_name, --config)")
    parser.add_argument("--format", required=True, metavar="{onnx,torchscript}", help="file format")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument("--batch", type=_batch_arg, default=1, help="fixed batch size, or 'dynamic'")
    parser.add_argument(
        "--input_dtype", default="uint8", metavar="{uint8,float32}", help="uint8 RGB 0-255, or float32 RGB in [0, 1]"
    )
    parser.add_argument(
        "--model_name", default=None, help="the model the checkpoint must hold (needed for a reference state_dict)"
    )
    parser.add_argument(
        "--config", default=None, help="JSON config (default: the checkpoint's own; needed for a reference state_dict)"
    )
    parser.add_argument(
        "--check_images",
        default=None,
        help="images to compare the export with PyTorch on (folder, glob, list or label CSV; "
        "first 8; default: random smooth images)",
    )
    parser.add_argument(
        "--scenes", default=None, help="comma-separated scene names of a reference multi-scene state_dict"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.WARNING)

    def run() -> int:
        scenes = [s.strip() for s in args.scenes.split(",") if s.strip()] if args.scenes else None
        result = export_checkpoint(
            args.checkpoint,
            args.out,
            args.format,
            opset=args.opset,
            batch=args.batch,
            input_dtype=args.input_dtype,
            model_name=args.model_name,
            config=args.config,
            scenes=scenes,
            check_images=args.check_images,
        )
        checks = ", ".join(
            f"{n} {result.max_abs_diff[n]:.2g} (bound {result.tolerance[n]:.2g})" for n in result.metadata["outputs"]
        )
        meta = result.metadata
        print(
            f"wrote {result.path}: {meta['model_name']}, input image {meta['batch']} x 3 x {meta['crop_size']} x "
            f"{meta['crop_size']} {meta['input_dtype']}, outputs {', '.join(meta['outputs'])}"
        )
        on = "the check images" if args.check_images else "random images"
        print(f"max |{args.format} - PyTorch| on {on}: {checks}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
