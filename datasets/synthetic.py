"""Synthetic camera-pose datasets with exact poses, in the 7Scenes or Cambridge Landmarks layout.

Each scene is a textured box world (indoor room for ``7scenes``; open-sky square with building walls for
``cambridge``) with a few solid boxes and framed pictures, all textured from scikit-image's bundled sample
images and tinted per scene, so scenes look different from one another. A numpy ray caster renders it
through a pinhole camera that moves along smooth closed trajectories: 3 training sequences (by default)
and 1 test sequence per scene, all sweeping the same region along different paths. Test frames get a
controllable appearance change (``test_shift``: darker, colour cast, moved light, haze, sensor noise), the
kind of domain gap HyperPose targets. ``--test-shifts 0,0.5,1`` renders the same test poses once per
level as well (``<scene>/test_shift<level>/``, ``..._test_shift<level>.csv``): a degradation curve.

Conventions:
- World frame: metres, z up; the room spans ``[lo, hi]`` on each axis with the floor at z = 0.
- Camera: pinhole, OpenCV axes (x right, y down, z forward), ``fx = fy = 585/640 * width`` (the 7Scenes
  Kinect field of view), principal point at the image centre, pixel centres at integer + 0.5.
- ``frame-XXXXXX.pose.txt`` holds the 4x4 camera-to-world matrix ``[[R_cw, c], [0, 1]]`` (7Scenes);
  ``dataset_*.txt`` holds the camera centre ``c`` and the world-to-camera rotation ``R_cw^T`` as W P Q R
  (Cambridge). The label CSVs are built from those raw files by ``datasets.label_io``, exactly as
  ``datasets.prepare`` builds them, so the two agree byte for byte.

Output is a deterministic function of the arguments (same bytes on the same platform and library versions).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from datasets import label_io
from util.errors import UserError, run_cli
from util.logs import progress_bar, setup_logging
from util.pose import rotmat_to_quat

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

LAYOUTS = ("7scenes", "cambridge")
DEFAULT_NAMES = {"7scenes": label_io.SEVEN_SCENES, "cambridge": label_io.CAMBRIDGE_SCENES}
# 128x96 keeps 7Scenes' 4:3 at 1/5 of 640x480: cheap to render and to decode, and a demo that resizes to
# 64-96 px (random-init EfficientNet-B0 on CPU) never upsamples.
DEFAULT_SIZE = (128, 96)
DEFAULT_FRAMES_PER_SEQ = 100  # 3 train + 1 test sequences: 300 train + 100 test frames per scene
DEFAULT_TEST_SHIFT = 0.5
DEFAULT_TRAIN_SEQS = 3  # sequences 1..3 train, sequence 4 test (one test sequence per scene)
FOCAL_PER_WIDTH = 585.0 / 640.0
SUPERSAMPLING = 2  # rays per pixel along each axis, box-filtered down (anti-aliasing)
TARGET_WANDER = 0.1  # the look-at target moves over +-this fraction of the scene width
WOBBLE_DEG = (8.0, 5.0, 4.0)  # yaw, pitch, roll amplitude on top of looking at the target

# Sample images that ship inside the scikit-image wheel (no download needed).
GRAY_TEXTURES = ("brick", "grass", "gravel", "camera", "moon", "coins", "page", "text", "clock", "cell")
COLOR_TEXTURES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "retina",
    "logo",
    "motorcycle",
)

# Texture-space axes of each facing: index 2a + s is a face of axis a whose normal points along -a when
# s = 1 and +a when s = 0 (the side a ray travelling along +a / -a sees). (u axis, u sign, v axis): v is up
# on walls and u runs left to right for a viewer facing the surface, so pictures are not mirrored.
_FACE_UV = ((1, 1.0, 2), (1, -1.0, 2), (0, -1.0, 2), (0, 1.0, 2), (0, 1.0, 1), (0, 1.0, 1))
_FLOOR, _CEILING = 4, 5


@dataclass(frozen=True)
class Surface:
    """A texture tiled over a surface: ``rgb_HW3`` in [0, 1], one copy per ``tile_m`` metres."""

    rgb_HW3: np.ndarray
    tile_m: float


@dataclass(frozen=True)
class Picture:
    """A framed image on a room wall (facing index 0..3), spanning ``[u0, u1] x [v0, v1]`` metres."""

    facing: int
    u0: float
    u1: float
    v0: float
    v1: float
    rgb_HW3: np.ndarray
    frame_rgb: tuple


@dataclass
class World:
    """One scene: room bounds, surfaces, boxes, pictures, lighting and where the camera may go."""

    lo_3: np.ndarray
    hi_3: np.ndarray
    faces: list  # 6 Surfaces, by facing index (walls x-, x+, y-, y+, floor, ceiling)
    boxes_lo_M3: np.ndarray
    boxes_hi_M3: np.ndarray
    box_surfaces: list  # M Surfaces
    pictures: list = field(default_factory=list)
    open_sky: bool = False  # cambridge: no ceiling, a sky gradient instead
    light_3: np.ndarray = None  # indoor point light (world, m) or outdoor sun direction (unit)
    light_shift_3: np.ndarray = None  # where the test-time light moves (scaled by test_shift)
    cam_lo_3: np.ndarray = None  # camera centres stay inside this box
    cam_hi_3: np.ndarray = None
    yaw_centre_deg: float = 0.0


@dataclass(frozen=True)
class Appearance:
    """Per-frame photometric settings: global gain, per-channel cast, haze, noise, light offset."""

    gain: float = 1.0
    cast_3: tuple = (1.0, 1.0, 1.0)
    haze: float = 0.0
    noise_std: float = 0.0
    light_shift: float = 0.0
    noise_seed: tuple = (0,)


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in pixels (OpenCV axes)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def for_size(cls, width: int, height: int) -> Camera:
        f = FOCAL_PER_WIDTH * width
        return cls(width, height, f, f, width / 2.0, height / 2.0)


# ---- textures ---------------------------------------------------------------------------------------------


@cache
def _sample_image(name: str) -> np.ndarray:
    """A scikit-image sample image as float32 RGB in [0, 1] (grayscale contrast-stretched)."""
    import skimage.data

    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        g = img.astype(np.float32)
        lo, hi = np.percentile(g, [2, 98])
        g = np.clip((g - lo) / max(hi - lo, 1.0), 0.0, 1.0)
        return np.repeat(g[..., None], 3, axis=2)
    rgb = img[..., :3].astype(np.float32) / 255.0
    if img.shape[2] == 4:  # composite RGBA on white
        alpha = img[..., 3:].astype(np.float32) / 255.0
        rgb = rgb * alpha + (1.0 - alpha)
    return rgb


def _resized(rgb_HW3: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (never enlarge) so the longer side is at most ``max_side``: block-average by the integer part
    of the factor (cheap anti-aliasing), then bilinear to the exact size."""
    from skimage.transform import resize

    h, w = rgb_HW3.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return np.ascontiguousarray(rgb_HW3, dtype=np.float32)
    k = int(1.0 / scale)
    if k > 1:
        h, w = h // k * k, w // k * k
        rgb_HW3 = rgb_HW3[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))
    shape = (max(2, round(h * scale)), max(2, round(w * scale)), 3)
    return resize(rgb_HW3, shape, order=1, anti_aliasing=False, preserve_range=True).astype(np.float32)


