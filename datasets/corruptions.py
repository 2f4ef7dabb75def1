"""ImageNet-C-style corruptions (Hendrycks & Dietterich, ICLR 2019) of camera-pose test images.

A corruption maps a decoded uint8 RGB image 3xHxW (full size, before any resizing) to a uint8 RGB image of the
same shape, at a severity from 1 (mild) to 5; severity 0 returns the image itself, bit for bit.

- noise: gaussian_noise, shot_noise, impulse_noise, speckle_noise
- blur: defocus_blur, motion_blur, zoom_blur, gaussian_blur
- weather: brightness, fog
- digital: contrast, pixelate, jpeg_compression

Parameters are the five-entry ``c = [...][severity - 1]`` tables of Hendrycks' ``imagenet_c`` package
(github.com/hendrycks/robustness, ``ImageNet-C/imagenet_c/imagenet_c/corruptions.py``; the same values as
``ImageNet-C/create_c/make_imagenet_c.py``), kept in ``CORRUPTIONS[name].params``. speckle_noise and
gaussian_blur are two of ImageNet-C's four extra (held-out) corruptions, ``spec.extra``; the others belong to its
15 benchmark corruptions.

Pixel sizes: ImageNet-C's lengths are pixels of a 224x224 image. Here every length (blur radii and sigmas, the
motion-blur length, the fog's grid) is multiplied by ``s = min(H, W) / 224`` (:func:`pixel_scale`), so that a
corruption covers the same fraction of the image at any resolution: a 480x640 7Scenes frame that the model sees
resized to 256 px shows about the blur ImageNet-C shows at 224 px. Pixelate's factor and the zoom factors are
relative already. Noise and JPEG act per pixel and per 8x8 block of the full-size image, as a sensor or codec
would, so the model's downscale averages part of them away, the more so the larger the image.

Determinism: random draws (noise, motion-blur angle, fog) come from a numpy Generator seeded with a SHA-256 hash
of (seed, name, severity, key), ``key`` being the image's path as in the label CSV. An image is corrupted the
same way in every run, process and DataLoader worker, whatever the order; no global RNG is read or changed.
As in ImageNet-C, each severity draws anew: fog's severities 3 and 4 share their thickness, so one image's fog
may come out lighter at 4 than at 3; the published ordering holds on average over images.
Values are rounded to the nearest integer (ImageNet-C truncates with ``np.uint8`` and stored its release as
JPEG of quality 85; nothing is re-encoded here).

Libraries: kornia filters (Gaussian blur, FFT convolution of the defocus and motion kernels), converts to HSV
(brightness) and zooms (zoom blur); PIL encodes JPEG and resizes for pixelate, as ImageNet-C does. Written here,
for want of a library version: ImageMagick's motion-blur kernel, which ImageNet-C calls (a one-sided Gaussian
along a line; kornia's motion_blur is a centred line kernel), and the diamond-square plasma fractal of the fog.

Not included:
- frost: blends crops of frost photographs that ship with ImageNet-C, not available here;
- snow: no faithful maintained implementation (kornia's RandomSnow brightens dark pixels in HLS, another effect);
- glass_blur: a sequential pixel-swapping loop, far too slow on full-size images;
- elastic_transform: its random affine moves the image content, which changes the apparent camera pose;
- spatter: needs OpenCV (Canny edges, distance transform, histogram equalisation);
- saturate: its severities are not ordered (1-2 desaturate, 3-5 oversaturate).

    python -m datasets.corruptions list
    python -m datasets.corruptions write LABELS_CSV DATASET_ROOT OUT_ROOT --corruption fog --severity 3
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datasets import label_io
from datasets.dataset import load_image_uint8
from datasets.labels import LABEL_COLUMNS, read_labels, read_labels_csv
from util.errors import UserError, printable, run_cli
from util.io import atomic_write_text, atomic_write_with, check_output_dir
from util.logs import progress_bar, setup_logging

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

FAMILIES = ("noise", "blur", "weather", "digital")
SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIZE = 224  # ImageNet-C's image side: its lengths in pixels are for this size
SOURCE = "hendrycks/robustness, ImageNet-C/imagenet_c/imagenet_c/corruptions.py"


@dataclass(frozen=True)
class CorruptionSpec:
    """One corruption: ``fn(x_3HW, param, rng)`` maps float32 RGB in [0, 1] to float32 RGB (clipped afterwards),
    ``param = params[severity - 1]``. ``random``: draws from ``rng``; ``extra``: one of ImageNet-C's extra
    corruptions rather than of its 15 benchmark ones; ``meaning``: what a parameter is, for ``list``."""

    name: str
    family: str
    params: tuple
    fn: Callable[[torch.Tensor, object, np.random.Generator], torch.Tensor]
    meaning: str
    random: bool = False
    extra: bool = False


def pixel_scale(height: int, width: int) -> float:
    """The factor ImageNet-C's pixel lengths (for 224x224 images) are multiplied by: the short side / 224."""
    return min(height, width) / REFERENCE_SIZE


