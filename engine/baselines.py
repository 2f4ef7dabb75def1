"""The two baselines every report prints beside the pose regressors, on the same test CSVs and conditions.

- ``mean pose``: every test frame gets the mean training pose of its scene (the error of knowing nothing
  about the image);
- ``retrieval imagenet k=1``: every test frame gets the pose of its most similar training image, described
  by the pooled features of the bundled ImageNet Lite0 weights (:mod:`engine.retrieval`). Absolute pose
  regressors behave much like this (Sattler et al., CVPR 2019).

Both need the training set: the labels file and dataset root a checkpoint records (``extra.train_labels``,
``extra.train_root``, written since this toolkit records them), or ``--train_labels CSV[:ROOT]``. A report
without a training set says so on one line and shows no baselines.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from datasets.dataset import CameraPoseDataset
from engine.records import CheckpointResult
from engine.retrieval import BaselinePredictions, Descriptor, MeanPoseBaseline, RetrievalBaseline
from util.errors import UserError
from util.metrics import DEFAULT_THRESHOLDS, summarize

log = logging.getLogger(__name__)


def parse_train_labels(text: str | None) -> tuple[Path, Path] | None:
    """``CSV[:ROOT]`` -> (labels, root); the root defaults to the labels file's folder."""
    if not text:
        return None
    csv, colon, root = text.rpartition(":")
    if not colon or not csv.lower().endswith(".csv"):
        csv, root = text, ""
    labels = Path(csv)
    if not labels.is_file():
        raise UserError(f"--train_labels {labels}: file not found")
    return labels, Path(root) if root else labels.parent


def recorded_train_files(ckpt: dict) -> tuple[Path, Path] | None:
    """The training labels and dataset root a checkpoint records, if both still exist here."""
    extra = ckpt.get("extra") or {}
    labels, root = extra.get("train_labels"), extra.get("train_root")
    if labels and root and Path(labels).is_file() and Path(root).is_dir():
        return Path(labels), Path(root)
    return None


@dataclass
class Baselines:
    """The mean pose and the retrieval baseline of one training set, ready to predict any test set."""
    train_labels: Path
    train_root: Path
    image_size: int = 224
    device: str = "cpu"
    cache_dir: str | None = "auto"
    retrieval: bool = True
    _models: list = field(default_factory=list)

    def models(self) -> list:
        if not self._models:
            train = CameraPoseDataset(self.train_root, self.train_labels)
            self._models.append(MeanPoseBaseline(train))
            if self.retrieval:
                descriptor = Descriptor.imagenet(self.image_size, device=self.device, cache_dir=self.cache_dir)
                self._models.append(RetrievalBaseline(train, descriptor, k=1))
        return self._models

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models()]

    def predict(self, parts: Sequence[tuple[Path, Path]], corruption=None) -> dict[str, list[BaselinePredictions]]:
        """Baseline name -> its predictions on each part (label CSV, root) of a test condition."""
        tests = [CameraPoseDataset(root, csv, corruption=corruption) for csv, root in parts]
        return {m.name: [m.predict(test) for test in tests] for m in self.models()}


def record_of(name: str, preds: Sequence[BaselinePredictions], source: Path, multi_scene: bool) -> CheckpointResult:
    """A baseline's scores on one condition as the record a checkpoint gets (no per-frame data)."""
    pos = np.concatenate([p.errors[0] for p in preds])
    ori = np.concatenate([p.errors[1] for p in preds])
    summaries = [s for p in preds for s in p.summaries()]
    overall = summarize(pos, ori, scene="all", thresholds=DEFAULT_THRESHOLDS).to_dict()
    if multi_scene:  # as summarize_result does: every scene counts once in a multi-scene median
        overall.update(scene="average", median_pos_m=float(np.mean([s.median_pos_m for s in summaries])),
                       median_ori_deg=float(np.mean([s.median_ori_deg for s in summaries])))
    return CheckpointResult(path=source, label=name, size=0, mtime_ns=0, epoch=None,
                            scenes=[s.to_dict() for s in summaries], overall=overall)