def _hue_rgb(hue: float, sat: float, val: float) -> np.ndarray:
    """HSV -> RGB for one colour (hue in [0, 1))."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), dtype=np.float32)


def _tinted(gray_HW3: np.ndarray, dark_3: np.ndarray, light_3: np.ndarray) -> np.ndarray:
    """Map a grayscale texture onto a two-colour ramp (gives each scene its own palette)."""
    g = gray_HW3[..., :1]
    return dark_3 + (light_3 - dark_3) * g


# ---- scenes -----------------------------------------------------------------------------------------------


def build_world(layout: str, scene_index: int, seed: int, texels_per_m: float) -> World:
    """The deterministic world of one scene: dimensions, textures, boxes and pictures drawn from the seed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, scene_index]))
    outdoor = layout == "cambridge"
    scale = 6.0 if outdoor else 1.0  # outdoor squares are ~35 m across, rooms ~6 m
    size_3 = np.array(
        [
            rng.uniform(5.2, 7.0) * scale,
            rng.uniform(5.2, 7.0) * scale,
            rng.uniform(8.0, 14.0) if outdoor else rng.uniform(2.6, 3.2),
        ]
    )
    lo_3 = np.array([-size_3[0] / 2, -size_3[1] / 2, 0.0])
    hi_3 = np.array([size_3[0] / 2, size_3[1] / 2, size_3[2]])

    def tex_side(tile_m: float) -> int:
        return int(np.clip(texels_per_m * tile_m, 16, 1024))

    # Wall/floor/ceiling textures: a scene-specific rotation of the pool plus a random order, tinted with
    # hues spread by the golden ratio so neighbouring scene indices get clearly different palettes.
    order = np.roll(rng.permutation(len(GRAY_TEXTURES)), scene_index)
    base_hue = (0.618034 * scene_index + rng.uniform(0, 0.15)) % 1.0
    faces = []
    for facing in range(6):
        name = GRAY_TEXTURES[order[facing]]
        hue = base_hue + 0.17 * facing + rng.uniform(-0.04, 0.04)
        dark = _hue_rgb(hue, rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.3))
        light = _hue_rgb(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.1, 0.5), rng.uniform(0.75, 1.0))
        tile_m = (rng.uniform(1.2, 2.0) if facing < 4 else rng.uniform(1.5, 2.5)) * scale
        # The floor is seen from close by: up to 4x the texels (capped by the sample image's own size).
        side = tex_side(tile_m) * (4 if facing == _FLOOR and outdoor else 1)
        faces.append(Surface(_tinted(_resized(_sample_image(name), side), dark, light), tile_m))

    # Boxes: two in the front half of the room, one or two against the side walls, none where the camera goes.
    cam_lo_3 = np.array([-0.25 * size_3[0], -0.4 * size_3[1], 1.4 if outdoor else 1.1])
    cam_hi_3 = np.array([0.25 * size_3[0], -0.05 * size_3[1], 2.0 if outdoor else 1.8])
    colour_order = rng.permutation(len(COLOR_TEXTURES))
    boxes_lo, boxes_hi, box_surfaces = [], [], []
    n_side = int(rng.integers(1, 3))
    for k in range(2 + n_side):
        w, d = rng.uniform(0.5, 1.2, size=2) * scale
        h = rng.uniform(0.5, 1.6) * (4.0 if outdoor else 1.0)
        if k < 2:  # front half, left and right of centre
            x = rng.uniform(0.05, 0.35) * size_3[0] * (-1 if k == 0 else 1)
            y = rng.uniform(0.12, 0.45) * size_3[1] - d / 2
        else:  # along a side wall, outside the camera corridor
            side = -1 if (k + scene_index) % 2 else 1
            x = side * (0.5 * size_3[0] - w / 2 - 0.05 * scale)
            y = rng.uniform(-0.4, 0.3) * size_3[1]
        lo = np.array([x - w / 2, y - d / 2, 0.0])
        hi = np.array([x + w / 2, y + d / 2, h])
        lo[:2] = np.maximum(lo[:2], lo_3[:2] + 0.01)
        hi[:2] = np.minimum(hi[:2], hi_3[:2] - 0.01)
        boxes_lo.append(lo)
        boxes_hi.append(hi)
        tile_m = rng.uniform(0.6, 1.2) * scale
        rgb = _resized(_sample_image(COLOR_TEXTURES[colour_order[k]]), tex_side(tile_m))
        box_surfaces.append(Surface(rgb, tile_m))

    # Pictures on the three walls the camera faces: distinctive landmarks.
    pictures = []
    for j, facing in enumerate((0, 1, 3)):
        u_axis, u_sign, _ = _FACE_UV[facing]
        u_lo, u_hi = sorted((u_sign * lo_3[u_axis], u_sign * hi_3[u_axis]))
        width = rng.uniform(0.8, 1.4) * scale
        u0 = rng.uniform(u_lo + 0.1 * (u_hi - u_lo), u_hi - 0.1 * (u_hi - u_lo) - width)
        v0 = rng.uniform(2.0, 4.0) if outdoor else rng.uniform(1.0, 1.5)
        img = _sample_image(COLOR_TEXTURES[colour_order[(4 + j) % len(COLOR_TEXTURES)]])
        height = width * img.shape[0] / img.shape[1]
        frame = tuple(float(c) for c in _hue_rgb(rng.uniform(), 0.6, 0.25))
        pictures.append(
            Picture(facing, u0, u0 + width, v0, v0 + height, _resized(img, tex_side(max(width, height))), frame)
        )

    if outdoor:
        azimuth, elevation = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(35, 60))
        light_3 = np.array(
            [np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)]
        )
        light_shift_3 = np.array([-light_3[1], light_3[0], 0.0])  # swing the sun sideways
    else:
        light_3 = np.array([rng.uniform(-0.2, 0.2) * size_3[0], rng.uniform(-0.1, 0.2) * size_3[1], size_3[2] - 0.3])
        light_shift_3 = np.array([rng.choice([-1.0, 1.0]) * 0.3 * size_3[0], 0.25 * size_3[1], -0.5])
    return World(
        lo_3,
        hi_3,
        faces,
        np.array(boxes_lo),
        np.array(boxes_hi),
        box_surfaces,
        pictures,
        outdoor,
        light_3,
        light_shift_3,
        cam_lo_3,
        cam_hi_3,
        float(rng.uniform(-10, 10)),
    )


