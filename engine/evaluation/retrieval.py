"""Baselines printed beside the pose regressors: the mean training pose, and image retrieval.

    python -m engine.evaluation.retrieval TRAIN_CSV TEST_CSV DATASET_ROOT --descriptor imagenet --k 1 3 \
        --output_path DIR

Sattler et al. (CVPR 2019, "Understanding the limitations of CNN-based absolute camera pose regression")
found that absolute pose regressors behave much like image retrieval; a regressor is worth its training where
it beats these:

- mean pose: every test frame gets the mean training pose of its scene (:func:`util.pose.mean_pose`).
- retrieval: every image is described by a :class:`Descriptor` (a backbone's pooled features, L2-normalised);
  a test frame gets the pose of the training image of highest cosine similarity, or with ``k > 1`` the mean of
  the ``k`` most similar training poses of that image's scene, weighted by their similarities
  (:func:`retrieve_poses`). Poses of different scenes live in different frames and are never averaged.

Descriptors are cached per labels file like decoded images (:mod:`datasets.image_cache`): one
``<labels stem>-<key>.desc.npz`` per labels file in the cache folder, written atomically; a file that does not
load or does not match its key is rebuilt with a warning.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from datasets.dataset import CameraPoseDataset
from datasets.image_cache import AUTO, cache_key, resolve_cache_dir
from datasets.transforms import build_transform, image_sizes
from engine.cli import configure_console
from models.backbone import LITE0_TIMM_NAME, Backbone, load_backbone, new_backbone
from models.config import defaults
from models.loading import load_checkpoint, reconcile_config
from models.registry import build_model, canonical_model_name
from util.checkpoint import load_model_weights
from util.device import cap_workers, select_device
from util.errors import UserError, run_cli
from util.io import atomic_write_text, atomic_write_with, check_output_dir
from util.logs import progress_bar
from util.metrics import DEFAULT_THRESHOLDS, PoseSummary, format_summaries, summarize
from util.pose import mean_pose, pose_errors

log = logging.getLogger(__name__)

FORMAT = "hyperpose-descriptors"
VERSION = 1
IMAGENET_SIZE = 224  # short side and centre crop of the ImageNet descriptor's images
QUERY_CHUNK = 1024  # queries per similarity block: 1024 x 26k training images of 7Scenes is 200 MB of float64
POSE_HEADER = ["t1", "t2", "t3", "q1", "q2", "q3", "q4"]


# Retrieval ----------------------------------------------------------------------------------------------------
def _unit_rows(desc_ND: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float64 (a zero row stays zero)."""
    desc = np.asarray(desc_ND, dtype=np.float64)
    norm = np.linalg.norm(desc, axis=1, keepdims=True)
    return desc / np.where(norm > 0, norm, 1.0)


def _top_k(sim_QT: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and similarities ``(Q x k)`` of each row's k largest similarities, largest first."""
    if k == 1:
        idx_QK = sim_QT.argmax(axis=1)[:, None]  # ties: the lowest index
    else:
        idx_QK = np.argpartition(-sim_QT, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim_QT, idx_QK, axis=1), axis=1, kind="stable")
        idx_QK = np.take_along_axis(idx_QK, order, axis=1)
    return idx_QK, np.take_along_axis(sim_QT, idx_QK, axis=1)


def _similarity_weights(sim_QK: np.ndarray) -> np.ndarray:
    """Similarities clipped at 0; a row with no positive one gets equal weights on its candidates
    (-inf marks a neighbour from another scene, which never gets weight)."""
    valid_QK = np.isfinite(sim_QK)
    w_QK = np.where(valid_QK, np.clip(sim_QK, 0.0, None), 0.0)
    return np.where(w_QK.sum(axis=1, keepdims=True) > 0, w_QK, valid_QK.astype(np.float64))


