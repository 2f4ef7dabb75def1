"""Images without labels: resolve what a user names as "the images" to a list of files, and read them.

An image source is one of:
- a folder: every file with a common image extension below it, recursively, in sorted order;
- a glob pattern (``*``, ``?`` or ``[``; ``**`` matches folders recursively);
- a text file with one image path per line (blank lines and lines starting with ``#`` are skipped);
- a label CSV (``scene,split,seq,img_path,...``): its ``img_path`` column, ground truth ignored.
Relative paths in a text file or label CSV are relative to ``root`` (default: the file's own folder, where
the label CSVs of the supported datasets sit). Each image keeps a display name: the path relative to the
folder, the path as listed, or the path as the glob matched it.

:class:`ImageFileDataset` decodes and transforms the files like :class:`datasets.dataset.CameraPoseDataset`
does, but an unreadable file becomes a sample with ``ok=False`` and its reason instead of an exception, so
that one broken image does not end a prediction run; :func:`collate_readable` drops such samples from a batch.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from datasets.dataset import load_image_uint8
from util.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GLOB_CHARS = ("*", "?", "[")


@dataclass
class ImageList:
    """Files to localize: absolute-or-as-given ``files`` and the ``names`` written to the output."""

    files: list[Path]
    names: list[str]
    kind: str  # "folder", "glob", "list" or "labels"
    scenes: list[str] = field(default_factory=list)  # the label CSV's scene column, else empty

    def __len__(self) -> int:
        return len(self.files)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _folder(folder: Path) -> ImageList:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise UserError(f"no images in folder {folder} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
    return ImageList(files, [p.relative_to(folder).as_posix() for p in files], "folder")


def _glob(pattern: str) -> ImageList:
    matches = sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
    if not matches:
        raise UserError(f"no files match {pattern!r}")
    return ImageList([Path(m) for m in matches], [Path(m).as_posix() for m in matches], "glob")


def _is_label_csv(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    return "img_path" in [c.strip() for c in header.split(",")]


def _label_csv(path: Path, root: Path) -> ImageList:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, skipinitialspace=True))
    names = [(row.get("img_path") or "").strip() for row in rows]
    empty = [i + 2 for i, name in enumerate(names) if not name]  # CSV line numbers, header = line 1
    if empty:
        raise UserError(f"{path}: empty img_path on CSV line {empty[0]}")
    if not names:
        raise UserError(f"{path}: label CSV without rows")
    scenes = [(row.get("scene") or "").strip() for row in rows]
    return ImageList([root / name for name in names], names, "labels", scenes)


def _text_list(path: Path, root: Path) -> ImageList:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is neither an image, a folder, a label CSV nor a UTF-8 list of image paths") from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise UserError(f"image list {path} holds no paths")
    return ImageList([root / name for name in names], names, "list")


def resolve_image_source(source: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageList:
    """The images named by ``source`` (folder, glob, text list or label CSV); UserError if there are none."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        if is_image_file(path):
            return ImageList([path], [path.name], "list")
        base = Path(root) if root is not None else path.parent
        return _label_csv(path, base) if _is_label_csv(path) else _text_list(path, base)
    if any(c in text for c in _GLOB_CHARS):
        return _glob(text)
    raise UserError(
        f"images not found: {text} (expected a folder, a glob pattern, a text file with one "
        f"image path per line, or a label CSV)"
    )


class ImageFileDataset(Dataset):
    """Decoded, transformed images of a file list; a sample is ``{"img", "index", "ok", "error"}``.

    ``img`` is ``transform(uint8 3xHxW)`` (floats in [0, 1] without a transform) or, when the file cannot
    be read, an empty tensor with ``ok=False`` and ``error`` the one-line reason.
    """

    def __init__(
        self, files: Sequence[str | os.PathLike], transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ):
        self.files = [Path(f) for f in files]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        try:
            img_3HW = load_image_uint8(self.files[index])
        except UserError as e:
            return {"img": torch.empty(0), "index": index, "ok": False, "error": str(e)}
        img = self.transform(img_3HW) if self.transform is not None else img_3HW.float().div_(255.0)
        return {"img": img, "index": index, "ok": True, "error": ""}


def collate_readable(samples: list[dict]) -> dict:
    """Stack the readable samples of a batch; the unreadable ones are reported as ``(index, reason)``."""
    good = [s for s in samples if s["ok"]]
    return {
        "img": torch.stack([s["img"] for s in good]) if good else None,
        "index": torch.tensor([s["index"] for s in good], dtype=torch.long),
        "failed": [(s["index"], s["error"]) for s in samples if not s["ok"]],
    }
