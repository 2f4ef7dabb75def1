"""The result record of one checkpoint on one test set, shared by batch evaluation and the robustness report.

A :class:`CheckpointResult` holds the per-scene summaries, the pooled ``overall`` row and, where kept, the
per-frame positions and errors (for CDFs and the 3D view). It is plain data: it goes to and from the JSON
cache through :mod:`util.jsonio`, so an unlocalised frame's infinite error survives the round trip.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.evaluation.evaluate import EvalResult
from engine.training.checkpoints import read_epoch
from util.metrics import DEFAULT_THRESHOLDS, summarize


@dataclass
class CheckpointResult:
    """The scores of one checkpoint file, as evaluated now or read from the cache."""

    path: Path
    label: str
    size: int
    mtime_ns: int
    epoch: int | None
    scenes: list[dict]  # PoseSummary.to_dict() per scene
    overall: dict  # every frame pooled; multi-scene medians: mean of the per-scene medians
    scene_acc: dict[str, float] = field(default_factory=dict)
    frames: dict | None = None  # per-frame positions and errors (see frames_of)
    evaluated: bool = False  # False when taken from the cache

    def sort_key(self) -> tuple[float, float]:
        """Best = lowest median position error, then lowest median orientation error (NaN counts as inf)."""

        def val(x):
            return math.inf if x is None or math.isnan(x) else x

        return val(self.overall["median_pos_m"]), val(self.overall["median_ori_deg"])

    def is_current(self, path: Path) -> bool:
        """Whether ``path`` still has the size and mtime this result was computed from."""
        st = path.stat()
        return self.size == st.st_size and self.mtime_ns == st.st_mtime_ns

    def to_cache(self) -> dict:
        return {
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "epoch": self.epoch,
            "scenes": self.scenes,
            "overall": self.overall,
            "scene_acc": self.scene_acc,
            "frames": self.frames,
        }

    @classmethod
    def from_cache(cls, path: Path, label: str, entry: dict) -> CheckpointResult:
        return cls(
            path=path,
            label=label,
            size=entry["size"],
            mtime_ns=entry["mtime_ns"],
            epoch=entry["epoch"],
            scenes=entry["scenes"],
            overall=entry["overall"],
            scene_acc=entry["scene_acc"],
            frames=entry.get("frames"),
        )


def _round(x: float, digits: int = 6) -> float:
    x = float(x)
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x


def frames_of(result: EvalResult) -> dict:
    """Per-frame data of every test set, compact: scene index, t_gt, t_pred, pos_err, ori_err."""
    scenes, scene_idx, t_gt, t_pred, pos_err, ori_err = [], [], [], [], [], []
    for pred in result.predictions.values():
        pos, ori = pred.errors
        for name in pred.scene_names:
            if name not in scenes:
                scenes.append(name)
            scene_idx.append(scenes.index(name))
        t_gt += [[_round(v) for v in row] for row in pred.pose_gt_N7[:, :3]]
        t_pred += [[_round(v) for v in row] for row in pred.pose_pred_N7[:, :3]]
        pos_err += [_round(v) for v in pos]
        ori_err += [_round(v) for v in ori]
    return {
        "scenes": scenes,
        "scene_index": scene_idx,
        "t_gt": t_gt,
        "t_pred": t_pred,
        "pos_err": pos_err,
        "ori_err": ori_err,
    }


def frames_by_scene(frames: dict | None) -> dict[str, dict[str, np.ndarray]]:
    """Group the per-frame lists by scene as float arrays (a NaN error counts as a failure: +inf)."""
    if not frames:
        return {}
    idx = np.asarray(frames["scene_index"], dtype=np.int64)

    def err(key):
        e = np.asarray(frames[key], dtype=np.float64)
        return np.where(np.isnan(e), np.inf, e)

    t_gt = np.asarray(frames["t_gt"], dtype=np.float64).reshape(-1, 3)
    t_pred = np.asarray(frames["t_pred"], dtype=np.float64).reshape(-1, 3)
    pos, ori = err("pos_err"), err("ori_err")
    return {
        scene: {"t_gt": t_gt[idx == k], "t_pred": t_pred[idx == k], "pos": pos[idx == k], "ori": ori[idx == k]}
        for k, scene in enumerate(frames["scenes"])
    }


def summarize_result(
    result: EvalResult, path: Path, label: str, stat: os.stat_result, multi_scene: bool
) -> CheckpointResult:
    """Turn an :class:`EvalResult` into the cached record (per-frame data included)."""
    pos = np.concatenate([p.errors[0] for p in result.predictions.values()])
    ori = np.concatenate([p.errors[1] for p in result.predictions.values()])
    # Means, recalls and failures over every frame pooled (frame-weighted across scenes).
    overall = summarize(pos, ori, scene="all", thresholds=DEFAULT_THRESHOLDS).to_dict()
    if multi_scene:
        # The medians of a multi-scene row are the reference's avrg_x / avrg_q: every scene counts once.
        overall.update(
            scene="average",
            median_pos_m=float(np.mean([s.median_pos_m for s in result.summaries])),
            median_ori_deg=float(np.mean([s.median_ori_deg for s in result.summaries])),
        )
        n = {s.scene: s.n_frames for s in result.summaries}
        total = sum(n[s] for s in result.scene_acc)
        overall["scene_acc"] = (
            sum(result.scene_acc[s] * n[s] for s in result.scene_acc) / total if total else float("nan")
        )
    return CheckpointResult(
        path=path,
        label=label,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        epoch=read_epoch(path),
        scenes=[s.to_dict() for s in result.summaries],
        overall=overall,
        scene_acc=dict(result.scene_acc),
        frames=frames_of(result),
        evaluated=True,
    )


def first_line(text: str) -> str:
    """The first line of an error message (a skipped file is reported on one line)."""
    lines = text.strip().splitlines()
    return lines[0] if lines else text