def retrieve_poses(
    desc_QD: np.ndarray,
    desc_TD: np.ndarray,
    train_poses_T7: np.ndarray,
    k: int = 1,
    train_scenes_T: Sequence | None = None,
) -> np.ndarray:
    """Poses ``Q x 7`` (float64) of queries from the training images of most similar descriptors.

    Similarity is the cosine of the descriptors (normalised here). ``k = 1``: the nearest training image's pose,
    exactly. ``k > 1``: :func:`util.pose.mean_pose` of the k nearest, weighted by their similarities (clipped at
    0; equal weights when none is positive), so q and -q count alike. With ``train_scenes_T`` the k come from
    the nearest image's scene (fewer if it has fewer images).
    """
    train_T7 = np.asarray(train_poses_T7, dtype=np.float64)
    desc_T = _unit_rows(desc_TD)
    check_k(k, len(train_T7))
    scenes_T = None if train_scenes_T is None else np.unique(np.asarray(train_scenes_T), return_inverse=True)[1]
    poses_Q7 = np.empty((len(desc_QD), 7))
    for start in range(0, len(desc_QD), QUERY_CHUNK):
        sim_QT = _unit_rows(desc_QD[start : start + QUERY_CHUNK]) @ desc_T.T
        if scenes_T is not None and k > 1:
            nearest_scene_Q = scenes_T[sim_QT.argmax(axis=1)]
            sim_QT[scenes_T[None, :] != nearest_scene_Q[:, None]] = -np.inf
        idx_QK, sim_QK = _top_k(sim_QT, k)
        poses_Q7[start : start + len(sim_QT)] = (
            train_T7[idx_QK[:, 0]] if k == 1 else mean_pose(train_T7[idx_QK], _similarity_weights(sim_QK))
        )
    return poses_Q7


# Descriptors --------------------------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone inside a model: its first submodule with the :class:`models.backbone.Backbone` interface."""
    found = next((m for m in model.modules() if isinstance(m, Backbone)), None)
    if found is None:
        raise UserError(f"{type(model).__name__} holds no backbone with the Backbone interface")
    return found


