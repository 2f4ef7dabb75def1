"""Checkpoints for the inference tests: real models of the tiny configs, without a training run.

BatchNorm statistics are gathered on the given images first, so that predictions differ from image to image
(a freshly initialised model maps every image to nearly the same pose, which would hide a row mix-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from conftest import tiny_config_dict
from datasets.dataset import load_image_uint8
from datasets.transforms import build_transform
from models.backbone import new_backbone
from models.config import validate_config
from models.registry import build_model, get_spec
from util.checkpoint import save_checkpoint


def tiny_model_config(model_name: str, num_scenes: int = 0, compact_backbone: bool = False) -> dict:
    cfg = tiny_config_dict(compact_backbone=compact_backbone)
    config = validate_config(model_name, {**cfg[model_name], **cfg["general"]})
    if get_spec(model_name).multi_scene:
        config["num_scenes"] = num_scenes
    return config


def save_tiny_checkpoint(
    path: Path,
    model_name: str,
    images: Sequence[Path] = (),
    scenes: Sequence[str] = (),
    seed: int = 0,
    compact_backbone: bool = False,
) -> Path:
    """A checkpoint in our format of ``model_name`` with the tiny config; BN statistics from ``images``."""
    config = tiny_model_config(model_name, len(scenes), compact_backbone)
    torch.manual_seed(seed)
    model = build_model(model_name, config, new_backbone(config["backbone_type"]))
    if images:
        transform = build_transform(config, train=False)
        batch = torch.stack([transform(load_image_uint8(p)) for p in images])
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # cumulative average over the calibration passes
        with torch.no_grad():
            for _ in range(2):
                model(batch)
    model.eval()
    return save_checkpoint(
        path,
        model_name=model_name,
        config=config,
        model=model,
        epoch=1,
        scene_map={s: i for i, s in enumerate(sorted(scenes))},
    )


def is_multi_scene(model_name: str) -> bool:
    return get_spec(model_name).multi_scene
