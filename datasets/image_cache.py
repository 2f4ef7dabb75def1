"""A decoded-image cache: every image of a labels file decoded once, resized, stored as uint8 in one file.

Decoding a 640x480 PNG costs far more than cropping and normalising it, and every epoch of every run
decodes the same files again. The cache decodes each image of a labels file once, resizes its short side
to ``image_resize`` with the config's ``resize_backend`` ("tensor" or "pil"), by the same code as
:func:`datasets.transforms.build_transform`, and stores the uint8 RGB pixels (3 x h x w per image, in label
order) in one file that later epochs and runs memory-map. The transform's resize then finds the image at
its target size and leaves it as it is, so a cached sample equals an uncached one bit for bit, with either
backend.

File ``<cache_dir>/<labels stem>-<key>.u8cache``: the pixel data, then a JSON index (key, image paths,
shapes, CRC-32 of the data), then a 24-byte footer (magic, index length, data length). The key hashes
the labels file's content, the resolved dataset root, the resize size and the resize backend's method
(:data:`datasets.transforms.RESIZE_METHODS`), so any change, switching ``resize_backend`` included, gives a
new file. The file is written to a temporary name and renamed into place; a file that is truncated, does
not parse, or fails its checksum is rebuilt with a warning, never trusted.

Where the cache lives is the config key ``cache_dir`` (:func:`resolve_cache_dir`): by default ("auto") a
per-user folder, used wherever it can be written and has room, with one warning and plain decoding where
not; a folder that is named explicitly must work or the run stops with one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.dataset import load_image_uint8
from datasets.transforms import resize_method, resize_short_side
from util.device import cap_workers
from util.errors import UserError
from util.io import atomic_write_with, format_bytes
from util.logs import progress_bar

log = logging.getLogger(__name__)

FORMAT = "hyperpose-image-cache"
VERSION = 2  # 2: each distinct image stored once, rows point at it
MAGIC = b"HPIMGC01"
_FOOTER = struct.Struct("<8sQQ")  # magic, index length, data length
_CHUNK = 1 << 24
AUTO = "auto"  # cache_dir's default
OFF = ("off", "none", "")
CACHE_DIR_ENV = "HYPERPOSE_CACHE_DIR"
SPARE_BYTES = 1 << 30  # an automatic cache leaves at least this much of its disk free


def default_cache_dir() -> Path:
    """The folder of ``cache_dir: "auto"``: ``$HYPERPOSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/hyperpose/images``,
    else ``~/.cache/hyperpose/images``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hyperpose" / "images"


def resolve_cache_dir(value) -> tuple[Path | None, bool]:
    """``(folder, required)`` for a ``cache_dir`` value: null or "off" give no cache; "auto" the default
    folder, not required (a cache that cannot be written there is skipped with a warning); any other
    value that folder, required (failing to write it is an error)."""
    if value is None or str(value).strip().lower() in OFF:
        return None, False
    if str(value).strip().lower() == AUTO:
        return default_cache_dir(), False
    return Path(value), True


def estimated_bytes(dataset_root: Path, img_paths: list[str], image_resize: int) -> int:
    """The cache's size if every image had the first one's size (7Scenes and Cambridge have one size each)."""
    from PIL import Image

    try:
        with Image.open(dataset_root / img_paths[0]) as image:
            w, h = image.size
    except (OSError, ValueError):
        return 0  # an unreadable image is reported by the decoder
    short = min(w, h)
    return len(set(img_paths)) * 3 * image_resize * int(image_resize * max(w, h) / short)  # as torchvision rounds


