"""Image transforms of the training recipe (SPEC section 4), on tensors with torchvision.transforms.v2.

Input: a uint8 RGB tensor 3xHxW as ``datasets.dataset.load_image_uint8`` decodes it. Output: a float32
tensor 3 x crop x crop, normalised with the ImageNet mean and std. Random choices draw from the global
torch RNG, so ``torch.manual_seed`` (and the per-worker seeds a DataLoader derives from it) make them
reproducible.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torchvision.transforms import v2

from util.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_RESIZE = 256
DEFAULT_IMAGE_CROP = 224
COLOR_JITTER = dict(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2)
# How the short side is resized; part of the decoded-image cache's key (datasets/image_cache.py).
RESIZE_METHOD = "torchvision-v2-bilinear-antialias"


def resize_short_side(img_3HW: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio (the first training step)."""
    return v2.functional.resize(img_3HW, [int(size)], antialias=True)


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
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])


def build_transform(config: Mapping, train: bool) -> v2.Compose:
    """Resize the short side to ``image_resize``, crop ``image_crop`` and normalise.

    Training: random crop and colour jitter (brightness, contrast, saturation 0.5, hue 0.2). Testing, or
    training with ``no_augment``: centre crop and nothing random.
    """
    resize, crop = image_sizes(config)
    augment = train and not config.get("no_augment", False)

    # An int resizes the shorter side, as resize_short_side does; an image already at that size (from the
    # decoded-image cache) is returned unchanged.
    steps = [v2.Resize(resize, antialias=True)]
    steps.append(v2.RandomCrop(crop) if augment else v2.CenterCrop(crop))
    # Jitter after cropping (less work) and on floats (no uint8 rounding between its four adjustments).
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if augment:
        steps.append(v2.ColorJitter(**COLOR_JITTER))
    steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)