def _normal(rng: np.random.Generator, like_3HW: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(tuple(like_3HW.shape), dtype=np.float32)).to(like_3HW.device)


def _filter(x_3HW: torch.Tensor, kernel_KK: torch.Tensor, border: str) -> torch.Tensor:
    """Correlate every channel with a (large) kernel by FFT; 'reflect' falls back to 'replicate' on images
    no larger than the kernel's half-width (which 'reflect' cannot pad)."""
    if border == "reflect" and min(x_3HW.shape[-2:]) <= kernel_KK.shape[-1] // 2:
        border = "replicate"
    return kornia.filters.fft_conv(x_3HW[None], kernel_KK[None].to(x_3HW), border_type=border)[0]


def _to_pil(x_3HW: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(x_3HW).permute(1, 2, 0).cpu().numpy())


def _from_pil(image: Image.Image, like_3HW: torch.Tensor) -> torch.Tensor:
    hwc = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(hwc).permute(2, 0, 1).contiguous().to(like_3HW.device)


def to_uint8(x_3HW: torch.Tensor) -> torch.Tensor:
    """Float RGB in [0, 1] (clipped) to uint8, rounded to the nearest integer."""
    return (x_3HW.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)


# ---- noise ------------------------------------------------------------------------------------------------


def gaussian_noise(x_3HW: torch.Tensor, sigma: float, rng: np.random.Generator) -> torch.Tensor:
    """x + N(0, sigma), independently per pixel and channel."""
    return x_3HW + sigma * _normal(rng, x_3HW)


def shot_noise(x_3HW: torch.Tensor, photons: float, rng: np.random.Generator) -> torch.Tensor:
    """Poisson(x * photons) / photons: photon noise, ``photons`` counted for a white pixel."""
    counts = rng.poisson(x_3HW.double().cpu().numpy() * photons)
    return torch.from_numpy(counts / photons).float().to(x_3HW.device)


def impulse_noise(x_3HW: torch.Tensor, amount: float, rng: np.random.Generator) -> torch.Tensor:
    """Salt and pepper: each value (pixel and channel) becomes 0 or 1, with equal odds, with probability
    ``amount`` (ImageNet-C calls skimage.util.random_noise(mode='s&p'), which does this)."""
    flipped = torch.from_numpy(rng.random(tuple(x_3HW.shape)) <= amount).to(x_3HW.device)
    salted = torch.from_numpy(rng.random(tuple(x_3HW.shape)) <= 0.5).to(x_3HW.device)
    return torch.where(flipped, salted.to(x_3HW.dtype), x_3HW)


def speckle_noise(x_3HW: torch.Tensor, sigma: float, rng: np.random.Generator) -> torch.Tensor:
    """x + x * N(0, sigma): multiplicative noise."""
    return x_3HW + x_3HW * sigma * _normal(rng, x_3HW)


# ---- blur -------------------------------------------------------------------------------------------------


def disk_kernel(radius: float, alias_sigma: float) -> torch.Tensor:
    """ImageNet-C's defocus kernel: the pixels with x^2 + y^2 <= radius^2, normalised, then smoothed by a
    Gaussian of ``alias_sigma`` px against aliasing; square, odd side, sums to 1."""
    half = math.ceil(radius) + math.ceil(3 * alias_sigma)
    yx = torch.arange(-half, half + 1, dtype=torch.float64)
    disk_KK = ((yx[:, None] ** 2 + yx[None, :] ** 2) <= radius**2).double()
    disk_KK /= disk_KK.sum()
    size = 2 * math.ceil(3 * alias_sigma) + 1
    smooth_KK = kornia.filters.gaussian_blur2d(
        disk_KK[None, None], size, (alias_sigma, alias_sigma), border_type="constant"
    )[0, 0]
    return (smooth_KK / smooth_KK.sum()).float()