# ---- trajectories -----------------------------------------------------------------------------------------


def look_rotation(yaw_rad: np.ndarray, pitch_rad: np.ndarray, roll_rad: np.ndarray) -> np.ndarray:
    """Camera-to-world rotations (N, 3, 3) of a camera looking along ``yaw`` (from +y towards +x), ``pitch``
    (up positive) with ``roll`` about its optical axis; columns are the camera x (right), y (down), z (forward)
    axes in the z-up world."""
    cy, sy, cp, sp = np.cos(yaw_rad), np.sin(yaw_rad), np.cos(pitch_rad), np.sin(pitch_rad)
    forward = np.stack([sy * cp, cy * cp, sp], axis=-1)
    right = np.stack([cy, -sy, np.zeros_like(cy)], axis=-1)  # forward x world-up, normalised
    down = np.cross(forward, right)
    cr, sr = np.cos(roll_rad)[..., None], np.sin(roll_rad)[..., None]
    right, down = cr * right + sr * down, -sr * right + cr * down
    return np.stack([right, down, forward], axis=-1)


def trajectory(world: World, scene_index: int, seq: int, n_frames: int, seed: int) -> np.ndarray:
    """Camera-to-world 4x4 matrices (N, 4, 4) of one closed, smooth sequence inside the camera region.

    A Lissajous-like loop with random integer frequencies and phases per sequence: every sequence sweeps the
    same region and orientation range, along a different path.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, scene_index, seq]))
    s = 2 * np.pi * np.arange(n_frames) / n_frames
    centre_3 = (world.cam_lo_3 + world.cam_hi_3) / 2
    half_3 = (world.cam_hi_3 - world.cam_lo_3) / 2

    def wave(amplitude: float) -> np.ndarray:
        k1, k2 = rng.integers(1, 4), rng.integers(2, 6)
        p1, p2 = rng.uniform(0, 2 * np.pi, size=2)
        return amplitude * (0.85 * np.sin(k1 * s + p1) + 0.15 * np.sin(k2 * s + p2))

    centre_N3 = np.stack([centre_3[a] + wave(half_3[a] * rng.uniform(0.8, 1.0)) for a in range(3)], axis=-1)
    # The camera looks roughly at a target in the front half of the scene (as a person scanning a room
    # does): orientation follows position, plus some yaw/pitch/roll wobble.
    size_3 = world.hi_3 - world.lo_3
    target_N3 = np.stack(
        [
            wave(TARGET_WANDER * size_3[0]),
            0.25 * size_3[1] + wave(0.5 * TARGET_WANDER * size_3[1]),
            world.cam_lo_3[2] + (3.0 if world.open_sky else 0.0) + wave(0.2),
        ],
        axis=-1,
    )
    look_N3 = target_N3 - centre_N3
    yaw = np.arctan2(look_N3[:, 0], look_N3[:, 1]) + np.deg2rad(world.yaw_centre_deg + wave(WOBBLE_DEG[0]))
    pitch = np.arctan2(look_N3[:, 2], np.hypot(look_N3[:, 0], look_N3[:, 1])) + np.deg2rad(wave(WOBBLE_DEG[1]))
    roll = np.deg2rad(wave(WOBBLE_DEG[2]))
    T = np.zeros((n_frames, 4, 4))
    T[:, :3, :3] = look_rotation(yaw, pitch, roll)
    T[:, :3, 3] = centre_N3
    T[:, 3, 3] = 1.0
    return T


# ---- rendering --------------------------------------------------------------------------------------------


def _bilinear(rgb_HW3: np.ndarray, x_N: np.ndarray, y_N: np.ndarray, wrap: bool) -> np.ndarray:
    """Bilinear texture lookup (N, 3) at continuous texel coordinates (texel centres at integer + 0.5)."""
    h, w = rgb_HW3.shape[:2]
    flat = rgb_HW3.reshape(h * w, 3)
    x, y = x_N - 0.5, y_N - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32)[:, None], (y - y0).astype(np.float32)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    if wrap:
        x0, y0 = x0 % w, y0 % h
        x1, y1 = np.where(x0 == w - 1, 0, x0 + 1), np.where(y0 == h - 1, 0, y0 + 1)
    else:
        x1, y1 = np.clip(x0 + 1, 0, w - 1), np.clip(y0 + 1, 0, h - 1)
        x0, y0 = np.clip(x0, 0, w - 1), np.clip(y0, 0, h - 1)
    row0, row1 = y0 * w, y1 * w
    top = flat.take(row0 + x0, axis=0) * (1 - fx) + flat.take(row0 + x1, axis=0) * fx
    bottom = flat.take(row1 + x0, axis=0) * (1 - fx) + flat.take(row1 + x1, axis=0) * fx
    return top * (1 - fy) + bottom * fy


def _camera_rays(camera: Camera, cam_to_world_44: np.ndarray, supersampling: int) -> np.ndarray:
    """World ray directions (3, N) through sub-pixel centres, row-major, with camera-z component 1."""
    s = supersampling
    xs = (np.arange(camera.width * s) + 0.5) / s
    ys = (np.arange(camera.height * s) + 0.5) / s
    x_cam = np.broadcast_to(((xs - camera.cx) / camera.fx)[None, :], (ys.size, xs.size)).ravel()
    y_cam = np.broadcast_to(((ys - camera.cy) / camera.fy)[:, None], (ys.size, xs.size)).ravel()
    R = cam_to_world_44[:3, :3]
    # Written out rather than a matmul so that no BLAS kernel choice can change the bits.
    d_3N = np.stack([x_cam * R[a, 0] + y_cam * R[a, 1] + R[a, 2] for a in range(3)])
    return np.where(d_3N == 0.0, 1e-12, d_3N)


def _index_of_min3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Element-wise index (0, 1, 2) of the smallest of three arrays, the first one on ties."""
    return np.where((a <= b) & (a <= c), 0, np.where(b <= c, 1, 2))


