"""The camera pose dataset: images of a label CSV with their poses and scene ids.

Images are decoded with ``torchvision.io`` (``read_file`` + ``decode_image``), which ``bench/bench_decode.py``
measures at 1.1-1.9x the speed of PIL for PNG and JPEG; PIL remains the fallback for formats torchvision
does not decode (BMP, TIFF, ...) and for torchvision builds without image support. Either way the result is
a uint8 RGB tensor 3xHxW (grayscale, palette and RGBA images become RGB; alpha is dropped).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.labels import POSE_COLUMNS, read_labels
from util.errors import UserError

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
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        img_3HW = decode_image(read_file(path), mode=ImageReadMode.RGB)
    if img_3HW.dtype != torch.uint8:  # 16-bit PNG: keep the 8 most significant bits
        img_3HW = (img_3HW.to(torch.int32) >> 8).to(torch.uint8)
    return img_3HW


def _decode_pil(path: str) -> torch.Tensor:
    with Image.open(path) as image:
        rgb_HW3 = np.array(image.convert("RGB"))
    return torch.from_numpy(rgb_HW3).permute(2, 0, 1).contiguous()


def load_image_uint8(path: PathLike) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor 3xHxW; ``UserError`` naming the path if it cannot."""
    path = str(path)
    if _TORCHVISION_DECODE:
        try:
            return _decode_torchvision(path)
        except RuntimeError:
            pass  # unsupported format, or a broken file that PIL will describe more clearly
    try:
        return _decode_pil(path)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path}: {e}") from None


def build_scene_map(scene_names: Sequence[str]) -> Dict[str, int]:
    """Scene name -> id, ids in the order of the sorted unique names (7Scenes: chess 0, ..., stairs 6)."""
    return {name: scene_id for scene_id, name in enumerate(sorted(set(scene_names)))}


def check_scene_map(scene_map: Mapping[str, int], scene_names: Sequence[str], source: str) -> Dict[str, int]:
    """A copy of a given scene map (e.g. from a checkpoint); ``UserError`` naming any scene it lacks."""
    scene_map = {str(name): int(scene_id) for name, scene_id in scene_map.items()}
    unknown = sorted(set(scene_names) - set(scene_map))
    if unknown:
        raise UserError(f"{source}: scene(s) {', '.join(unknown)} not in the scene map, which has "
                        f"{', '.join(sorted(scene_map, key=scene_map.get))}; the model was trained on other scenes")
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
    """

    def __init__(self, dataset_root: PathLike, labels_file: PathLike,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 scene_map: Optional[Mapping[str, int]] = None, check_images: bool = True):
        labels = read_labels(labels_file, dataset_root=dataset_root, check_images=check_images)
        self.dataset_root = Path(dataset_root)
        self.labels_file = Path(labels_file)
        self.transform = transform
        self.scene_names = labels["scene"].tolist()
        self.scene_map = (build_scene_map(self.scene_names) if scene_map is None
                          else check_scene_map(scene_map, self.scene_names, str(labels_file)))
        self.scene_ids = np.array([self.scene_map[name] for name in self.scene_names], dtype=np.int64)
        self.img_paths = labels["img_path"].tolist()
        self.poses_N7 = labels[POSE_COLUMNS].to_numpy(dtype=np.float32)
        self.image_cache = None

    def use_image_cache(self, cache_dir: PathLike, image_resize: int, n_workers: int = 0,
                        build: bool = True) -> bool:
        """Read images from the decoded-image cache in ``cache_dir`` (built on first use); False if absent
        and ``build`` is off."""
        from datasets.image_cache import open_image_cache

        self.image_cache = open_image_cache(cache_dir, self.dataset_root, self.labels_file, self.img_paths,
                                            image_resize, n_workers=n_workers, build=build)
        return self.image_cache is not None

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
        img = self.transform(img_3HW) if self.transform is not None else img_3HW.float().div_(255.0)
        return {
            "img": img,
            "pose": torch.from_numpy(self.poses_N7[index].copy()),
            "scene": torch.tensor(self.scene_ids[index], dtype=torch.long),
            "path": rel_path,
        }