class Descriptor:
    """A global image descriptor: a backbone's pooled features of the test-style transform (short side resized,
    centre crop, ImageNet normalisation), L2-normalised. ``identity`` names the weights in the cache key."""

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        identity: dict,
        image_resize: int,
        image_crop: int,
        *,
        resize_backend: str = "tensor",
        device: str = "cpu",
        batch_size: int = 32,
        cache_dir: str | Path | None = AUTO,
        n_workers: int = 0,
    ):
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.name, self.identity = name, dict(identity)
        self.settings = {
            "image_resize": int(image_resize),
            "image_crop": int(image_crop),
            "resize_backend": resize_backend,
        }
        self.transform = build_transform(self.settings, train=False)  # checks the sizes
        self.device = select_device(device)
        self.backbone = backbone.to(self.device).eval()
        self.batch_size, self.n_workers, self.cache_dir = batch_size, n_workers, cache_dir
        self._memo: dict[str, np.ndarray] = {}

    @classmethod
    def imagenet(
        cls,
        image_size: int = IMAGENET_SIZE,
        device: str = "cpu",
        batch_size: int = 32,
        cache_dir: str | Path | None = AUTO,
        n_workers: int = 0,
    ) -> Descriptor:
        """The bundled offline ImageNet weights: timm's tf_efficientnet_lite0 (pooled width 320)."""
        backbone = load_backbone("imagenet", f"timm:{LITE0_TIMM_NAME}")
        return cls(
            "imagenet",
            backbone,
            {"weights": f"timm:{LITE0_TIMM_NAME} imagenet"},
            image_size,
            image_size,
            device=device,
            batch_size=batch_size,
            cache_dir=cache_dir,
            n_workers=n_workers,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        image_size: int | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        cache_dir: str | Path | None = AUTO,
        n_workers: int = 0,
    ) -> Descriptor:
        """The backbone of one of our checkpoints (or a reference state_dict), built as test mode builds it.
        Images are sized as the model was trained (its ``image_resize`` / ``image_crop``) unless ``image_size``
        is given (short side and crop)."""
        ckpt = load_checkpoint(path)
        if ckpt["model_name"] == "unknown":
            raise UserError(f"{path}: cannot tell which model this state_dict belongs to from its keys")
        model_name = canonical_model_name(ckpt["model_name"])
        config = reconcile_config(ckpt, model_name, {**defaults(model_name), **ckpt["config"]}, path)
        model = build_model(model_name, config, new_backbone(config["backbone_type"]))
        load_model_weights(model, ckpt["model"], path)
        resize, crop = (image_size, image_size) if image_size is not None else image_sizes(config)
        identity = {"checkpoint_sha256": file_sha256(path), "model": model_name}
        return cls(
            Path(path).stem,
            backbone_of(model),
            identity,
            resize,
            crop,
            resize_backend=config.get("resize_backend", "tensor"),
            device=device,
            batch_size=batch_size,
            cache_dir=cache_dir,
            n_workers=n_workers,
        )

    def cache_key(self, dataset: CameraPoseDataset) -> dict | None:
        """What the descriptors of ``dataset`` depend on; None for a corruption whose repr is not stable
        (a function or object shown by address), which is then never cached."""
        corruption = None if dataset.corruption is None else repr(dataset.corruption)
        if corruption is not None and " at 0x" in corruption:
            return None
        key = cache_key(
            dataset.labels_file, dataset.dataset_root, self.settings["image_resize"], self.settings["resize_backend"]
        )
        return {
            **key,
            "format": FORMAT,
            "version": VERSION,
            "image_crop": self.settings["image_crop"],
            "descriptor": self.identity,
            "corruption": corruption,
        }

    def describe(self, dataset: CameraPoseDataset) -> np.ndarray:
        """Descriptors ``N x D`` (float32, unit rows) of the images of ``dataset``, in its order, with its
        corruption; from the cache where there is one."""
        key = self.cache_key(dataset)
        memo = None if key is None else json.dumps(key, sort_keys=True)
        if memo in self._memo:
            return self._memo[memo]
        folder, required = resolve_cache_dir(self.cache_dir)
        path = None if folder is None or key is None else descriptor_cache_path(folder, dataset.labels_file, key)
        desc_ND = None if path is None else read_descriptors(path, key, len(dataset))
        if desc_ND is None:
            desc_ND = self._compute(dataset)
            if path is not None:
                write_descriptors(path, key, desc_ND, required)
        if memo is not None:
            self._memo[memo] = desc_ND
        return desc_ND

    @torch.no_grad()
    def _compute(self, dataset: CameraPoseDataset) -> np.ndarray:
        images = CameraPoseDataset(
            dataset.dataset_root,
            dataset.labels_file,
            transform=self.transform,
            scene_map=dataset.scene_map,
            check_images=False,
            corruption=dataset.corruption,
        )
        assert images.img_paths == dataset.img_paths
        loader = DataLoader(
            images, batch_size=self.batch_size, shuffle=False, num_workers=cap_workers(self.n_workers, self.device)
        )
        parts = []
        for batch in progress_bar(loader, desc=f"describing {dataset.labels_file.name}", leave=False):
            pooled_BD = self.backbone.extract(batch["img"].to(self.device))["pooled"]
            # No eps floor: an untrained backbone's pooled features can be ~1e-12 long and still differ.
            parts.append(_unit_rows(pooled_BD.double().cpu().numpy()))
        return np.concatenate(parts).astype(np.float32)


def descriptor_cache_path(cache_dir: str | Path, labels_file: str | Path, key: dict) -> Path:
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{Path(labels_file).stem}-{key_hash}.desc.npz"


def read_descriptors(path: Path, key: dict, n_images: int) -> np.ndarray | None:
    """The cached descriptors of ``key``; None when there is no file, with a warning when it is unusable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            stored_key, desc_ND = json.loads(str(stored["key"])), stored["desc_ND"]
        if stored_key != key:
            raise ValueError("made for another labels file, root, descriptor, image size or corruption")
        if desc_ND.dtype != np.float32 or desc_ND.ndim != 2 or len(desc_ND) != n_images:
            raise ValueError(f"holds {desc_ND.dtype} {desc_ND.shape}, expected float32 with {n_images} rows")
        if not np.isfinite(desc_ND).all():
            raise ValueError("holds non-finite values")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log.warning("descriptor cache %s is unusable (%s); rebuilding it", path, e)
        return None
    log.info("descriptor cache %s: %d images", path, n_images)
    return desc_ND


def write_descriptors(path: Path, key: dict, desc_ND: np.ndarray, required: bool) -> None:
    """Write the cache file atomically; a failure is an error if the folder was named (``required``), else a
    warning."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(json.dumps(key, sort_keys=True)), desc_ND=desc_ND)

    try:
        atomic_write_with(path, write)
    except UserError as e:
        if required:
            raise
        log.warning("%s; the descriptors are not cached (cache off silences this)", e)