def _intersect(world: World, origin_3: np.ndarray, d_3N: np.ndarray) -> tuple:
    """Nearest hit of each ray: distance t_N, hit axis_N, surface_N (0..5 room facings, 6+m box m), on_box_N.

    Arrays are axis-first ((3, N) and (M, N)) so every step is an element-wise op on long contiguous rows.
    """
    n = d_3N.shape[1]
    inv_3N = 1.0 / d_3N
    positive_3N = d_3N > 0
    cols_N = np.arange(n)

    # Room interior: a ray leaves through the nearest of the three faces it is heading for.
    t_exit = [
        np.where(positive_3N[a], world.hi_3[a] - origin_3[a], world.lo_3[a] - origin_3[a]) * inv_3N[a] for a in range(3)
    ]
    axis_N = _index_of_min3(*t_exit)
    t_N = np.minimum(np.minimum(t_exit[0], t_exit[1]), t_exit[2])
    surface_N = 2 * axis_N + positive_3N[axis_N, cols_N]
    if len(world.boxes_lo_M3) == 0:
        return t_N, axis_N, surface_N, np.zeros(n, dtype=bool)

    # Solid boxes, slab test for all boxes at once.
    enter, leave = [], []
    for a in range(3):
        t1_MN = (world.boxes_lo_M3[:, a, None] - origin_3[a]) * inv_3N[a]
        t2_MN = (world.boxes_hi_M3[:, a, None] - origin_3[a]) * inv_3N[a]
        enter.append(np.minimum(t1_MN, t2_MN))
        leave.append(np.maximum(t1_MN, t2_MN))
    t_near_MN = np.maximum(np.maximum(enter[0], enter[1]), enter[2])
    t_far_MN = np.minimum(np.minimum(leave[0], leave[1]), leave[2])
    t_box_MN = np.where((t_near_MN <= t_far_MN) & (t_near_MN > 0), t_near_MN, np.inf)
    box_N = np.zeros(n, dtype=np.int64)
    t_box_N = t_box_MN[0].copy()
    for m in range(1, t_box_MN.shape[0]):
        closer = t_box_MN[m] < t_box_N
        box_N[closer] = m
        t_box_N[closer] = t_box_MN[m, closer]
    on_box_N = t_box_N < t_N
    # The entry face of a box is on the axis whose slab is entered last.
    e0, e1, e2 = (-enter[a][box_N, cols_N] for a in range(3))
    box_axis_N = _index_of_min3(e0, e1, e2)
    t_N = np.where(on_box_N, t_box_N, t_N)
    axis_N = np.where(on_box_N, box_axis_N, axis_N)
    surface_N = np.where(on_box_N, 6 + box_N, surface_N)
    return t_N, axis_N, surface_N, on_box_N


