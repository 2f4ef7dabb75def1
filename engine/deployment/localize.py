"""Localize images from Python: a trained checkpoint in, camera poses out.

    from engine.deployment.localize import Localizer
    loc = Localizer.from_checkpoint("run/hyperpose_final.pth")      # device="auto"
    poses = loc.predict(["a.png", "b.png"])                          # or PIL images, arrays, a tensor batch
    poses.positions, poses.quaternions                               # N x 3 metres, N x 4 unit (w, x, y, z)

Our checkpoints carry everything needed: the model name, the effective config (crop and resize sizes
included) and the scene map. A bare reference state_dict needs the model name (guessed from its keys when
not given) and a config; a multi-scene one also needs the scene names, or ``num_scenes`` in the config.

Preprocessing is the test-time transform of training (``datasets.transforms.build_transform``): resize the
short side, centre crop, ImageNet normalisation. Poses follow the label CSV conventions of the data the model
was trained on (``datasets.labels``): t the camera centre in metres, q scalar-first, here of unit norm.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from datasets.dataset import load_image_uint8
from datasets.transforms import build_transform
from models.config import load_config, validate_config
from models.loading import check_compatible, load_checkpoint, load_model
from models.registry import canonical_model_name, get_spec
from util.device import select_device
from util.errors import UserError

DEFAULT_BATCH_SIZE = 32


@dataclass
class Poses:
    """Poses of N images: ``positions`` N x 3 (metres), ``quaternions`` N x 4 (unit, w first).

    Multi-scene models also give the predicted scene per image: its id, its name (the training scene map's,
    or ``None`` when the checkpoint has none) and its probability.
    """

    positions: np.ndarray
    quaternions: np.ndarray
    scene_ids: np.ndarray | None = None
    scene_names: list | None = None
    scene_probs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def pose_N7(self) -> np.ndarray:
        """``[t, q]`` per row, the layout of the label CSVs' pose columns."""
        return np.concatenate([self.positions, self.quaternions], axis=1)


@dataclass
class LoadedModel:
    """A model ready for inference and what it was built from."""

    model: torch.nn.Module
    model_name: str
    config: dict
    scene_map: dict  # scene name -> id; empty when unknown (reference multi-scene state_dict without names)
    num_scenes: int  # 0 for single-scene models


def unit_quaternions(pose_B7: torch.Tensor) -> torch.Tensor:
    """``pose_B7`` with its quaternion part scaled to unit norm (q of norm 0 stays 0, never NaN)."""
    t_B3, q_B4 = pose_B7[:, :3], pose_B7[:, 3:]
    return torch.cat([t_B3, q_B4 / q_B4.norm(dim=1, keepdim=True).clamp_min(1e-12)], dim=1)


def _effective_config(model_name: str, config, ckpt: dict) -> dict:
    if config is None:
        if ckpt["format"] == "reference":
            raise UserError(
                "a bare reference state_dict does not say how the model was configured: "
                "pass config=<config.json> (and model_name=)"
            )
        return validate_config(model_name, {k: v for k, v in ckpt["config"].items() if k != "model_name"})
    if isinstance(config, (str, os.PathLike)):
        return load_config(config, model_name)
    if isinstance(config, Mapping):
        return validate_config(model_name, config)
    raise UserError(f"config: expected a path to a JSON config or a dict, got {type(config).__name__}")


def load_for_inference(
    checkpoint_path: str | os.PathLike,
    *,
    model_name: str | None = None,
    config: None | str | os.PathLike | Mapping = None,
    scenes: Sequence[str] | None = None,
) -> LoadedModel:
    """Build the checkpoint's model in eval mode on the CPU and load its weights strictly.

    ``config`` (a JSON path or a dict) replaces the checkpoint's own config, except for the architecture
    keys, where the checkpoint wins (``models.loading.reconcile_config``, with a warning listing any
    difference); ``scenes`` names the scenes of a reference multi-scene state_dict (sorted, as the
    reference numbered them).
    """
    ckpt = load_checkpoint(checkpoint_path)
    stored = ckpt.get("model_name")
    if model_name is None:
        if stored in (None, "unknown"):
            raise UserError(f"cannot tell which model {checkpoint_path} holds: pass model_name=")
        model_name = stored
    model_name = canonical_model_name(model_name)
    check_compatible(ckpt, model_name, checkpoint_path)  # the model first, before its config is read
    cfg = _effective_config(model_name, config, ckpt)

    def named_scenes(n_scenes: int | None) -> dict:
        scene_map = {s: i for i, s in enumerate(sorted(scenes))} if scenes else {}
        if scene_map and n_scenes and len(scene_map) != n_scenes:
            raise UserError(f"{checkpoint_path} has {n_scenes} scene heads but {len(scene_map)} scene names were given")
        return scene_map

    # The weights' model: the checkpoint's architecture keys; for a reference state_dict 8 heads and the scene
    # count of its weights; the scene map the checkpoint records, else the sorted scene names given.
    loaded = load_model(checkpoint_path, model_name, cfg, ckpt=ckpt, scene_map_for=named_scenes)
    num_scenes = loaded.config["num_scenes"] if get_spec(model_name).multi_scene else 0
    return LoadedModel(loaded.model.eval(), model_name, loaded.config, loaded.scene_map, num_scenes)