# Baselines ----------------------------------------------------------------------------------------------------
@dataclass
class BaselinePredictions:
    """One baseline's per-frame predictions on one test set (float64 poses)."""

    name: str
    paths: list[str]
    scene_names: list[str]
    pose_pred_N7: np.ndarray
    pose_gt_N7: np.ndarray

    @property
    def errors(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame (position m, orientation deg) errors, in float64."""
        pos, ori = pose_errors(self.pose_pred_N7.astype(np.float64), self.pose_gt_N7.astype(np.float64))
        return np.asarray(pos), np.asarray(ori)

    def summaries(self, thresholds=DEFAULT_THRESHOLDS) -> list[PoseSummary]:
        """One summary per scene, scenes sorted by name (as engine.evaluation.evaluate reports them)."""
        pos, ori = self.errors
        names = np.asarray(self.scene_names)
        return [
            summarize(pos[names == s], ori[names == s], scene=s, thresholds=thresholds)
            for s in sorted(set(self.scene_names))
        ]


def _predictions(name: str, test: CameraPoseDataset, pose_pred_N7: np.ndarray) -> BaselinePredictions:
    return BaselinePredictions(
        name,
        list(test.img_paths),
        list(test.scene_names),
        np.asarray(pose_pred_N7, dtype=np.float64),
        test.poses_N7.astype(np.float64),
    )


class MeanPoseBaseline:
    """Every test frame gets the mean training pose of its scene."""

    name = "mean pose"

    def __init__(self, train: CameraPoseDataset):
        names = np.asarray(train.scene_names)
        self.scene_means = {
            s: mean_pose(train.poses_N7[names == s].astype(np.float64)) for s in sorted(set(train.scene_names))
        }

    def predict(self, test: CameraPoseDataset) -> BaselinePredictions:
        missing = sorted(set(test.scene_names) - set(self.scene_means))
        if missing:
            raise UserError(
                f"{test.labels_file}: scene(s) {', '.join(missing)} have no training frames "
                f"(training scenes: {', '.join(self.scene_means)})"
            )
        return _predictions(self.name, test, np.stack([self.scene_means[s] for s in test.scene_names]))


class RetrievalBaseline:
    """Every test frame gets the pose of its most similar training image, or the similarity-weighted mean of
    the ``k`` most similar of that image's scene (:func:`retrieve_poses`)."""

    def __init__(self, train: CameraPoseDataset, descriptor: Descriptor, k: int = 1):
        check_k(k, len(train))
        self.train, self.descriptor, self.k = train, descriptor, int(k)
        self.name = f"retrieval {descriptor.name} k={self.k}"

    def predict(self, test: CameraPoseDataset) -> BaselinePredictions:
        desc_TD = self.descriptor.describe(self.train)
        desc_QD = self.descriptor.describe(test)
        poses_Q7 = retrieve_poses(desc_QD, desc_TD, self.train.poses_N7, self.k, self.train.scene_names)
        return _predictions(self.name, test, poses_Q7)


def check_k(k: int, n_train: int) -> None:
    """One-line UserError unless 1 <= k <= the number of training images."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_train:
        raise UserError(f"--k must be an integer from 1 to the number of training images ({n_train}), got {k!r}")


# Outputs and command line -------------------------------------------------------------------------------------
def format_table(results: Sequence[BaselinePredictions]) -> str:
    """One row per baseline and scene: medians, means and recalls (util.metrics.format_summaries)."""
    return format_summaries([replace(s, scene=f"{r.name} | {s.scene}") for r in results for s in r.summaries()])


def report_csv(results: Sequence[BaselinePredictions]) -> str:
    """Per-scene rows: baseline, then the PoseSummary columns."""
    buf = io.StringIO()
    rows = [{"baseline": r.name, **s.to_dict()} for r in results for s in r.summaries()]
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def predictions_csv(results: Sequence[BaselinePredictions]) -> str:
    """Per-image rows: baseline, path, scene, predicted and ground-truth t and q, errors."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["baseline", "img_path", "scene"]
        + [f"{c}_pred" for c in POSE_HEADER]
        + POSE_HEADER
        + ["pos_err_m", "ori_err_deg"]
    )
    for r in results:
        pos, ori = r.errors
        for i, path in enumerate(r.paths):
            writer.writerow(
                [
                    r.name,
                    path,
                    r.scene_names[i],
                    *(f"{v:.9g}" for v in r.pose_pred_N7[i]),
                    *(f"{v:.9g}" for v in r.pose_gt_N7[i]),
                    f"{pos[i]:.9g}",
                    f"{ori[i]:.9g}",
                ]
            )
    return buf.getvalue()