def render(
    world: World,
    camera: Camera,
    cam_to_world_44: np.ndarray,
    appearance: Appearance = Appearance(),
    supersampling: int = SUPERSAMPLING,
) -> np.ndarray:
    """Ray-cast one view: uint8 RGB image (H, W, 3). Fully vectorised over pixels (no per-pixel Python)."""
    origin_3 = np.asarray(cam_to_world_44, dtype=np.float64)[:3, 3]
    d_3N = _camera_rays(camera, cam_to_world_44, supersampling)
    n = d_3N.shape[1]
    cols_N = np.arange(n)
    t_N, axis_N, surface_N, on_box_N = _intersect(world, origin_3, d_3N)
    positive_N = d_3N[axis_N, cols_N] > 0
    facing_N = 2 * axis_N + positive_N

    point_3N = origin_3[:, None] + t_N * d_3N
    uv_table = np.array(_FACE_UV)
    u_N = point_3N[uv_table[facing_N, 0].astype(np.int64), cols_N] * uv_table[facing_N, 1]
    v_N = point_3N[uv_table[facing_N, 2].astype(np.int64), cols_N]

    albedo_N3 = np.zeros((n, 3), dtype=np.float32)
    for index, surf in enumerate(world.faces + world.box_surfaces):
        sel = np.nonzero(surface_N == index)[0]
        if sel.size == 0:
            continue
        h, w = surf.rgb_HW3.shape[:2]
        albedo_N3[sel] = _bilinear(surf.rgb_HW3, u_N[sel] / surf.tile_m * w, -v_N[sel] / surf.tile_m * h, wrap=True)
    for pic in world.pictures:
        border = 0.06 * (pic.u1 - pic.u0)
        sel = np.nonzero(
            (surface_N == pic.facing)
            & (u_N > pic.u0 - border)
            & (u_N < pic.u1 + border)
            & (v_N > pic.v0 - border)
            & (v_N < pic.v1 + border)
        )[0]
        if sel.size == 0:
            continue
        albedo_N3[sel] = pic.frame_rgb
        inner = sel[(u_N[sel] > pic.u0) & (u_N[sel] < pic.u1) & (v_N[sel] > pic.v0) & (v_N[sel] < pic.v1)]
        h, w = pic.rgb_HW3.shape[:2]
        albedo_N3[inner] = _bilinear(
            pic.rgb_HW3,
            (u_N[inner] - pic.u0) / (pic.u1 - pic.u0) * w,
            (pic.v1 - v_N[inner]) / (pic.v1 - pic.v0) * h,
            wrap=False,
        )

    # Lambertian shading; the normal faces the ray: -sign(d) along the hit axis.
    normal_3N = np.zeros((3, n))
    normal_3N[axis_N, cols_N] = np.where(positive_N, -1.0, 1.0)
    light_3 = world.light_3 + appearance.light_shift * world.light_shift_3
    if world.open_sky:
        sun_3 = light_3 / np.linalg.norm(light_3)
        shade_N = 0.45 + 0.65 * np.maximum(
            normal_3N[0] * sun_3[0] + normal_3N[1] * sun_3[1] + normal_3N[2] * sun_3[2], 0.0
        )
    else:
        to_light_3N = light_3[:, None] - point_3N
        dist_N = np.sqrt(to_light_3N[0] ** 2 + to_light_3N[1] ** 2 + to_light_3N[2] ** 2)
        cos_N = np.maximum((normal_3N * to_light_3N).sum(axis=0) / dist_N, 0.0)
        shade_N = 0.35 + 0.95 * cos_N / (1.0 + (dist_N / 4.0) ** 2)
    colour_N3 = albedo_N3 * shade_N[:, None].astype(np.float32)
    if world.open_sky:
        sky_N = (~on_box_N) & (surface_N == _CEILING)
        d_sky_3K = d_3N[:, sky_N]
        elevation_K = d_sky_3K[2] / np.sqrt(d_sky_3K[0] ** 2 + d_sky_3K[1] ** 2 + d_sky_3K[2] ** 2)
        horizon, zenith = np.array([0.85, 0.9, 0.95]), np.array([0.35, 0.55, 0.9])
        colour_N3[sky_N] = horizon + (zenith - horizon) * np.clip(elevation_K, 0, 1)[:, None]

    s = supersampling
    colour_hsws3 = colour_N3.reshape(camera.height, s, camera.width, s, 3)
    img_HW3 = sum(colour_hsws3[:, i, :, j] for i in range(s) for j in range(s)) / np.float32(s * s)
    img_HW3 = img_HW3 * appearance.gain * np.asarray(appearance.cast_3, dtype=np.float32)
    img_HW3 = img_HW3 * (1 - appearance.haze) + appearance.haze * np.array([0.55, 0.52, 0.5], dtype=np.float32)
    if appearance.noise_std > 0:
        noise_rng = np.random.default_rng(np.random.SeedSequence(list(appearance.noise_seed)))
        img_HW3 = img_HW3 + noise_rng.normal(0.0, appearance.noise_std, img_HW3.shape).astype(np.float32)
    return np.clip(img_HW3 * 255.0 + 0.5, 0, 255).astype(np.uint8)


