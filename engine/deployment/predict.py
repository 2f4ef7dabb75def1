"""The ``predict`` mode: localize unlabelled images with a checkpoint and write their poses.

Output ``<model>_<checkpoint>_<source>_poses.csv`` has one row per readable image:
``img_path,t1,t2,t3,q1,q2,q3,q4`` in the label CSV conventions (t the camera centre in metres, q unit and
scalar-first), plus ``scene_pred,scene_prob`` for multi-scene models. ``img_path`` is the image's path as the
source names it (relative to the folder, as listed, or as the glob matched). With ``html=True`` a
self-contained page ``..._poses.html`` shows the predicted camera centres in 3D.

Unreadable images are logged, skipped and counted; only a run where no image could be read is an error.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.image_source import ImageFileDataset, ImageList, collate_readable, resolve_image_source
from datasets.labels import POSE_COLUMNS
from engine.deployment.localize import Localizer, Poses, load_for_inference
from engine.deployment.positions_page import write_positions_page
from models.config import load_config
from util.device import cap_workers
from util.errors import UserError
from util.io import atomic_write_text, check_output_dir
from util.logs import progress_bar

log = logging.getLogger(__name__)


@dataclass
class PredictResult:
    """Poses of the readable images, which images were skipped and why, and the files written."""

    model_name: str
    checkpoint: str
    source: ImageList
    names: list[str]  # img_path of each predicted row, in source order
    poses: Poses
    skipped: list[tuple[str, str]]  # (img_path, reason)
    paths: dict[str, Path] = field(default_factory=dict)

    def summary_line(self) -> str:
        line = f"localized {len(self.names)} of {len(self.source)} images"
        return line + (f"; skipped {len(self.skipped)} unreadable" if self.skipped else "")


def poses_csv(names: list[str], poses: Poses) -> str:
    """The ``_poses.csv`` text (9 significant digits, as the label CSVs of the supported datasets)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    multi = poses.scene_ids is not None
    w.writerow(["img_path", *POSE_COLUMNS] + (["scene_pred", "scene_prob"] if multi else []))
    for i, name in enumerate(names):
        row = [name, *(f"{v:.9g}" for v in poses.pose_N7[i])]
        if multi:
            scene = poses.scene_names[i]
            row += [scene if scene is not None else int(poses.scene_ids[i]), f"{poses.scene_probs[i]:.6g}"]
        w.writerow(row)
    return buf.getvalue()


def _source_label(images: str, source: ImageList) -> str:
    if source.kind == "glob":
        return "glob"
    path = Path(images)
    return path.name if path.is_dir() else path.stem


@torch.no_grad()
def localize_files(
    localizer: Localizer, source: ImageList, *, batch_size: int, n_workers: int = 0, progress: bool = True
) -> tuple[list[int], Poses, list[tuple[int, str]]]:
    """Run ``localizer`` over the files of ``source``: (indices of the readable ones, their poses, failures)."""
    dataset = ImageFileDataset(source.files, localizer.transform)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=cap_workers(n_workers, localizer.device),
        collate_fn=collate_readable,
        pin_memory=localizer.device.type == "cuda",
    )
    indices, poses, logps, failed = [], [], [], []
    for batch in progress_bar(loader, desc="predict", leave=False, enabled=progress):
        for index, reason in batch["failed"]:
            log.warning("skipped %s: %s", source.names[index], reason)
            failed.append((index, reason))
        if batch["img"] is None:
            continue
        pose, logp = localizer.predict_batch(batch["img"])
        indices.extend(batch["index"].tolist())
        poses.append(pose)
        if logp is not None:
            logps.append(logp)
    if not indices:
        index, reason = failed[0]
        raise UserError(f"none of the {len(source)} images could be read (first: {reason})")
    return indices, localizer.poses_from(torch.cat(poses), torch.cat(logps) if logps else None), failed


def predict(
    model_name: str,
    images: str,
    config_path: str | Path,
    checkpoint_path: str | Path,
    output_path: str | Path = "./predictions",
    *,
    override_config=None,
    dataset_root: str | Path | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    html: bool = False,
    progress: bool = True,
) -> PredictResult:
    """Localize the images named by ``images`` and write the poses CSV (and the HTML view)."""
    if not checkpoint_path:
        raise UserError("predict mode needs --checkpoint_path <checkpoint.pth>")
    if batch_size is not None and batch_size < 1:  # 0 is a mistake, not "the config's size"
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    check_output_dir(output_path, create=False)  # before any work; nothing is created if the work fails
    source = resolve_image_source(images, dataset_root)
    config = load_config(config_path, model_name, override_config)
    batch_size = batch_size if batch_size is not None else config["batch_size"]
    # A reference multi-scene state_dict has no scene map: it numbered the sorted scenes of its labels.
    scenes = sorted(set(source.scenes) - {""}) or None
    loaded = load_for_inference(checkpoint_path, model_name=model_name, config=config, scenes=scenes)
    localizer = Localizer(loaded, device)
    indices, poses, failed = localize_files(
        localizer, source, batch_size=batch_size, n_workers=config["n_workers"], progress=progress
    )
    names = [source.names[i] for i in indices]
    result = PredictResult(
        loaded.model_name,
        str(checkpoint_path),
        source,
        names,
        poses,
        [(source.names[i], reason) for i, reason in failed],
    )

    out = Path(output_path)
    stem = f"{loaded.model_name}_{Path(checkpoint_path).stem}_{_source_label(images, source)}"
    result.paths["poses"] = atomic_write_text(out / f"{stem}_poses.csv", poses_csv(names, poses))
    if html:
        groups = {}
        if poses.scene_ids is not None:
            labels = np.array(
                [str(s) if s is not None else f"scene {i}" for s, i in zip(poses.scene_names, poses.scene_ids)]
            )
            for label in sorted(set(labels)):
                sel = np.flatnonzero(labels == label)
                groups[label] = (poses.positions[sel], [names[i] for i in sel])
        else:
            groups["predicted"] = (poses.positions, names)
        facts = [
            ("model", loaded.model_name),
            ("checkpoint", str(checkpoint_path)),
            ("images", str(images)),
            ("localized", result.summary_line()),
        ]
        result.paths["html"] = write_positions_page(
            out / f"{stem}_poses.html", f"Predicted camera centres: {Path(checkpoint_path).name}", facts, groups
        )
    return result
