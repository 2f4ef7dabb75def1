"""The two baselines every report prints beside the pose regressors, on the same test CSVs and conditions.

- ``mean pose``: every test frame gets the mean training pose of its scene (the error of knowing nothing
  about the image);
- ``retrieval imagenet k=1``: every test frame gets the pose of its most similar training image, described
  by the pooled features of the bundled ImageNet Lite0 weights (:mod:`engine.evaluation.retrieval`). Absolute pose
  regressors behave much like this (Sattler et al., CVPR 2019).

Both need the training set: the labels file and dataset root a checkpoint records (``extra.train_labels``,
``extra.train_root``, written since this toolkit records them), or ``--train_labels CSV[:ROOT]``. A report
without a training set says so on one line and shows no baselines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.dataset import CameraPoseDataset
from engine.evaluation.records import CheckpointResult
from engine.evaluation.retrieval import BaselinePredictions, Descriptor, MeanPoseBaseline, RetrievalBaseline
from util.checkpoint import load_checkpoint
from util.errors import UserError
from util.metrics import DEFAULT_THRESHOLDS, summarize

log = logging.getLogger(__name__)


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
        overall.update(
            scene="average",
            median_pos_m=float(np.mean([s.median_pos_m for s in summaries])),
            median_ori_deg=float(np.mean([s.median_ori_deg for s in summaries])),
        )
    return CheckpointResult(
        path=source,
        label=name,
        size=0,
        mtime_ns=0,
        epoch=None,
        scenes=[s.to_dict() for s in summaries],
        overall=overall,
    )


def score_baselines(
    models: Baselines, parts: Sequence[tuple[Path, Path]], multi_scene: bool = False, corruption=None
) -> dict[str, CheckpointResult]:
    """Baseline name -> its record on the test parts (label CSV, root), as a checkpoint's record."""
    return {
        name: record_of(name, preds, models.train_labels, multi_scene)
        for name, preds in models.predict(parts, corruption).items()
    }


def train_set_of(checkpoint: dict, given: tuple[Path, Path] | None) -> tuple[tuple[Path, Path] | None, str]:
    """(training labels and root, '') from ``--train_labels`` or the checkpoint, else (None, why not)."""
    if given is not None:
        return given, ""
    recorded = recorded_train_files(checkpoint)
    if recorded is not None:
        return recorded, ""
    extra = checkpoint.get("extra") or {}
    if extra.get("train_labels"):
        return None, (
            f"the training set the checkpoint records ({extra['train_labels']}) is not here; give "
            f"--train_labels CSV[:ROOT]"
        )
    return None, "the checkpoint records no training set; give --train_labels CSV[:ROOT]"


def format_baselines(records: dict[str, CheckpointResult]) -> str:
    """One console line per baseline: its median errors on the same frames."""
    return "\n".join(
        f"baseline {name}: median {r.overall['median_pos_m']:.4f} m, {r.overall['median_ori_deg']:.3f} "
        f"deg on the same frames"
        for name, r in records.items()
    )


def baselines_csv(records: dict[str, CheckpointResult]) -> str:
    """Per baseline and scene: ``baseline,scene,pos,ori`` then the other summary columns."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    first = next(iter(records.values())).scenes[0]
    extra = [k for k in first if k not in ("scene", "median_pos_m", "median_ori_deg")]
    w.writerow(["baseline", "scene", "pos", "ori", *extra])
    for name, r in records.items():
        for s in r.scenes:
            w.writerow([name, s["scene"], s["median_pos_m"], s["median_ori_deg"], *(s[k] for k in extra)])
    return buf.getvalue()


def evaluator_baselines(
    evaluator, checkpoint_path: str | Path, given: tuple[Path, Path] | None
) -> tuple[dict[str, CheckpointResult], str]:
    """The baselines on the test sets ``evaluator`` scores ``checkpoint_path`` on, or ({}, why not)."""
    train, why = train_set_of(load_checkpoint(checkpoint_path), given)
    if train is None:
        log.warning("no baselines: %s", why)
        return {}, why
    models = Baselines(
        *train,
        image_size=int(evaluator.config.get("image_crop", 224)),
        device=str(evaluator.device),
        cache_dir=evaluator.config.get("cache_dir"),
    )
    sets = evaluator.last_sets or evaluator.test_sets(evaluator.load(checkpoint_path)[1])
    parts = [(ds.labels_file, ds.dataset_root) for ds in sets.values()]
    try:
        return score_baselines(models, parts, evaluator.multi, evaluator.corruption), ""
    except UserError as exc:
        log.warning("no baselines: %s", exc)
        return {}, str(exc).splitlines()[0]