def frame_appearance(seed: int, scene_index: int, seq: int, frame: int, test: bool, test_shift: float) -> Appearance:
    """Mild random lighting jitter on every frame; on test frames also the domain shift of strength S.

    The random draws do not depend on ``test_shift``, so with S = 0 test frames look like training frames.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3, scene_index, seq, frame]))
    gain = 1.0 + rng.uniform(-0.06, 0.06)
    cast = 1.0 + rng.uniform(-0.02, 0.02, size=3)
    noise_std = 0.004
    S = float(test_shift) if test else 0.0
    gain *= 1.0 - 0.45 * S
    cast = cast * np.array([1.0 + 0.3 * S, 1.0 + 0.05 * S, 1.0 - 0.3 * S])
    return Appearance(
        gain=float(gain),
        cast_3=tuple(float(c) for c in cast),
        haze=0.25 * S,
        noise_std=noise_std + 0.05 * S,
        light_shift=S,
        noise_seed=(seed, 4, scene_index, seq, frame),
    )


# ---- dataset writing --------------------------------------------------------------------------------------


def _png_bytes(img_HW3: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(img_HW3).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _write_frame(
    layout: str,
    scene: str,
    scene_dir: Path,
    prefix: str,
    seq: int,
    frame: int,
    split: str,
    png: bytes,
    cam_to_world_44: np.ndarray,
) -> tuple[tuple, list]:
    """Write one rendered frame (and, for 7Scenes, its pose file) under ``scene_dir / prefix``.

    Returns the label row and the raw split-file entry (Cambridge only; empty for 7Scenes).
    """
    base = scene_dir / prefix if prefix else scene_dir
    rel = f"{scene}/{prefix}/" if prefix else f"{scene}/"
    if layout == "7scenes":
        seq_name = label_io.seven_scenes_seq_name(seq)
        stem = label_io.seven_scenes_frame_stem(frame)
        (base / seq_name).mkdir(parents=True, exist_ok=True)
        (base / seq_name / f"{stem}.color.png").write_bytes(png)
        pose_text = label_io.format_pose_txt(cam_to_world_44)
        (base / seq_name / f"{stem}.pose.txt").write_text(pose_text)
        # Labels come from the text as written, exactly as the preparation tool reads it back.
        pose_fields = label_io.seven_scenes_pose_fields(label_io.parse_pose_txt(pose_text, stem))
        return (scene, split, seq_name, f"{rel}{seq_name}/{stem}.color.png", *pose_fields), []
    name = label_io.cambridge_frame_name(seq, frame + 1)
    (base / name).parent.mkdir(parents=True, exist_ok=True)
    (base / name).write_bytes(png)
    q_world_to_cam_4 = rotmat_to_quat(cam_to_world_44[:3, :3].T)
    values = [label_io.format_float(v) for v in cam_to_world_44[:3, 3]] + [
        label_io.format_float(v) for v in q_world_to_cam_4
    ]
    return (scene, split, f"seq{seq}", f"{rel}{name}", *values), [name] + values


def shift_label(level: float) -> str:
    """``0.25`` -> ``shift0.25``: the suffix of a shift level's test CSV and image folder."""
    return f"shift{float(level):g}"


def shift_csv_name(test_csv_name: str, level: float) -> str:
    """``..._chess_test.csv`` -> ``..._chess_test_shift0.25.csv``."""
    if not test_csv_name.endswith("_test.csv"):
        raise ValueError(f"not a test CSV name: {test_csv_name}")
    return f"{test_csv_name[: -len('.csv')]}_{shift_label(level)}.csv"


def find_shift_csvs(test_csv: PathLike) -> list[tuple[float, Path]]:
    """(level, path) of every ``<test_csv stem>_shift<level>.csv`` beside ``test_csv``, by level."""
    test_csv = Path(test_csv)
    found = []
    for path in test_csv.parent.glob(f"{test_csv.stem}_shift*.csv"):
        try:
            found.append((float(path.stem[len(test_csv.stem) + len("_shift") :]), path))
        except ValueError:
            continue
    return sorted(found)


