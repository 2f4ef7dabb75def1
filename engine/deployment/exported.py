"""Run a model exported by :mod:`engine.deployment.export`, checking its inputs against the export's description.

    python -m engine.deployment.exported MODEL.onnx IMAGES [--resize_crop]      # prints img_path,t1,...,q4 as CSV

``IMAGES`` is any image source of the predict mode (folder, glob, list, label CSV). The graph takes images
at its crop size; ``--resize_crop`` applies the test-time resize and centre crop first, otherwise an image of
another size is an error, as is a batch other than the export's fixed one.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datasets.dataset import load_image_uint8
from datasets.image_source import resolve_image_source
from datasets.transforms import build_resize_crop
from engine.deployment.export import METADATA_KEY, TORCHSCRIPT_EXTRA
from engine.deployment.localize import Poses
from util.errors import UserError, run_cli


def _is_torch_save(data: bytes) -> bool:
    """A torch.save zip holds ``<name>/data.pkl`` and no ``<name>/code/`` (which every TorchScript archive has)."""
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)


class ExportedModel:
    """An ONNX (onnxruntime, CPU) or TorchScript export with its metadata; call it on an image batch."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"exported model not found: {self.path}")
        data = self.path.read_bytes()
        if data[:2] == b"PK" and _is_torch_save(data):
            raise UserError(
                f"{self.path} is a checkpoint (torch.save), not an exported model; export it with "
                f"`python -m engine.deployment.export {self.path} --format onnx --out MODEL.onnx`"
            )
        if data[:2] == b"PK":  # TorchScript archives are zip files
            extra = {TORCHSCRIPT_EXTRA: ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit as deprecated
                try:
                    self._module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
                except RuntimeError as e:
                    raise UserError(f"{self.path} is not a TorchScript archive ({str(e).splitlines()[0]})") from None
            self.format, meta = "torchscript", extra[TORCHSCRIPT_EXTRA]
        else:
            import onnxruntime as ort

            try:
                self._session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own exception types for a foreign file
                raise UserError(
                    f"{self.path} is neither an ONNX model nor a TorchScript archive ({type(e).__name__})"
                ) from None
            self.format = "onnx"
            meta = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "")
        if not meta:
            raise UserError(f"{self.path} was not written by engine.deployment.export (no '{METADATA_KEY}' metadata)")
        self.metadata = json.loads(meta)
        self.crop_size = int(self.metadata["crop_size"])
        self.dtype = np.uint8 if self.metadata["input_dtype"] == "uint8" else np.float32
        self.batch = self.metadata["batch"]

    def check_input(self, image_B3HW: np.ndarray) -> None:
        """One-line UserError for an input the export cannot take."""
        want = f"{self.metadata['input_dtype']} B x 3 x {self.crop_size} x {self.crop_size}"
        if image_B3HW.ndim != 4 or tuple(image_B3HW.shape[1:]) != (3, self.crop_size, self.crop_size):
            raise UserError(
                f"{self.path.name} takes images of {want}, got shape {tuple(image_B3HW.shape)}; "
                f"resize and centre-crop them first (--resize_crop)"
            )
        if image_B3HW.dtype != self.dtype:
            raise UserError(f"{self.path.name} takes {want}, got {image_B3HW.dtype}")
        if self.batch != "dynamic" and image_B3HW.shape[0] != self.batch:
            raise UserError(
                f"{self.path.name} was exported for batches of {self.batch}, got {image_B3HW.shape[0]} "
                f"(export with --batch dynamic for any batch size)"
            )

    def __call__(self, image_B3HW: np.ndarray) -> dict[str, np.ndarray]:
        image_B3HW = np.asarray(image_B3HW)
        self.check_input(image_B3HW)
        if self.format == "onnx":
            outputs = self._session.run(None, {self.metadata["input"]: image_B3HW})
        else:
            with torch.no_grad():
                outputs = [t.numpy() for t in self._module(torch.from_numpy(image_B3HW))]
        return dict(zip(self.metadata["outputs"], outputs))

    def poses(self, image_B3HW: np.ndarray) -> Poses:
        out = self(image_B3HW)
        poses = Poses(positions=out["position"].astype(np.float64), quaternions=out["quaternion"].astype(np.float64))
        if "scene_logp" in out:
            poses.scene_ids = out["scene_logp"].argmax(axis=1)
            poses.scene_probs = np.exp(out["scene_logp"].max(axis=1)).astype(np.float64)
            names = self.metadata.get("scene_names") or []
            poses.scene_names = [names[i] if i < len(names) else None for i in poses.scene_ids]
        return poses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.deployment.exported",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="a file written by python -m engine.deployment.export")
    parser.add_argument("images", help="a folder, a glob pattern, a text list or a label CSV")
    parser.add_argument(
        "--resize_crop",
        action="store_true",
        help="resize and centre-crop each image as at test time (sizes from the export)",
    )
    args = parser.parse_args(argv)

    def run() -> int:
        from engine.deployment.predict import poses_csv

        model = ExportedModel(args.model)
        source = resolve_image_source(args.images)
        meta = model.metadata
        resize_crop = build_resize_crop({"image_resize": meta["image_resize"], "image_crop": model.crop_size})
        step = 32 if model.batch == "dynamic" else model.batch
        if model.batch != "dynamic" and len(source) % step:
            raise UserError(f"{len(source)} images do not fill batches of {step} (export with --batch dynamic)")
        want = (3, model.crop_size, model.crop_size)
        chunks = []
        for start in range(0, len(source), step):
            imgs = []
            for name, path in zip(source.names[start : start + step], source.files[start : start + step]):
                img = load_image_uint8(path)
                img = resize_crop(img) if args.resize_crop else img
                if tuple(img.shape) != want:
                    raise UserError(
                        f"{name} is {img.shape[2]}x{img.shape[1]} pixels but {model.path.name} takes "
                        f"{model.crop_size}x{model.crop_size} images; pass --resize_crop or crop them"
                    )
                imgs.append(img)
            batch = torch.stack(imgs).numpy()
            chunks.append(model.poses(batch if model.dtype == np.uint8 else batch.astype(np.float32) / 255))
        poses = Poses(*(np.concatenate([getattr(c, f) for c in chunks]) for f in ("positions", "quaternions")))
        if chunks[0].scene_ids is not None:
            poses.scene_ids = np.concatenate([c.scene_ids for c in chunks])
            poses.scene_probs = np.concatenate([c.scene_probs for c in chunks])
            poses.scene_names = [n for c in chunks for n in c.scene_names]
        sys.stdout.write(poses_csv(source.names, poses))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
