"""Test a checkpoint on label CSVs: per-scene errors, recalls, scene accuracy, latency and throughput.

:class:`Evaluator` loads the test sets once and evaluates any number of checkpoints against them; the
``test`` mode of the entry scripts and the batch evaluation both go through it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.dataset import CameraPoseDataset, reference_scene_map
from datasets.image_cache import AUTO, resolve_cache_dir
from datasets.labels import read_labels
from datasets.transforms import build_transform
from models.config import load_config
from models.loading import empty_model, load_model
from models.registry import canonical_model_name, get_spec, scene_setting
from util import jsonio
from util.device import autocast_dtype, cap_workers, select_device, synchronize
from util.errors import UserError
from util.io import atomic_write_text, check_output_dir
from util.logs import progress_bar
from util.metrics import DEFAULT_THRESHOLDS, PoseSummary, aggregate, format_summaries, summarize
from util.pose import pose_errors

log = logging.getLogger(__name__)

# Per-scene test files of the known datasets, found beside the training labels file (docs/datasets.md).
TEST_FILE_PATTERNS = {
    "7scenes": "abs_7scenes_pose.csv_{scene}_test.csv",
    "cambridge": "abs_cambridge_pose_sorted.csv_{scene}_test.csv",
}


@dataclass
class Predictions:
    """Per-frame predictions and ground truth of one test set."""

    paths: list[str]
    scene_names: list[str]
    pose_pred_N7: np.ndarray
    pose_gt_N7: np.ndarray
    scene_gt_N: np.ndarray
    scene_pred_N: np.ndarray | None = None
    id_to_scene: dict[int, str] = field(default_factory=dict)

    @property
    def errors(self) -> tuple[np.ndarray, np.ndarray]:
        pos, ori = pose_errors(self.pose_pred_N7.astype(np.float64), self.pose_gt_N7.astype(np.float64))
        return np.asarray(pos), np.asarray(ori)


@dataclass
class EvalResult:
    """What one checkpoint scored: per-scene summaries, aggregates and timings."""

    model_name: str
    checkpoint: str
    summaries: list[PoseSummary]
    scene_acc: dict[str, float]
    predictions: dict[str, Predictions]
    timing: dict = field(default_factory=dict)
    multi_scene: bool = False
    baselines: dict = field(
        default_factory=dict
    )  # name -> engine.evaluation.records.CheckpointResult on the same frames
    baseline_note: str = ""  # why there are none, when they were asked for

    @property
    def aggregate(self) -> dict:
        return aggregate(self.summaries)

    def report_text(self) -> str:
        lines = [f"{self.model_name} {self.checkpoint}", format_summaries(self.summaries)]
        if self.multi_scene:
            lines.append("scene accuracy: " + ", ".join(f"{s} {a:.3f}" for s, a in self.scene_acc.items()))
        if len(self.summaries) > 1:
            agg = self.aggregate
            lines.append("  ".join(f"{k} {v:.4g}" for k, v in agg.items() if isinstance(v, (int, float))))
        if self.baselines or self.baseline_note:
            from engine.evaluation.baselines import format_baselines

            lines.append(format_baselines(self.baselines) if self.baselines else f"no baselines: {self.baseline_note}")
        if self.timing:
            t = self.timing
            lines.append(
                f"latency {t['latency_ms_median']:.2f} ms/image median ({t['latency_ms_mean']:.2f} mean, "
                f"batch 1, {t['latency_images']} images after {t['warmup']} warm-up) on {t['device']}; "
                f"throughput {t['throughput_images_per_s']:.1f} images/s at batch {t['batch_size']}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "checkpoint": self.checkpoint,
            "scenes": [s.to_dict() for s in self.summaries],
            "scene_acc": self.scene_acc,
            "aggregate": self.aggregate,
            "timing": self.timing,
            "baselines": {name: {"overall": r.overall, "scenes": r.scenes} for name, r in self.baselines.items()},
        }


def find_scene_test_files(labels_file: str | Path, scenes: list[str], dataset_id: str) -> dict[str, Path]:
    """The per-scene test CSVs of ``dataset_id`` that sit beside ``labels_file``."""
    if dataset_id not in TEST_FILE_PATTERNS:
        raise UserError(f"--test_dataset_id {dataset_id!r}: expected one of {', '.join(TEST_FILE_PATTERNS)}")
    folder = Path(labels_file).parent
    files = {s: folder / TEST_FILE_PATTERNS[dataset_id].format(scene=s) for s in scenes}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise UserError(
            f"--test_dataset_id {dataset_id}: {len(missing)} per-scene test file(s) missing, e.g. {missing[0]}"
        )
    return files


@dataclass(frozen=True)
class EvalSettings:
    """How an :class:`Evaluator` runs, apart from what it evaluates."""

    device: str = "auto"
    amp: bool = False
    batch_size: int | None = None  # None: the config's
    progress: bool = True
    cache_dir: str | None = None  # the image cache folder; None: the config's
    latency_images: int = 50
    warmup: int = 5


class Evaluator:
    """Evaluates checkpoints of one model/config on one set of test CSVs, loading the data once."""

    def __init__(
        self,
        model_name: str,
        backbone_path: str,
        dataset_root: str | Path,
        labels_file: str | Path,
        config_path: str | Path,
        *,
        settings: EvalSettings | None = None,
        override_config=None,
        test_dataset_id: str | None = None,
        scene_map_file: str | Path | None = None,
        config: dict | None = None,
        corruption=None,
        **runtime,
    ):
        """``settings`` (or the same fields as keywords: ``device``, ``amp``, ``batch_size``, ``progress``,
        ``cache_dir``, ``latency_images``, ``warmup``; keywords override ``settings``) say how it runs; the
        other keywords say what is evaluated."""
        settings = settings if settings is not None else EvalSettings()
        self.settings = settings = replace(settings, **runtime) if runtime else settings
        cache_dir = settings.cache_dir
        self.model_name = canonical_model_name(model_name)
        # ``config``: an effective config already resolved (e.g. the one a checkpoint records); else loaded.
        self.config = dict(config) if config is not None else load_config(config_path, self.model_name, override_config)
        if cache_dir or config is not None:
            # A config recorded in a checkpoint names the training machine's cache folder: not used here.
            self.config["cache_dir"] = str(cache_dir) if cache_dir else AUTO
        self.backbone_path = backbone_path
        self.dataset_root = Path(dataset_root)
        self.labels_file = Path(labels_file)
        self.multi = get_spec(self.model_name).multi_scene
        self.device = select_device(settings.device, self.config.get("device_id"))
        self.amp_dtype = autocast_dtype(settings.amp, self.device)
        self.amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else False
        self.batch_size = self.config["batch_size"] if settings.batch_size is None else settings.batch_size
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be >= 1, got {self.batch_size}")
        self.test_dataset_id = test_dataset_id
        self.scene_map_file = scene_map_file
        self._announced = None
        self.transform = build_transform(self.config, train=False)
        self.labels_scenes = sorted(read_labels(self.labels_file)["scene"].astype(str).unique())
        # An image corruption (datasets.corruptions.Corruption) applied to every decoded test image.
        self.corruption = corruption
        self._datasets: dict = {}
        self._models: dict = {}
        self.last_sets: dict[str, CameraPoseDataset] = {}  # the test sets of the last checkpoint evaluated

    # Data -------------------------------------------------------------------------------------------------
    def test_sets(self, scene_map: dict[str, int]) -> dict[str, CameraPoseDataset]:
        """Name -> dataset; built once per scene map."""
        key = tuple(sorted(scene_map.items()))
        if key not in self._datasets:
            if self.test_dataset_id:
                files = find_scene_test_files(self.labels_file, list(scene_map), self.test_dataset_id)
            else:
                files = {self.labels_file.stem: self.labels_file}
            sets = {
                name: CameraPoseDataset(
                    self.dataset_root,
                    path,
                    transform=self.transform,
                    scene_map=scene_map if self.multi else None,
                    corruption=self.corruption,
                )
                for name, path in files.items()
            }
            cache_dir, required = resolve_cache_dir(self.config.get("cache_dir"))
            if cache_dir is not None:
                for dataset in sets.values():
                    dataset.use_image_cache(
                        cache_dir,
                        self.config["image_resize"],
                        self.config["n_workers"],
                        required=required,
                        resize_backend=self.config.get("resize_backend", "tensor"),
                    )
            self._datasets[key] = sets
        return self._datasets[key]

    # Model ------------------------------------------------------------------------------------------------
    def load(self, checkpoint_path: str | Path) -> tuple[torch.nn.Module, dict[str, int]]:
        """Build the model for a checkpoint (ours or a reference state_dict) and load its weights strictly."""
        loaded = load_model(
            checkpoint_path,
            self.model_name,
            self.config,
            build=self._model_for,
            scene_map_for=lambda n_scenes: self.scene_map_for(n_scenes, checkpoint_path),
        )
        return loaded.model.to(self.device, memory_format=torch.channels_last).eval(), loaded.scene_map

    def _model_for(self, config: dict) -> torch.nn.Module:
        """The model of ``config``, built once while checkpoints of the same architecture follow each other."""
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in self._models:
            # The checkpoint holds every backbone weight (the load is strict), so the backbone starts empty:
            # backbone_path is irrelevant here, whatever file or word it names, and warns of nothing.
            self._models = {key: empty_model(self.model_name, config)}
        return self._models[key]

    def scene_map_for(self, n_scenes: int | None, checkpoint_path: str | Path) -> dict[str, int]:
        """The scene map of a checkpoint that records none (a bare reference state_dict): one that fits its
        ``n_scenes`` scene heads (``--scene_map``, the dataset's training order, or the test CSV's scenes),
        logged; for a single-scene model, the test CSV's sorted scenes."""
        if not self.multi:
            return {s: i for i, s in enumerate(self.labels_scenes)}
        n_scenes = n_scenes or len(self.labels_scenes)
        scene_map, source = reference_scene_map(
            n_scenes, self.labels_scenes, self.scene_map_file, f"checkpoint {checkpoint_path}"
        )
        if self._announced != (str(checkpoint_path), source):
            log.info(
                "scene map of %s: %s (%s)",
                Path(checkpoint_path).name,
                source,
                ", ".join(f"{s} {i}" for s, i in scene_map.items()),
            )
            self._announced = (str(checkpoint_path), source)
        return scene_map

    def _forward(self, model, img):
        with torch.autocast(
            device_type=self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            pose, scene_logp = model(img)
        return pose.float(), None if scene_logp is None else scene_logp.argmax(1)

    @torch.no_grad()
    def predict(self, model, dataset: CameraPoseDataset, desc: str = "") -> tuple[Predictions, float]:
        """Run the model over a dataset; returns the predictions and the synchronised model-only seconds."""
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=cap_workers(self.config["n_workers"], self.device),
            pin_memory=self.device.type == "cuda",
        )
        poses, scenes, seconds = [], [], 0.0
        for batch in progress_bar(loader, desc=desc or "test", leave=False, enabled=self.settings.progress):
            img = batch["img"].to(self.device, non_blocking=True, memory_format=torch.channels_last)
            synchronize(self.device)
            t0 = time.perf_counter()
            pose, scene = self._forward(model, img)
            synchronize(self.device)
            seconds += time.perf_counter() - t0
            poses.append(pose.cpu().numpy())
            if scene is not None:
                scenes.append(scene.cpu().numpy())
        pred = Predictions(
            paths=list(dataset.img_paths),
            scene_names=list(dataset.scene_names),
            pose_pred_N7=np.concatenate(poses),
            pose_gt_N7=dataset.poses_N7.copy(),
            scene_gt_N=dataset.scene_ids.copy(),
            scene_pred_N=np.concatenate(scenes) if scenes else None,
            id_to_scene={i: s for s, i in dataset.scene_map.items()},
        )
        return pred, seconds

    @torch.no_grad()
    def measure_latency(self, model, dataset: CameraPoseDataset) -> dict:
        """Per-image latency at batch 1, warm-up excluded, CUDA synchronised around every call."""
        n = min(self.settings.latency_images, len(dataset))
        times = []
        for i in range(self.settings.warmup + n):
            img = dataset[i % len(dataset)]["img"][None].to(self.device, memory_format=torch.channels_last)
            synchronize(self.device)
            t0 = time.perf_counter()
            self._forward(model, img)
            synchronize(self.device)
            if i >= self.settings.warmup:
                times.append((time.perf_counter() - t0) * 1000.0)
        return {
            "latency_ms_mean": statistics.fmean(times),
            "latency_ms_median": statistics.median(times),
            "latency_images": n,
            "warmup": self.settings.warmup,
        }

    def evaluate_checkpoint(
        self, checkpoint_path: str | Path, *, timing: bool = True, thresholds=DEFAULT_THRESHOLDS
    ) -> EvalResult:
        model, scene_map = self.load(checkpoint_path)
        sets = self.last_sets = self.test_sets(scene_map)
        summaries, accs, preds = [], {}, {}
        total_frames, total_seconds = 0, 0.0
        for name, dataset in sets.items():
            pred, seconds = self.predict(model, dataset, desc=name)
            total_frames += len(dataset)
            total_seconds += seconds
            pos, ori = pred.errors
            names = np.asarray(pred.scene_names)
            for scene in sorted(set(pred.scene_names)):
                sel = names == scene
                summaries.append(summarize(pos[sel], ori[sel], scene=scene, thresholds=thresholds))
                if pred.scene_pred_N is not None:
                    accs[scene] = float((pred.scene_pred_N[sel] == pred.scene_gt_N[sel]).mean())
            preds[name] = pred
        result = EvalResult(self.model_name, str(checkpoint_path), summaries, accs, preds, multi_scene=self.multi)
        if timing:
            result.timing = {
                "device": str(self.device),
                "batch_size": self.batch_size,
                "amp": self.amp,
                "throughput_images_per_s": total_frames / max(total_seconds, 1e-9),
                **self.measure_latency(model, next(iter(sets.values()))),
            }
        return result