def _write_scene(
    layout: str,
    scene: str,
    scene_index: int,
    scene_dir: Path,
    camera: Camera,
    frames_per_seq: int,
    train_seqs: int,
    test_shift: float,
    seed: int,
    progress: tqdm,
    shift_levels: Sequence[float] = (),
) -> tuple[list, dict]:
    """Render all sequences of one scene into ``scene_dir``; return its label rows and, per extra shift
    level, the rows of the test sequence rendered again at that level (under ``test_shift<level>/``)."""
    texels_per_m = camera.fx * SUPERSAMPLING / (12.0 if layout == "cambridge" else 2.0)
    world = build_world(layout, scene_index, seed, texels_per_m)
    rows = []
    split_entries = {"train": [], "test": []}
    train_numbers, test_numbers = tuple(range(1, train_seqs + 1)), (train_seqs + 1,)
    for seq in train_numbers + test_numbers:
        split = "test" if seq in test_numbers else "train"
        poses_N44 = trajectory(world, scene_index, seq, frames_per_seq, seed)
        for frame, cam_to_world_44 in enumerate(poses_N44):
            appearance = frame_appearance(seed, scene_index, seq, frame, split == "test", test_shift)
            png = _png_bytes(render(world, camera, cam_to_world_44, appearance))
            row, entry = _write_frame(layout, scene, scene_dir, "", seq, frame, split, png, cam_to_world_44)
            rows.append(row)
            if entry:
                split_entries[split].append(entry)
            progress.update(1)
    # The same test poses once per shift level: only the appearance differs.
    shifted = {}
    for level in shift_levels:
        shifted[level] = []
        for seq in test_numbers:
            for frame, cam_to_world_44 in enumerate(trajectory(world, scene_index, seq, frames_per_seq, seed)):
                appearance = frame_appearance(seed, scene_index, seq, frame, True, level)
                png = _png_bytes(render(world, camera, cam_to_world_44, appearance))
                row, _ = _write_frame(
                    layout, scene, scene_dir, f"test_{shift_label(level)}", seq, frame, "test", png, cam_to_world_44
                )
                shifted[level].append(row)
                progress.update(1)
    if layout == "7scenes":
        for split, seqs in (("train", train_numbers), ("test", test_numbers)):
            text = "".join(f"sequence{seq}\n" for seq in seqs)
            (scene_dir / label_io.SEVEN_SCENES_SPLIT_FILES[split]).write_text(text)
    else:
        for split, entries in split_entries.items():
            text = label_io.format_cambridge_split(entries)
            (scene_dir / label_io.CAMBRIDGE_SPLIT_FILES[split]).write_text(text)
    return rows, shifted