def defocus_blur(x_3HW: torch.Tensor, param: tuple, rng: np.random.Generator) -> torch.Tensor:
    """Convolution with a disk (radius, alias-blur sigma in px at 224); reflected borders, as cv2.filter2D."""
    radius, alias_sigma = param
    s = pixel_scale(*x_3HW.shape[-2:])
    return _filter(x_3HW, disk_kernel(radius * s, alias_sigma * s), "reflect")


def motion_kernel(radius: float, sigma: float, angle_deg: float) -> torch.Tensor:
    """ImageMagick's MotionBlurImage kernel (which ImageNet-C calls) as a dense correlation kernel with its
    anchor at the centre: 2 * ceil(radius) + 1 taps at i = 0, 1, ... px along ``angle_deg`` (x right, y down;
    offsets rounded to pixels, coinciding taps add up), weighted exp(-i^2 / (2 sigma^2)) and normalised. Each
    output pixel averages the pixels ahead of it along the direction."""
    n_taps = 2 * math.ceil(radius) + 1
    i = np.arange(n_taps)
    weight = np.exp(-(i**2) / (2.0 * sigma**2))
    weight /= weight.sum()
    angle = math.radians(angle_deg)
    dx = np.ceil(i * math.cos(angle) - 0.5).astype(np.int64)
    dy = np.ceil(i * math.sin(angle) - 0.5).astype(np.int64)
    half = n_taps - 1
    kernel_KK = torch.zeros(2 * half + 1, 2 * half + 1, dtype=torch.float64)
    kernel_KK.index_put_(
        (torch.from_numpy(dy + half), torch.from_numpy(dx + half)), torch.from_numpy(weight), accumulate=True
    )
    return kernel_KK.float()


def motion_blur(x_3HW: torch.Tensor, param: tuple, rng: np.random.Generator) -> torch.Tensor:
    """ImageMagick motion blur (radius, sigma in px at 224) at a uniform random angle in [-45, 45] deg;
    edge pixels repeat beyond the border (ImageMagick's default)."""
    radius, sigma = param
    s = pixel_scale(*x_3HW.shape[-2:])
    angle_deg = rng.uniform(-45.0, 45.0)
    return _filter(x_3HW, motion_kernel(radius * s, sigma * s, angle_deg), "replicate")


def zoom_factors(arange_args: tuple) -> np.ndarray:
    """ImageNet-C's zoom factors, ``np.arange(*arange_args)`` as published (severity 1 gets 12 factors,
    1.00..1.11: floating point lets arange include its stop there)."""
    return np.arange(*arange_args)


def zoom_blur(x_3HW: torch.Tensor, arange_args: tuple, rng: np.random.Generator) -> torch.Tensor:
    """Mean of the image and its zooms by each factor about the image centre (bilinear): a camera moving along
    its optical axis during the exposure. ImageNet-C zooms a centre crop of a square image, the same thing."""
    out_3HW = x_3HW.clone()
    for factor in zoom_factors(arange_args):
        zoomed = kornia.geometry.transform.scale(
            x_3HW[None], torch.tensor([float(factor)], device=x_3HW.device), padding_mode="border"
        )
        out_3HW += zoomed[0]
    return out_3HW / (len(zoom_factors(arange_args)) + 1)


def gaussian_blur(x_3HW: torch.Tensor, sigma: float, rng: np.random.Generator) -> torch.Tensor:
    """Gaussian blur (sigma in px at 224), truncated at 4 sigma with edge pixels repeated, as
    skimage.filters.gaussian, which ImageNet-C calls."""
    sigma *= pixel_scale(*x_3HW.shape[-2:])
    size = 2 * int(4 * sigma + 0.5) + 1
    return kornia.filters.gaussian_blur2d(x_3HW[None], size, (sigma, sigma), border_type="replicate")[0]


# ---- weather ----------------------------------------------------------------------------------------------


