"""Image transforms of the training recipe, on tensors with torchvision.transforms.v2.

Input: a uint8 RGB tensor 3xHxW as ``datasets.dataset.load_image_uint8`` decodes it. Output: a float32
tensor 3 x crop x crop, normalised with the ImageNet mean and std. Random choices draw from the global
torch RNG, so ``torch.manual_seed`` (and the per-worker seeds a DataLoader derives from it) make them
reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from util.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_RESIZE = 256
DEFAULT_IMAGE_CROP = 224
COLOR_JITTER = dict(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2)
# How each ``resize_backend`` resizes the short side; part of the decoded-image cache's key
# (datasets/image_cache.py), so a cache made with one backend is never read with the other.
RESIZE_METHODS = {"tensor": "torchvision-v2-bilinear-antialias", "pil": "pil-bilinear"}


def _div255(img: torch.Tensor) -> torch.Tensor:
    return img.to(torch.float32).div(255)


class PILResize(torch.nn.Module):
    """Resize the shorter side of a uint8 tensor 3xHxW to ``size`` with PIL's bilinear filter, as the
    reference does (``ToPILImage`` then ``Resize``): the long side becomes ``int(size * long / short)``.
    torchvision's tensor resize rounds differently, one grey level apart on a fraction of a percent of the
    values, which is enough to move the predictions of reference-trained weights by 0.1-1 %."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, img_3HW: torch.Tensor) -> torch.Tensor:
        h, w = img_3HW.shape[-2:]
        if h <= w:
            new_h, new_w = self.size, int(self.size * w / h)
        else:
            new_h, new_w = int(self.size * h / w), self.size
        if (new_h, new_w) == (h, w):
            return img_3HW
        image = Image.fromarray(img_3HW.permute(1, 2, 0).contiguous().numpy())
        resized = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))
        return torch.from_numpy(resized.copy()).permute(2, 0, 1).contiguous()


def image_sizes(config: Mapping) -> tuple[int, int]:
    """``(image_resize, image_crop)`` of a config, checked."""
    resize = int(config.get("image_resize", DEFAULT_IMAGE_RESIZE))
    crop = int(config.get("image_crop", DEFAULT_IMAGE_CROP))
    if not 0 < crop <= resize:
        raise UserError(f"image_crop ({crop}) must be positive and at most image_resize ({resize})")
    return resize, crop


def build_resize_crop(config: Mapping) -> v2.Compose:
    """The geometric part of the test transform alone: uint8 in, uint8 crop x crop out (for exported models,
    which normalise inside their graph)."""
    resize, crop = image_sizes(config)
    return v2.Compose([resize_step(config, resize), v2.CenterCrop(crop)])


def resize_method(backend: str) -> str:
    """The name of ``backend``'s resize (:data:`RESIZE_METHODS`); ``UserError`` for an unknown backend."""
    if backend not in RESIZE_METHODS:
        raise UserError(f"resize_backend must be 'tensor' or 'pil', got {backend!r}")
    return RESIZE_METHODS[backend]


def short_side_resize(backend: str, size: int) -> torch.nn.Module:
    """Resize the shorter side to ``size`` with ``backend`` ("tensor" or "pil"), keeping the aspect ratio.
    Both leave an image whose short side is already ``size`` as it is, so an image from the decoded-image
    cache (resized by this same module) passes unchanged."""
    resize_method(backend)
    if backend == "pil":
        return PILResize(size)
    return v2.Resize(int(size), antialias=True)  # an int resizes the shorter side


def resize_short_side(img_3HW: torch.Tensor, size: int, backend: str = "tensor") -> torch.Tensor:
    """``img_3HW`` with its shorter side resized to ``size`` by ``backend`` (the first step of every transform)."""
    return short_side_resize(backend, size)(img_3HW)


def resize_step(config: Mapping, resize: int) -> torch.nn.Module:
    """Resize the shorter side to ``resize`` with the config's ``resize_backend``."""
    return short_side_resize(config.get("resize_backend", "tensor"), resize)


def build_transform(config: Mapping, train: bool) -> v2.Compose:
    """Resize the short side to ``image_resize``, crop ``image_crop`` and normalise.

    Training: random crop and colour jitter (brightness, contrast, saturation 0.5, hue 0.2). Testing, or
    training with ``no_augment``: centre crop and nothing random.
    """
    resize, crop = image_sizes(config)
    augment = train and not config.get("no_augment", False)

    # The resize of resize_short_side, which the decoded-image cache also uses: an image already at that
    # size (from the cache) is returned unchanged.
    backend = config.get("resize_backend", "tensor")
    steps = [resize_step(config, resize)]
    steps.append(v2.RandomCrop(crop) if augment else v2.CenterCrop(crop))
    # Jitter after cropping (less work) and on floats (no uint8 rounding between its four adjustments).
    # The reference's ToTensor divides by 255; ToDtype multiplies by 1/255, a float ulp away on some values.
    steps.append(v2.Lambda(_div255) if backend == "pil" else v2.ToDtype(torch.float32, scale=True))
    if augment:
        steps.append(v2.ColorJitter(**COLOR_JITTER))
    steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)