def check_free_space(folder: Path, needed: int, spare: int = 0) -> None:
    """``UserError`` unless ``folder`` (created if missing) can be written and its disk holds ``needed`` bytes
    plus ``spare``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise UserError(f"cannot use the image cache folder {folder}: {e.strerror or e}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot use the image cache folder {folder}: it is not writable")
    if free < needed + spare:
        raise UserError(
            f"the image cache needs about {format_bytes(needed + spare)} but {folder} has {format_bytes(free)} free"
        )


def cache_key(
    labels_file: str | Path, dataset_root: str | Path, image_resize: int, resize_backend: str = "tensor"
) -> dict:
    """What a cache depends on: any change of these gives another cache file. The "tensor" backend's key is
    the one from before the backend was part of it, so existing caches stay valid."""
    try:
        digest = hashlib.sha256(Path(labels_file).read_bytes()).hexdigest()
    except OSError as e:
        raise UserError(f"cannot read labels file {labels_file}: {e.strerror}") from None
    return {
        "labels_sha256": digest,
        "dataset_root": str(Path(dataset_root).resolve()),
        "image_resize": int(image_resize),
        "resize": resize_method(resize_backend),
        "format": FORMAT,
        "version": VERSION,
    }


def cache_path(cache_dir: str | Path, labels_file: str | Path, key: dict) -> Path:
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{Path(labels_file).stem}-{key_hash}.u8cache"


class _DecodeResize(Dataset):
    """Decoded uint8 images of a list of files, short side resized with ``resize_backend`` (the cache
    builder's loader)."""

    def __init__(self, paths: list[Path], image_resize: int, resize_backend: str):
        self.paths, self.image_resize, self.resize_backend = paths, image_resize, resize_backend

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        img_3HW = load_image_uint8(self.paths[i])
        return resize_short_side(img_3HW, self.image_resize, self.resize_backend).contiguous()


class ImageCache:
    """Read access to a verified cache file: ``cache[i]`` is the image of row ``i`` of the labels file, uint8
    3xhxw. Each distinct image is stored once; ``rows[i]`` says which stored image row ``i`` shows.

    The memory map is opened lazily in each process and dropped on pickling, so DataLoader workers map the
    file themselves instead of receiving a copy of the pixels.
    """

    def __init__(self, path: Path, shapes: list[tuple[int, int, int]], data_len: int, rows: list[int]):
        self.path, self.rows = path, [int(r) for r in rows]
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        sizes = np.array([int(np.prod(s)) for s in self.shapes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.data_len = data_len
        self._data: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.data_len,))
        j = self.rows[i]
        flat = self._data[self.offsets[j] : self.offsets[j + 1]]
        return torch.from_numpy(np.array(flat)).view(self.shapes[j])  # a copy: the map stays read-only

    # Reading and writing --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path, key: dict, img_paths: list[str], verify: bool = True) -> ImageCache:
        """Open ``path``; ``ValueError`` saying why when it is not a complete cache of ``key`` and ``img_paths``."""
        size = path.stat().st_size
        if size < _FOOTER.size:
            raise ValueError(f"{size} bytes, shorter than its footer")
        with open(path, "rb") as f:
            f.seek(size - _FOOTER.size)
            magic, index_len, data_len = _FOOTER.unpack(f.read(_FOOTER.size))
            if magic != MAGIC:
                raise ValueError("no cache footer (truncated or not a cache file)")
            if data_len + index_len + _FOOTER.size != size:
                raise ValueError(f"{size} bytes, but its footer describes {data_len + index_len + _FOOTER.size}")
            f.seek(data_len)
            try:
                index = json.loads(f.read(index_len).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ValueError("its index does not parse") from None
            if index.get("key") != key:
                raise ValueError("made for another labels file, dataset root, size or resize backend")
            if index.get("img_paths") != list(img_paths):
                raise ValueError("its image list differs from the labels file")
            shapes, rows = index["shapes"], index["rows"]
            if sum(int(np.prod(s)) for s in shapes) != data_len:
                raise ValueError("its shapes do not add up to its data length")
            if len(rows) != len(img_paths) or any(not 0 <= r < len(shapes) for r in rows):
                raise ValueError("its rows do not fit its images")
            if verify:
                f.seek(0)
                crc, left = 0, data_len
                while left:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        raise ValueError("data ends early")
                    crc, left = zlib.crc32(chunk, crc), left - len(chunk)
                if crc != index.get("data_crc32"):
                    raise ValueError("checksum mismatch (corrupt data)")
        return cls(path, shapes, data_len, rows)

    @staticmethod
    def build(
        path: Path,
        key: dict,
        dataset_root: Path,
        img_paths: list[str],
        n_workers: int = 0,
        resize_backend: str = "tensor",
    ) -> None:
        """Decode and resize every distinct image once (with ``resize_backend``, the one of ``key``) and write
        the cache file atomically; a labels file that names one image on many rows stores it once."""
        distinct = list(dict.fromkeys(img_paths))
        position = {p: k for k, p in enumerate(distinct)}
        decoder = _DecodeResize([dataset_root / p for p in distinct], key["image_resize"], resize_backend)
        # Nothing else runs while the cache is built: every CPU may decode.
        loader = DataLoader(decoder, batch_size=None, shuffle=False, num_workers=cap_workers(n_workers))
        shapes: list[list[int]] = []

        def write(tmp: str) -> None:
            crc, data_len = 0, 0
            with open(tmp, "wb") as f:
                for img_3hw in progress_bar(loader, desc=f"caching {path.name}", leave=False, dynamic_ncols=True):
                    raw = img_3hw.numpy().tobytes()
                    f.write(raw)
                    crc, data_len = zlib.crc32(raw, crc), data_len + len(raw)
                    shapes.append(list(img_3hw.shape))
                index = json.dumps(
                    {
                        "key": key,
                        "img_paths": list(img_paths),
                        "shapes": shapes,
                        "rows": [position[p] for p in img_paths],
                        "data_crc32": crc,
                    }
                ).encode("utf-8")
                f.write(index)
                f.write(_FOOTER.pack(MAGIC, len(index), data_len))
                f.flush()
                os.fsync(f.fileno())

        try:
            atomic_write_with(path, write)
        except OSError as e:
            raise UserError(f"cannot write the image cache {path}: {e.strerror or e}") from None


def open_image_cache(
    cache_dir: str | Path,
    dataset_root: str | Path,
    labels_file: str | Path,
    img_paths: list[str],
    image_resize: int,
    n_workers: int = 0,
    build: bool = True,
    verify: bool = True,
    required: bool = True,
    resize_backend: str = "tensor",
) -> ImageCache | None:
    """The verified cache of one labels file at short side ``image_resize`` resized with ``resize_backend``
    (the config key), built first when missing or damaged.

    With ``build=False`` (distributed ranks other than 0, which wait for rank 0 to build it) a missing or
    damaged cache returns None. A cache that cannot be built (no room, a folder that cannot be written)
    is an error when ``required``, else a warning and None: the images are then decoded every epoch.
    """
    key = cache_key(labels_file, dataset_root, image_resize, resize_backend)
    path = cache_path(cache_dir, labels_file, key)
    if path.is_file():
        try:
            cache = ImageCache.load(path, key, img_paths, verify=verify)
            log.info("image cache %s: %d images", path, len(cache))
            return cache
        except (ValueError, OSError, KeyError, TypeError) as e:
            if not build:
                return None
            log.warning("image cache %s is unusable (%s); rebuilding it", path, e)
    elif not build:
        return None
    try:
        check_free_space(
            path.parent, estimated_bytes(Path(dataset_root), img_paths, image_resize), 0 if required else SPARE_BYTES
        )
        log.info(
            "building the image cache %s (%d images at short side %d, resize_backend %s)",
            path,
            len(img_paths),
            image_resize,
            resize_backend,
        )
        ImageCache.build(path, key, Path(dataset_root), img_paths, n_workers, resize_backend)
    except UserError as e:
        if required:
            raise
        log.warning("%s; decoding the images every epoch instead (cache_dir: off silences this)", e)
        return None
    return ImageCache.load(path, key, img_paths, verify=False)