def generate(
    out_dir: PathLike,
    scenes: int = 2,
    layout: str = "7scenes",
    frames_per_seq: int = DEFAULT_FRAMES_PER_SEQ,
    size: tuple = DEFAULT_SIZE,
    test_shift: float = DEFAULT_TEST_SHIFT,
    seed: int = 0,
    names: Sequence[str] | None = None,
    train_seqs: int = DEFAULT_TRAIN_SEQS,
    test_shifts: Sequence[float] | None = None,
) -> dict:
    """Render a synthetic dataset into ``out_dir`` (raw files and label CSVs); return a summary dict.

    ``test_shifts`` with one level is ``test_shift``. With several, the test sequence is also rendered once
    per level (identical poses, only the appearance changes) under ``<scene>/test_shift<level>/``, with the
    label CSVs ``..._test_shift<level>.csv`` beside the usual ones; the raw test sequence keeps ``test_shift``.

    Each scene folder is rendered into a temporary folder inside ``out_dir`` and then swapped into place, so
    a scene folder is always complete. Label CSVs are written atomically and only when their content changes.
    """
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if names is None:
        if not 1 <= scenes <= len(DEFAULT_NAMES[layout]):
            raise UserError(
                f"--scenes must be 1..{len(DEFAULT_NAMES[layout])} for the {layout} layout "
                f"(or name them with --names), got {scenes}"
            )
        names = list(DEFAULT_NAMES[layout][:scenes])
    names = [str(n).strip() for n in names]
    if not names or any(not n or any(c in n for c in '/\\,"') or n.startswith(".") for n in names):
        raise UserError(f"scene names must be non-empty folder names without '/', ',' or quotes, got {names}")
    if len(set(names)) != len(names):
        raise UserError(f"scene names repeat: {names}")
    if not 1 <= train_seqs <= 98:
        raise UserError(f"--train-seqs must be 1..98, got {train_seqs}")
    if frames_per_seq < 2:
        raise UserError(f"--frames-per-seq must be at least 2, got {frames_per_seq}")
    width, height = (int(v) for v in size)
    if width < 8 or height < 8:
        raise UserError(f"--size must be at least 8x8, got {width}x{height}")
    levels = [float(v) for v in (test_shifts if test_shifts is not None else [])]
    if len(levels) == 1:
        test_shift, levels = levels[0], []
    if not 0.0 <= test_shift <= 1.0:
        raise UserError(f"--test-shift must be in [0, 1], got {test_shift}")
    bad = [v for v in levels if not 0.0 <= v <= 1.0]
    if bad:
        raise UserError(f"--test-shifts levels must be in [0, 1], got {bad[0]:g}")
    if len({shift_label(v) for v in levels}) != len(levels):
        raise UserError(f"--test-shifts repeats a level: {','.join(f'{v:g}' for v in levels)}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    camera = Camera.for_size(width, height)
    n_frames = len(names) * (train_seqs + 1 + len(levels)) * frames_per_seq
    rows, shifted_rows = [], {level: [] for level in levels}
    with progress_bar(total=n_frames, desc="rendering", unit="frame") as progress:
        for scene_index, scene in enumerate(names):
            staging = Path(tempfile.mkdtemp(prefix=f".{scene}.", suffix=".tmp", dir=out))
            try:
                scene_rows, shifted = _write_scene(
                    layout,
                    scene,
                    scene_index,
                    staging,
                    camera,
                    frames_per_seq,
                    train_seqs,
                    test_shift,
                    seed,
                    progress,
                    levels,
                )
                rows += scene_rows
                for level, level_rows in shifted.items():
                    shifted_rows[level] += level_rows
                _swap_into_place(staging, out / scene)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    csv_files = []
    for file_name, file_rows in label_io.group_label_files(layout, rows).items():
        label_io.write_label_csv(file_rows, out / file_name)
        csv_files.append(file_name)
    for level, level_rows in shifted_rows.items():
        for file_name, file_rows in label_io.group_label_files(layout, level_rows).items():
            if file_name.endswith("_test.csv"):
                label_io.write_label_csv(file_rows, out / shift_csv_name(file_name, level))
                csv_files.append(shift_csv_name(file_name, level))
    summary = {
        "layout": layout,
        "scenes": names,
        "seed": seed,
        "test_shift": test_shift,
        "test_shifts": levels,
        "frames_per_seq": frames_per_seq,
        "train_seqs": list(range(1, train_seqs + 1)),
        "test_seqs": [train_seqs + 1],
        "camera": {
            "model": "PINHOLE",
            "axes": "x right, y down, z forward (OpenCV)",
            "width": width,
            "height": height,
            "fx": camera.fx,
            "fy": camera.fy,
            "cx": camera.cx,
            "cy": camera.cy,
        },
        "world": "metres, z up",
        "frames": {
            scene: {split: sum(1 for r in rows if r[0] == scene and r[1] == split) for split in label_io.SPLITS}
            for scene in names
        },
        "csv_files": sorted(csv_files),
    }
    label_io.write_if_changed(out / "synthetic.json", json.dumps(summary, indent=2) + "\n")
    logger.info(
        "rendered %d frames of %d %s scene(s) at %dx%d into %s", n_frames, len(names), layout, width, height, out
    )
    return dict(summary, out_dir=str(out))


def _swap_into_place(staging: Path, target: Path) -> None:
    """Replace ``target`` by the complete folder ``staging`` (old copy moved aside first, then deleted)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _parse_size(text: str) -> tuple:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 128x96, got {text!r}") from None
    return width, height


def _parse_levels(text: str) -> list:
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0,0.5,1, got {text!r}") from None
    if not levels:
        raise argparse.ArgumentTypeError("expected at least one level")
    return levels


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Render a synthetic camera-pose dataset (7Scenes or Cambridge layout) with its label CSVs.",
    )
    parser.add_argument("out_dir", help="output folder: scene folders and label CSVs (the dataset root)")
    parser.add_argument("--scenes", type=int, default=2, help="number of scenes (first N default names)")
    parser.add_argument("--layout", choices=LAYOUTS, default="7scenes", help="raw layout and label convention")
    parser.add_argument("--frames-per-seq", type=int, default=DEFAULT_FRAMES_PER_SEQ, help="frames per sequence")
    parser.add_argument(
        "--train-seqs",
        type=int,
        default=DEFAULT_TRAIN_SEQS,
        help="training sequences per scene (one more sequence is the test sequence); more "
        "sequences cover the pose space more densely",
    )
    parser.add_argument(
        "--size", type=_parse_size, default="%dx%d" % DEFAULT_SIZE, metavar="WxH", help="image size in pixels"
    )
    parser.add_argument(
        "--test-shift",
        type=float,
        default=DEFAULT_TEST_SHIFT,
        help="appearance change of the test sequences, 0 (none) .. 1 (strong)",
    )
    parser.add_argument(
        "--test-shifts",
        type=_parse_levels,
        default=None,
        metavar="S1,S2,...",
        help="render the test sequences once per shift level as well (same poses, other "
        "appearance), written as ..._test_shift<level>.csv; one level = --test-shift",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument(
        "--names", default=None, help="comma-separated scene names (overrides --scenes), e.g. ShopFacade,KingsCollege"
    )
    args = parser.parse_args(argv)
    setup_logging()
    names = [n for n in args.names.split(",") if n.strip()] if args.names is not None else None
    summary = generate(
        args.out_dir,
        scenes=args.scenes,
        layout=args.layout,
        frames_per_seq=args.frames_per_seq,
        size=args.size,
        test_shift=args.test_shift,
        seed=args.seed,
        names=names,
        train_seqs=args.train_seqs,
        test_shifts=args.test_shifts,
    )
    for scene, counts in summary["frames"].items():
        print(f"{scene}: {counts['train']} train / {counts['test']} test frames")
    print(f"wrote {len(summary['csv_files'])} label CSVs to {summary['out_dir']}: {', '.join(summary['csv_files'])}")
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main))
