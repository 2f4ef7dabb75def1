"""The camera pose dataset: images of a label CSV with their poses and scene ids.

Images are decoded with ``torchvision.io`` (``read_file`` + ``decode_image``), which ``bench/bench_decode.py``
measures at 1.1-1.9x the speed of PIL for PNG and JPEG; PIL remains the fallback for formats torchvision
does not decode (BMP, TIFF, ...) and for torchvision builds without image support. Either way the result is
a uint8 RGB tensor 3xHxW (grayscale, palette and RGBA images become RGB; alpha is dropped).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.label_io import CAMBRIDGE_FIVE, CAMBRIDGE_FOUR, SEVEN_SCENES
from datasets.labels import POSE_COLUMNS, read_labels
from util.errors import UserError
from util.io import check_input_file

try:
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.io.image import _has_image_ops

    _TORCHVISION_DECODE = _has_image_ops()
except ImportError:  # torchvision has announced the removal of torchvision.io image decoding
    _TORCHVISION_DECODE = False

PathLike = Union[str, os.PathLike]


def _decode_torchvision(path: str) -> torch.Tensor:
    with warnings.catch_warnings():
        # torchvision 0.29 warns on every call that torchvision.io image decoding is deprecated.
        warnings.filterwarnings(
            "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
        )
        img_3HW = decode_image(read_file(path), mode=ImageReadMode.RGB)
    if img_3HW.dtype != torch.uint8:  # 16-bit PNG: keep the 8 most significant bits
        img_3HW = (img_3HW.to(torch.int32) >> 8).to(torch.uint8)
    return img_3HW


def _decode_pil(path: str) -> torch.Tensor:
    with Image.open(path) as image:
        rgb_HW3 = np.array(image.convert("RGB"))
    return torch.from_numpy(rgb_HW3).permute(2, 0, 1).contiguous()


def _check_pixel_count(path: str) -> None:
    """Refuse an image larger than PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485
    pixels by default, e.g. 9459 x 9459) from its header, before any decoder allocates it."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return  # not readable by PIL: the decoders below report it
    if limit and width * height > limit:
        raise UserError(
            f"image {path} is {width} x {height} pixels, more than the {limit:,} an image may have "
            f"(PIL.Image.MAX_IMAGE_PIXELS); downscale it"
        )


def load_image_uint8(path: PathLike) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor 3xHxW; ``UserError`` naming the path if it cannot."""
    path = str(path)
    _check_pixel_count(path)
    if _TORCHVISION_DECODE:
        try:
            return _decode_torchvision(path)
        except RuntimeError:
            pass  # unsupported format, or a broken file that PIL will describe more clearly
    try:
        return _decode_pil(path)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"image {path} is a directory, not an image file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path}: {e}") from None


def build_scene_map(scene_names: Sequence[str]) -> dict[str, int]:
    """Scene name -> id, ids in the order of the sorted unique names (7Scenes: chess 0, ..., stairs 6)."""
    return {name: scene_id for scene_id, name in enumerate(sorted(set(scene_names)))}


# Scene maps of the reference's multi-scene training sets (ids follow the sorted names of the
# training CSV, docs/datasets.md): 7scenes_all_scenes.csv, cambridge_four_scenes.csv and cambridge_five_scenes.csv.
CANONICAL_SCENE_SETS = {
    "7Scenes": SEVEN_SCENES,
    "Cambridge (four scenes)": CAMBRIDGE_FOUR,
    "Cambridge (five scenes)": CAMBRIDGE_FIVE,
}


def read_scene_map_file(path: PathLike) -> dict[str, int]:
    """Scene name -> id from a CSV's ``scene`` column, ids in order of first appearance (``--scene_map``)."""
    path = check_input_file(path, "--scene_map file")
    try:
        scenes = pd.read_csv(path, dtype=str, usecols=["scene"], skipinitialspace=True)["scene"]
    except ValueError:
        raise UserError(
            f"--scene_map {path}: no 'scene' column (a label CSV or a one-column CSV with the header 'scene')"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"--scene_map {path}: cannot parse it ({' '.join(str(exc).split())[:120]})") from None
    names = list(dict.fromkeys(s.strip() for s in scenes.dropna() if s.strip()))
    if not names:
        raise UserError(f"--scene_map {path}: the scene column is empty")
    return {name: i for i, name in enumerate(names)}


def reference_scene_map(
    n_scenes: int,
    test_scenes: Sequence[str],
    scene_map_file: PathLike | None = None,
    checkpoint: str = "the checkpoint",
) -> tuple[dict[str, int], str]:
    """The scene map of a checkpoint that stores none (a bare reference state_dict with ``n_scenes``
    scene heads), and where it came from: ``--scene_map`` if given, else the reference training set whose
    scenes include the test scenes and number ``n_scenes``, else the test CSV's own sorted scenes."""
    if scene_map_file is not None:
        scene_map, source = read_scene_map_file(scene_map_file), f"--scene_map {scene_map_file}"
    else:
        scene_map, source = None, None
        for name, scenes in CANONICAL_SCENE_SETS.items():
            if len(scenes) == n_scenes and set(test_scenes) <= set(scenes):
                scene_map, source = build_scene_map(scenes), f"the {name} training order"
                break
        if scene_map is None and len(set(test_scenes)) == n_scenes:
            scene_map, source = build_scene_map(test_scenes), "the sorted scenes of the test CSV"
        if scene_map is None:
            raise UserError(
                f"{checkpoint} has {n_scenes} scene heads but stores no scene map, and the test CSV's "
                f"{len(set(test_scenes))} scene(s) ({', '.join(sorted(set(test_scenes)))}) fit no known "
                f"training set; give --scene_map FILE (a CSV whose scene column lists the training "
                f"scenes in id order, e.g. the training labels file)"
            )
    if len(scene_map) != n_scenes:
        raise UserError(f"{source} lists {len(scene_map)} scenes but {checkpoint} has {n_scenes} scene heads")
    return scene_map, source