def _as_image_3HW(item, position: int) -> torch.Tensor:
    """One image as a uint8 or float tensor 3xHxW, ready for the test transform."""
    if isinstance(item, (str, os.PathLike)):
        return load_image_uint8(item)
    if isinstance(item, Image.Image):
        return torch.from_numpy(np.asarray(item.convert("RGB")).copy()).permute(2, 0, 1)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise UserError(
                f"image {position}: expected a uint8 array H x W x 3 (RGB), got {item.dtype} "
                f"{'x'.join(map(str, item.shape))}"
            )
        if min(item.shape[:2]) == 0:
            raise UserError(f"image {position}: empty ({item.shape[0]} x {item.shape[1]} pixels)")
        return torch.from_numpy(np.array(item)).permute(2, 0, 1)  # a copy: the array may be read-only
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != 3:
            raise UserError(f"image {position}: expected a tensor 3 x H x W, got {tuple(item.shape)}")
        if min(item.shape[1:]) == 0:
            raise UserError(f"image {position}: empty ({item.shape[1]} x {item.shape[2]} pixels)")
        return item
    raise UserError(
        f"image {position}: expected a path, a PIL image, a uint8 H x W x 3 array or a tensor, "
        f"got {type(item).__name__}"
    )


def _check_float_range(img: torch.Tensor, what: str) -> None:
    if img.is_floating_point() and img.numel():
        lo, hi = float(img.min()), float(img.max())
        if lo < -1e-6 or hi > 1 + 1e-6 or not np.isfinite([lo, hi]).all():
            raise UserError(
                f"{what}: float images must hold RGB values in [0, 1], found [{lo:.3g}, {hi:.3g}] "
                f"(pass uint8 for 0-255 values; normalisation is done here)"
            )


class Localizer:
    """A model with its preprocessing, for localizing images: :meth:`from_checkpoint`, then :meth:`predict`."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "auto"):
        self.model_name = loaded.model_name
        self.config = loaded.config
        self.scene_map = loaded.scene_map
        self.num_scenes = loaded.num_scenes
        self.id_to_scene = {i: s for s, i in loaded.scene_map.items()}
        self.device = (
            device if isinstance(device, torch.device) else select_device(device, self.config.get("device_id"))
        )
        self.model = loaded.model.to(self.device, memory_format=torch.channels_last).eval()
        self.transform = build_transform(self.config, train=False)
        self.crop_size = int(self.config["image_crop"])

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        *,
        model_name: str | None = None,
        config: None | str | os.PathLike | Mapping = None,
        scenes: Sequence[str] | None = None,
    ) -> Localizer:
        """Load a checkpoint (ours, or a reference state_dict with ``model_name`` and ``config``)."""
        return cls(load_for_inference(path, model_name=model_name, config=config, scenes=scenes), device)

    @property
    def multi_scene(self) -> bool:
        return self.num_scenes > 0

    @staticmethod
    def _as_items(images) -> torch.Tensor | list:
        """A B x 3 x H x W tensor as it is; anything else as a list of single images."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            if images.shape[1] != 3 or min(images.shape[2:]) == 0:
                raise UserError(f"image batch: expected B x 3 x H x W with H, W >= 1, got {tuple(images.shape)}")
            return images
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return list(images)  # N x H x W x 3 uint8
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
            return [images]
        if not isinstance(images, Iterable):
            raise UserError(
                f"images: expected an image, a list of images or a tensor batch, got {type(images).__name__}"
            )
        items = list(images)
        if not items:
            raise UserError("images: nothing to localize (empty list)")
        return items

    def preprocess(self, images, first_index: int = 0) -> torch.Tensor:
        """Images in any accepted form -> the normalised float batch B x 3 x crop x crop the model takes."""
        items = self._as_items(images)
        if isinstance(items, torch.Tensor):
            _check_float_range(items, "image batch")
            return self.transform(items.cpu())
        batch = []
        for k, item in enumerate(items, start=first_index):
            img_3HW = _as_image_3HW(item, k)
            _check_float_range(img_3HW, f"image {k}")
            batch.append(self.transform(img_3HW.cpu()))
        return torch.stack(batch)

    @torch.no_grad()
    def predict_batch(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Preprocessed batch -> (pose_B7 with unit q, scene_logp_BS or None), on the CPU."""
        img = img_B3HW.to(self.device, memory_format=torch.channels_last)
        pose_B7, logp_BS = self.model(img)  # the most probable scene's pose for multi-scene models
        pose_B7 = unit_quaternions(pose_B7.float()).cpu()
        return pose_B7, (logp_BS.float().cpu() if logp_BS is not None else None)

    def poses_from(self, pose_N7: torch.Tensor, logp_NS: torch.Tensor | None) -> Poses:
        """Model outputs -> :class:`Poses` (scene names from the checkpoint's scene map)."""
        pose = pose_N7.numpy().astype(np.float64)
        out = Poses(positions=pose[:, :3].copy(), quaternions=pose[:, 3:].copy())
        if logp_NS is not None:
            best_logp, ids = logp_NS.max(dim=1)
            out.scene_ids = ids.numpy()
            out.scene_probs = best_logp.exp().numpy().astype(np.float64)
            out.scene_names = [self.id_to_scene.get(int(i)) for i in out.scene_ids]
        return out

    def predict(self, images, batch_size: int = DEFAULT_BATCH_SIZE) -> Poses:
        """Localize images: paths, PIL images, uint8 H x W x 3 arrays, or a float tensor batch in [0, 1]."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        items = self._as_items(images)
        poses, logps = [], []
        for start in range(0, len(items), batch_size):
            pose, logp = self.predict_batch(self.preprocess(items[start : start + batch_size], start))
            poses.append(pose)
            if logp is not None:
                logps.append(logp)
        return self.poses_from(torch.cat(poses), torch.cat(logps) if logps else None)
