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


def build_transform(config: Mapping, train: bool) -> v2.Compose:
    """Resize the short side to ``image_resize``, crop ``image_crop`` and normalise.

    Training: random crop and colour jitter (brightness, contrast, saturation 0.5, hue 0.2). Testing, or
    training with ``no_augment``: centre crop and nothing random.
    """
    resize = int(config.get("image_resize", DEFAULT_IMAGE_RESIZE))
    crop = int(config.get("image_crop", DEFAULT_IMAGE_CROP))
    if not 0 < crop <= resize:
        raise UserError(f"image_crop ({crop}) must be positive and at most image_resize ({resize})")
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