def check_scene_map(scene_map: Mapping[str, int], scene_names: Sequence[str], source: str) -> dict[str, int]:
    """A copy of a given scene map (e.g. from a checkpoint); ``UserError`` naming any scene it lacks."""
    scene_map = {str(name): int(scene_id) for name, scene_id in scene_map.items()}
    unknown = sorted(set(scene_names) - set(scene_map))
    if unknown:
        raise UserError(
            f"{source}: scene(s) {', '.join(unknown)} not in the scene map, which has "
            f"{', '.join(sorted(scene_map, key=scene_map.get))}; the model was trained on other scenes"
        )
    if len(set(scene_map.values())) != len(scene_map):
        raise UserError(f"scene map assigns one id to several scenes: {scene_map}")
    return scene_map


class CameraPoseDataset(Dataset):
    """Images of a label CSV with poses and scene ids, as dict samples.

    A sample is ``{"img": FloatTensor 3xHxW, "pose": FloatTensor (7,) [t, q] with unit q,
    "scene": LongTensor scalar, "path": str (img_path as in the CSV, relative to dataset_root)}``.
    ``transform`` receives the decoded uint8 RGB tensor 3xHxW and returns the float tensor the model takes
    (see ``datasets.transforms.build_transform``); without one the image is returned as floats in [0, 1].
    ``scene_map`` (name -> id) is derived from the CSV's sorted scene names unless given, e.g. the training
    map stored with a model, so that test-time ids agree with training. ``image_cache`` (see
    ``datasets.image_cache``) replaces decoding with a read of the already decoded, resized image.
    ``corruption`` (e.g. a :class:`datasets.corruptions.Corruption`) is called as ``corruption(img_3HW, img_path)``
    on every decoded uint8 image before the transform resizes it; a corrupted dataset never reads the
    image cache, whose images are already resized.
    """

    def __init__(
        self,
        dataset_root: PathLike,
        labels_file: PathLike,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        scene_map: Mapping[str, int] | None = None,
        check_images: bool = True,
        corruption: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
    ):
        labels = read_labels(labels_file, dataset_root=dataset_root, check_images=check_images)
        self.dataset_root = Path(dataset_root)
        self.labels_file = Path(labels_file)
        self.transform = transform
        self.scene_names = labels["scene"].tolist()
        self.scene_map = (
            build_scene_map(self.scene_names)
            if scene_map is None
            else check_scene_map(scene_map, self.scene_names, str(labels_file))
        )
        self.scene_ids = np.array([self.scene_map[name] for name in self.scene_names], dtype=np.int64)
        self.img_paths = labels["img_path"].tolist()
        self.seqs = labels["seq"].astype(str).tolist()
        self.poses_N7 = labels[POSE_COLUMNS].to_numpy(dtype=np.float32)
        self.image_cache = None
        self.corruption = corruption

    def use_image_cache(
        self,
        cache_dir: PathLike,
        image_resize: int,
        n_workers: int = 0,
        build: bool = True,
        required: bool = True,
        resize_backend: str = "tensor",
    ) -> bool:
        """Read images from the decoded-image cache in ``cache_dir`` (built on first use); False if absent
        and ``build`` is off, or if it cannot be built and is not ``required``. ``image_resize`` and
        ``resize_backend`` must be the transform's, so that its resize leaves the cached images as they are."""
        from datasets.image_cache import open_image_cache

        if self.corruption is not None:
            return False  # corruptions apply to the full-size decoded image
        self.image_cache = open_image_cache(
            cache_dir,
            self.dataset_root,
            self.labels_file,
            self.img_paths,
            image_resize,
            n_workers=n_workers,
            build=build,
            required=required,
            resize_backend=resize_backend,
        )
        return self.image_cache is not None

    def check_sample(self, n: int = 8) -> None:
        """Decode and transform ``n`` evenly spaced images (first and last included), so that a broken
        image or format is found before a run folder exists, not in a worker mid-epoch."""
        for index in np.unique(np.linspace(0, len(self) - 1, min(n, len(self))).round().astype(int)):
            self[int(index)]

    @property
    def num_scenes(self) -> int:
        return len(self.scene_map)

    def __len__(self) -> int:
        return len(self.img_paths)

    def __getitem__(self, index: int) -> dict:
        rel_path = self.img_paths[index]
        if self.image_cache is not None:
            img_3HW = self.image_cache[index]
        else:
            img_3HW = load_image_uint8(self.dataset_root / rel_path)
            if self.corruption is not None:
                img_3HW = self.corruption(img_3HW, rel_path)
        img = self.transform(img_3HW) if self.transform is not None else img_3HW.float().div_(255.0)
        return {
            "img": img,
            "pose": torch.from_numpy(self.poses_N7[index].copy()),
            "scene": torch.tensor(self.scene_ids[index], dtype=torch.long),
            "path": rel_path,
        }