def predictions_csv(result: EvalResult) -> str:
    """Per-image rows: path, scene, predicted and ground-truth t and q, errors (and the predicted scene)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    head = (
        ["img_path", "scene"]
        + [f"{c}_pred" for c in ("t1", "t2", "t3", "q1", "q2", "q3", "q4")]
        + ["t1", "t2", "t3", "q1", "q2", "q3", "q4", "pos_err_m", "ori_err_deg"]
    )
    w.writerow(head + list(scene_setting(result.multi_scene).prediction_columns))
    for pred in result.predictions.values():
        pos, ori = pred.errors
        for i, path in enumerate(pred.paths):
            # 9 significant digits: float32 round-trips, so outputs can be compared to 1e-7 and better.
            row = [
                path,
                pred.scene_names[i],
                *(f"{v:.9g}" for v in pred.pose_pred_N7[i]),
                *(f"{v:.9g}" for v in pred.pose_gt_N7[i]),
                f"{pos[i]:.9g}",
                f"{ori[i]:.9g}",
            ]
            if result.multi_scene:
                row.append(pred.id_to_scene.get(int(pred.scene_pred_N[i]), int(pred.scene_pred_N[i])))
            w.writerow(row)
    return buf.getvalue()


def scene_report_csv(result: EvalResult) -> str:
    """Per-scene rows, with the reference columns ``scene,pos,ori`` first, then ours, then the averages."""
    buf = io.StringIO()
    w = csv.writer(buf)
    extra = [k for k in result.summaries[0].to_dict() if k not in ("scene", "median_pos_m", "median_ori_deg")]
    w.writerow(["scene", "pos", "ori"] + extra + list(scene_setting(result.multi_scene).summary_columns))
    for s in result.summaries:
        d = s.to_dict()
        w.writerow(
            [s.scene, d["median_pos_m"], d["median_ori_deg"]]
            + [d[k] for k in extra]
            + ([result.scene_acc.get(s.scene, "")] if result.multi_scene else [])
        )
    agg = result.aggregate
    for label, pos_key, ori_key in (
        ("average", "mean_of_median_pos_m", "mean_of_median_ori_deg"),
        ("weighted", "weighted_median_pos_m", "weighted_median_ori_deg"),
    ):
        if pos_key in agg:
            w.writerow([label, agg[pos_key], agg[ori_key]])
    return buf.getvalue()


def test_set_name(labels_file: str | Path, test_dataset_id: str | None = None) -> str:
    """What was evaluated, for output names: the labels file's stem, or ``<dataset>_test`` when
    ``--test_dataset_id`` evaluated the per-scene test files (labels_file is then the training CSV)."""
    return f"{test_dataset_id}_test" if test_dataset_id else Path(labels_file).stem


def write_outputs(result: EvalResult, output_path: str | Path, test_set: str) -> dict[str, Path]:
    """Write the per-image CSV, the per-scene report CSV and the summary JSON; returns their paths."""
    out = Path(output_path)
    stem = f"{result.model_name}_{Path(result.checkpoint).stem}_{test_set}"
    paths = {
        "predictions": out / f"{stem}_predictions.csv",
        "report": out / f"{stem}_report.csv",
        "summary": out / f"{stem}_summary.json",
    }
    atomic_write_text(paths["predictions"], predictions_csv(result))
    atomic_write_text(paths["report"], scene_report_csv(result))
    atomic_write_text(paths["summary"], jsonio.dumps(result.to_dict(), indent=2) + "\n")
    if result.baselines:
        from engine.evaluation.baselines import baselines_csv

        paths["baselines"] = atomic_write_text(out / f"{stem}_baselines.csv", baselines_csv(result.baselines))
    return paths


def evaluate(
    model_name: str,
    backbone_path: str,
    dataset_root: str | Path,
    labels_file: str | Path,
    config_path: str | Path,
    checkpoint_path: str | Path,
    output_path: str | Path = "./evals",
    *,
    override_config=None,
    batch_size: int | None = None,
    device: str = "auto",
    amp: bool = False,
    test_dataset_id: str | None = None,
    scene_map_file: str | Path | None = None,
    cache_dir: str | None = None,
    baselines: bool = False,
    train_labels: tuple[Path, Path] | None = None,
) -> tuple[EvalResult, dict[str, Path]]:
    """Test one checkpoint and write its outputs to ``output_path``. With ``baselines``, the mean training
    pose and image retrieval (:mod:`engine.evaluation.baselines`) are scored on the same frames, from ``train_labels``
    (labels, root) or the training set the checkpoint records."""
    if not checkpoint_path:
        raise UserError("test mode needs --checkpoint_path")
    check_output_dir(output_path)  # before the evaluation, not after it
    evaluator = Evaluator(
        model_name,
        backbone_path,
        dataset_root,
        labels_file,
        config_path,
        override_config=override_config,
        device=device,
        amp=amp,
        batch_size=batch_size,
        test_dataset_id=test_dataset_id,
        scene_map_file=scene_map_file,
        cache_dir=cache_dir,
    )
    result = evaluator.evaluate_checkpoint(checkpoint_path)
    if baselines:
        from engine.evaluation.baselines import evaluator_baselines

        result.baselines, result.baseline_note = evaluator_baselines(evaluator, checkpoint_path, train_labels)
    return result, write_outputs(result, output_path, test_set_name(labels_file, test_dataset_id))