def brightness(x_3HW: torch.Tensor, delta: float, rng: np.random.Generator) -> torch.Tensor:
    """HSV value + ``delta`` (clipped to 1), hue and saturation kept."""
    hsv_13HW = kornia.color.rgb_to_hsv(x_3HW[None])
    hsv_13HW[:, 2] = (hsv_13HW[:, 2] + delta).clamp(0.0, 1.0)
    return kornia.color.hsv_to_rgb(hsv_13HW)[0]


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A periodic size x size diamond-square height map scaled to [0, 1] (ImageNet-C's fog; size a power of 2).

    Each octave sets the centres of the squares of the current grid (mean of 4 corners), then the midpoints
    of their edges (mean of 2 corners and 2 centres), each plus ``w * U(-w, w)``; w starts at 100 and is divided
    by ``decay`` per octave, so a smaller decay gives a rougher map.
    """
    assert size >= 2 and size & (size - 1) == 0, size
    map_SS = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = map_SS[0::step, 0::step]
        right, below = np.roll(corners, -1, axis=1), np.roll(corners, -1, axis=0)
        centres = (corners + right + below + np.roll(below, -1, axis=1)) / 4
        map_SS[half::step, half::step] = centres + wibble * rng.uniform(-wibble, wibble, centres.shape)
        centres = map_SS[half::step, half::step]
        top = (corners + right + centres + np.roll(centres, 1, axis=0)) / 4  # midpoints of the top edges
        map_SS[0::step, half::step] = top + wibble * rng.uniform(-wibble, wibble, top.shape)
        left = (corners + below + centres + np.roll(centres, 1, axis=1)) / 4  # midpoints of the left edges
        map_SS[half::step, 0::step] = left + wibble * rng.uniform(-wibble, wibble, left.shape)
        step, wibble = half, wibble / decay
    map_SS -= map_SS.min()
    return map_SS / map_SS.max()


def fog_layer(height: int, width: int, decay: float, rng: np.random.Generator) -> torch.Tensor:
    """The fog of an HxW image: a plasma fractal on the image's grid at 224 px short side (the top-left crop of
    a map of the next power of two, at least 256, as ImageNet-C's [:224, :224] of 256), resized to HxW."""
    s = pixel_scale(height, width)
    grid_h, grid_w = max(1, round(height / s)), max(1, round(width / s))
    size = max(256, 1 << (max(grid_h, grid_w) - 1).bit_length())
    fog_hw = torch.from_numpy(plasma_fractal(size, decay, rng)[:grid_h, :grid_w]).float()
    if (grid_h, grid_w) == (height, width):
        return fog_hw
    return F.interpolate(
        fog_hw[None, None], size=(height, width), mode="bilinear", align_corners=False, antialias=height < grid_h
    )[0, 0]


def fog(x_3HW: torch.Tensor, param: tuple, rng: np.random.Generator) -> torch.Tensor:
    """(x + thickness * fog) * peak / (peak + thickness), ``peak`` the image maximum: fog added, contrast lost."""
    thickness, decay = param
    fog_HW = fog_layer(*x_3HW.shape[-2:], decay, rng).to(x_3HW.device)
    peak = x_3HW.max()
    return (x_3HW + thickness * fog_HW) * peak / (peak + thickness)


# ---- digital ----------------------------------------------------------------------------------------------


def contrast(x_3HW: torch.Tensor, factor: float, rng: np.random.Generator) -> torch.Tensor:
    """Deviations from each channel's mean scaled by ``factor``."""
    mean_311 = x_3HW.mean(dim=(1, 2), keepdim=True)
    return (x_3HW - mean_311) * factor + mean_311


def pixelate(x_3HW: torch.Tensor, factor: float, rng: np.random.Generator) -> torch.Tensor:
    """PIL BOX resize to ``factor`` of the size (truncated to whole pixels), then BOX back to the full size."""
    image = _to_pil(x_3HW)
    width, height = image.size
    small = image.resize((max(1, int(width * factor)), max(1, int(height * factor))), Image.BOX)
    return _from_pil(small.resize((width, height), Image.BOX), x_3HW)


def jpeg_compression(x_3HW: torch.Tensor, quality: int, rng: np.random.Generator) -> torch.Tensor:
    """A PIL JPEG encode and decode at ``quality``."""
    buffer = io.BytesIO()
    _to_pil(x_3HW).save(buffer, format="JPEG", quality=quality)
    return _from_pil(Image.open(buffer), x_3HW)


_AT_224 = "px at 224, scaled by min(H, W)/224"
CORRUPTIONS: dict[str, CorruptionSpec] = {
    spec.name: spec
    for spec in (
        CorruptionSpec(
            "gaussian_noise",
            "noise",
            (0.08, 0.12, 0.18, 0.26, 0.38),
            gaussian_noise,
            "sigma of the noise added to intensities in [0, 1]",
            random=True,
        ),
        CorruptionSpec(
            "shot_noise", "noise", (60, 25, 12, 5, 3), shot_noise, "photons of a white pixel (Poisson)", random=True
        ),
        CorruptionSpec(
            "impulse_noise",
            "noise",
            (0.03, 0.06, 0.09, 0.17, 0.27),
            impulse_noise,
            "fraction of values set to 0 or 1",
            random=True,
        ),
        CorruptionSpec(
            "defocus_blur",
            "blur",
            ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
            defocus_blur,
            f"(disk radius, anti-alias sigma), {_AT_224}",
        ),
        CorruptionSpec(
            "motion_blur",
            "blur",
            ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
            motion_blur,
            f"(radius, sigma) of ImageMagick's motion blur, {_AT_224}; angle U(-45, 45) deg",
            random=True,
        ),
        CorruptionSpec(
            "zoom_blur",
            "blur",
            ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
            zoom_blur,
            "zoom factors, np.arange(start, stop, step)",
        ),
        CorruptionSpec(
            "fog",
            "weather",
            ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
            fog,
            f"(thickness, plasma decay); fractal grid {_AT_224}",
            random=True,
        ),
        CorruptionSpec(
            "brightness", "weather", (0.1, 0.2, 0.3, 0.4, 0.5), brightness, "added to the HSV value in [0, 1]"
        ),
        CorruptionSpec(
            "contrast", "digital", (0.4, 0.3, 0.2, 0.1, 0.05), contrast, "factor on deviations from the channel mean"
        ),
        CorruptionSpec(
            "pixelate",
            "digital",
            (0.6, 0.5, 0.4, 0.3, 0.25),
            pixelate,
            "size of the downsampled image, fraction of the original",
        ),
        CorruptionSpec("jpeg_compression", "digital", (25, 18, 15, 10, 7), jpeg_compression, "JPEG quality"),
        CorruptionSpec(
            "speckle_noise",
            "noise",
            (0.15, 0.2, 0.35, 0.45, 0.6),
            speckle_noise,
            "sigma of the multiplicative noise",
            random=True,
            extra=True,
        ),
        CorruptionSpec("gaussian_blur", "blur", (1, 2, 3, 4, 6), gaussian_blur, f"sigma, {_AT_224}", extra=True),
    )
}


# ---- the corruption of a dataset --------------------------------------------------------------------------


def _valid_names() -> str:
    return "all, " + ", ".join(CORRUPTIONS)


def _check_image(img_3HW: torch.Tensor) -> None:
    if (
        not isinstance(img_3HW, torch.Tensor)
        or img_3HW.dtype != torch.uint8
        or img_3HW.dim() != 3
        or img_3HW.shape[0] != 3
    ):
        described = (
            f"{img_3HW.dtype} tensor of shape {tuple(img_3HW.shape)}"
            if isinstance(img_3HW, torch.Tensor)
            else type(img_3HW).__name__
        )
        raise TypeError(f"corruptions take a uint8 RGB tensor 3xHxW, got a {described}")


def _rng(seed: int, name: str, severity: int, key: str) -> np.random.Generator:
    """The generator of one image's draws: a stable hash (not Python's salted hash()) of what fixes them."""
    digest = hashlib.sha256(f"{seed}\0{name}\0{severity}\0{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


@dataclass(frozen=True)
class Corruption:
    """``name`` at ``severity`` (0: the clean image), called as ``corruption(img_3HW, key)`` with a decoded
    uint8 RGB image and its path as in the label CSV (what :class:`datasets.dataset.CameraPoseDataset` does);
    the result is a deterministic function of (image, name, severity, seed, key). Severity 0 returns the input
    tensor itself."""

    name: str
    severity: int
    seed: int = 0

    def __post_init__(self):
        if self.name not in CORRUPTIONS:
            raise UserError(f"unknown corruption {printable(self.name)!r}; valid: {', '.join(CORRUPTIONS)}")
        if self.severity not in range(len(SEVERITIES) + 1):
            raise UserError(
                f"corruption severity must be 0 (clean) or one of 1, 2, 3, 4, 5, got {printable(self.severity)}"
            )

    @property
    def spec(self) -> CorruptionSpec:
        return CORRUPTIONS[self.name]

    @property
    def label(self) -> str:
        """``NAME@SEVERITY`` (``gaussian_noise@3``), or ``clean`` at severity 0."""
        return "clean" if self.severity == 0 else f"{self.name}@{self.severity}"

    def __call__(self, img_3HW: torch.Tensor, key: str) -> torch.Tensor:
        _check_image(img_3HW)
        if self.severity == 0:
            return img_3HW
        rng = _rng(self.seed, self.name, self.severity, key)
        return to_uint8(self.spec.fn(img_3HW.float() / 255.0, self.spec.params[self.severity - 1], rng))


def corrupt(img_3HW: torch.Tensor, name: str, severity: int, key: str, seed: int = 0) -> torch.Tensor:
    """``Corruption(name, severity, seed)(img_3HW, key)``."""
    return Corruption(name, severity, seed)(img_3HW, key)


def psnr(a_3HW: torch.Tensor, b_3HW: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of one shape; inf when they are equal."""
    if a_3HW.shape != b_3HW.shape:
        raise ValueError(f"psnr of images of different shapes {tuple(a_3HW.shape)} and {tuple(b_3HW.shape)}")
    mse = (a_3HW.double() - b_3HW.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _split(text: str) -> list:
    return list(dict.fromkeys(part.strip().lower() for part in str(text).split(",") if part.strip()))


def parse_corruptions(text: str) -> list[str]:
    """``"all"`` -> every name, in ``CORRUPTIONS`` order; ``"fog,contrast"`` -> those (repeats dropped)."""
    names = _split(text)
    if "all" in names:
        return list(CORRUPTIONS)
    unknown = [name for name in names if name not in CORRUPTIONS]
    if unknown or not names:
        what = f"unknown corruption(s) {printable(', '.join(unknown))}" if unknown else "no corruption named"
        raise UserError(f"{what}; valid: {_valid_names()}")
    return names


def parse_severities(text: str) -> list[int]:
    """``"1,3,5"`` -> [1, 3, 5] (repeats dropped); ``"all"`` -> [1, 2, 3, 4, 5]."""
    parts = _split(text)
    if parts == ["all"]:
        return list(SEVERITIES)
    valid = [part for part in parts if part in {str(s) for s in SEVERITIES}]
    if not parts or len(valid) != len(parts):
        raise UserError(
            f"severities must be comma-separated values from 1, 2, 3, 4, 5 (or all), got {printable(text)!r}"
        )
    return [int(part) for part in valid]


def _png_path(img_path: str) -> str:
    """``img_path`` with its suffix replaced by .png, separators kept as written."""
    return os.path.splitext(img_path)[0] + ".png"


def _output_plan(img_paths: Sequence[str], dataset_root: Path, out_root: Path) -> dict:
    """img_path -> the PNG path relative to ``out_root``; a UserError for a path that would leave ``out_root``,
    replace its source image, or collide with another image's PNG."""
    plan, owners = {}, {}
    out_resolved = out_root.resolve()
    for img_path in dict.fromkeys(img_paths):
        target = (out_root / _png_path(img_path)).resolve()
        if not target.is_relative_to(out_resolved):
            raise UserError(
                f"img_path {printable(img_path)} leaves the dataset root: its copy would be written outside {out_root}"
            )
        if target == (dataset_root / img_path).resolve():
            raise UserError(
                f"the copy of {printable(img_path)} would replace the image itself: give an OUT_ROOT "
                f"other than the dataset root"
            )
        if target in owners:
            raise UserError(f"{printable(owners[target])} and {printable(img_path)} would both be written to {target}")
        owners[target] = img_path
        plan[img_path] = _png_path(img_path)
    return plan


def _write_png(path: Path, img_3HW: torch.Tensor) -> None:
    hwc = img_3HW.permute(1, 2, 0).contiguous().numpy()
    atomic_write_with(path, lambda tmp: Image.fromarray(hwc).save(tmp, format="PNG"))


def write_corrupted_copies(
    labels_csv: PathLike, dataset_root: PathLike, out_root: PathLike, corruption: Corruption
) -> Path:
    """Write every image of ``labels_csv`` (paths relative to ``dataset_root``), corrupted, as a lossless PNG
    at the same relative path under ``out_root`` with the suffix .png, and a copy of the label CSV whose
    img_path points to the PNGs (``out_root/<labels file name>``, ``out_root`` being its dataset root).
    Returns the new CSV's path. Every file is written atomically."""
    labels_csv, dataset_root, out_root = Path(labels_csv), Path(dataset_root), Path(out_root)
    labels = read_labels(labels_csv, dataset_root=dataset_root)
    new_csv = out_root / labels_csv.name
    if new_csv.resolve() == labels_csv.resolve():
        raise UserError(f"the corrupted label CSV would replace {labels_csv}: give another OUT_ROOT")
    plan = _output_plan(labels["img_path"].tolist(), dataset_root, out_root)
    check_output_dir(out_root, "OUT_ROOT")
    for img_path, png_path in progress_bar(plan.items(), desc=corruption.label, unit="image", total=len(plan)):
        _write_png(out_root / png_path, corruption(load_image_uint8(dataset_root / img_path), img_path))
    raw = read_labels_csv(labels_csv)[LABEL_COLUMNS].apply(lambda column: column.astype(str).str.strip())
    raw["img_path"] = raw["img_path"].map(plan)
    atomic_write_text(new_csv, label_io.format_label_csv(raw.itertuples(index=False, name=None)))
    logger.info("wrote %d %s images and %s", len(plan), corruption.label, new_csv)
    return new_csv


# ---- command line -----------------------------------------------------------------------------------------


def format_params(param: object) -> str:
    return "(" + ", ".join(f"{v:g}" for v in param) + ")" if isinstance(param, tuple) else f"{param:g}"


def format_table() -> str:
    """The corruptions by family, each with its parameter's meaning and its five published values."""
    lines = []
    for family in FAMILIES:
        lines.append(f"{family}:")
        for spec in (s for s in CORRUPTIONS.values() if s.family == family):
            notes = ", ".join(n for n, on in (("random", spec.random), ("ImageNet-C extra", spec.extra)) if on)
            lines.append(f"  {spec.name:<17} {spec.meaning}" + (f" [{notes}]" if notes else ""))
            lines.append(" " * 20 + "  ".join(f"{sev}: {format_params(p)}" for sev, p in zip(SEVERITIES, spec.params)))
    lines.append(f"parameters: {SOURCE}; severity 0 is the clean image")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.corruptions", description="ImageNet-C-style corruptions of camera-pose test images."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print the corruptions, their families and parameter tables")
    write = commands.add_parser(
        "write", help="write a label CSV's images, corrupted, as PNGs with a label CSV beside them"
    )
    write.add_argument("labels_csv", help="label CSV whose images to corrupt")
    write.add_argument("dataset_root", help="folder the CSV's img_path values are relative to")
    write.add_argument("out_root", help="output folder: the PNGs at the same relative paths, and the new CSV")
    write.add_argument("--corruption", required=True, metavar="NAME", help=f"one of {', '.join(CORRUPTIONS)}")
    write.add_argument("--severity", required=True, metavar="N", help="1 (mild) to 5")
    write.add_argument(
        "--seed", type=int, default=0, help="seed of the random draws, which it fixes per image (default 0)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        if args.command == "list":
            print(format_table())
            return 0
        setup_logging()
        severities = parse_severities(args.severity)
        if len(severities) != 1:
            raise UserError(f"--severity takes one value from 1 to 5, got {printable(args.severity)!r}")
        corruption = Corruption(args.corruption.strip().lower(), severities[0], args.seed)
        new_csv = write_corrupted_copies(args.labels_csv, args.dataset_root, args.out_root, corruption)
        print(f"wrote {corruption.label} copies and {new_csv}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