def write_outputs(results: Sequence[BaselinePredictions], output_path: str | Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>_report.csv`` and ``<stem>_predictions.csv``; returns their paths."""
    out = Path(output_path)
    paths = {"report": out / f"{stem}_report.csv", "predictions": out / f"{stem}_predictions.csv"}
    atomic_write_text(paths["report"], report_csv(results))
    atomic_write_text(paths["predictions"], predictions_csv(results))
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.evaluation.retrieval",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Baselines for a test set: the mean training pose, and the pose of the most similar training "
        "image(s) by a global image descriptor (Sattler et al., CVPR 2019).",
    )
    parser.add_argument("train_csv", help="training label CSV: the poses to retrieve from")
    parser.add_argument("test_csv", help="test label CSV")
    parser.add_argument("dataset_root", help="dataset root; img_path in the CSVs is relative to it")
    parser.add_argument("--test_root", default=None, help="root of the test CSV's images; None: dataset_root")
    parser.add_argument(
        "--descriptor",
        default="imagenet",
        help="'imagenet' (offline ImageNet tf_efficientnet_lite0) or a checkpoint whose backbone describes the images",
    )
    parser.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=[1],
        help="neighbours averaged per test image; several values give one baseline each",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help=f"short side and centre crop of the described images; None: {IMAGENET_SIZE} for "
        f"imagenet, the checkpoint's image_resize / image_crop for a checkpoint",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch_size", type=int, default=32, help="images per descriptor batch")
    parser.add_argument("--n_workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument(
        "--cache",
        default=AUTO,
        metavar="DIR",
        help="descriptor cache folder; auto: the per-user cache ($HYPERPOSE_CACHE_DIR), off: none",
    )
    parser.add_argument(
        "--output_path",
        default=None,
        help="folder for the per-scene report CSV and the per-image predictions CSV; None: print the table only",
    )
    parser.add_argument("--quiet", action="store_true", help="warnings only, no progress bars")
    return parser


def run_baselines(args: argparse.Namespace) -> list[BaselinePredictions]:
    """The mean-pose baseline and one retrieval baseline per k, on the test CSV."""
    train = CameraPoseDataset(args.dataset_root, args.train_csv)
    test = CameraPoseDataset(args.test_root or args.dataset_root, args.test_csv)
    for k in args.k:
        check_k(k, len(train))
    options = {
        "device": args.device,
        "batch_size": args.batch_size,
        "cache_dir": args.cache,
        "n_workers": args.n_workers,
    }
    if args.descriptor == "imagenet":
        descriptor = Descriptor.imagenet(image_size=args.image_size or IMAGENET_SIZE, **options)
    else:
        descriptor = Descriptor.from_checkpoint(args.descriptor, image_size=args.image_size, **options)
    return [MeanPoseBaseline(train).predict(test)] + [
        RetrievalBaseline(train, descriptor, k).predict(test) for k in args.k
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console(args.quiet)

    def run() -> int:
        if args.output_path is not None:
            check_output_dir(args.output_path)  # before any work
        results = run_baselines(args)
        print(format_table(results))
        if args.output_path is not None:
            stem = f"baselines_{Path(args.descriptor).stem}_{Path(args.test_csv).stem}"
            for path in write_outputs(results, args.output_path, stem).values():
                print(f"wrote {path}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
