"""Per-scene accuracy summaries of pose errors: medians, means and recall at (metres, degrees) thresholds.

A frame whose error is not finite (NaN from a degenerate prediction, inf from a failed estimate) is a
failure: the frame is counted in ``n_failed`` and each non-finite error enters every statistic as +inf,
so a median or a mean can only get worse because of it. NaNs are never skipped (no nanmedian); that is
how the reference implementation hid broken predictions. Recall is the fraction of *all* frames whose
position error is <= m metres *and* whose orientation error is <= d degrees; failures count as misses.

An empty input is a valid, well-defined case (no exception): ``n_frames == 0`` and every statistic and
recall is NaN, meaning "not measured", so a table with an empty scene still prints. :func:`aggregate`
skips such scenes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch

log = logging.getLogger(__name__)

Array = Union[np.ndarray, torch.Tensor, Sequence[float]]

# (metres, degrees): the 5 cm / 5 deg relocalisation standard, then coarser bins in the style of the
# long-term visual localisation benchmarks.
DEFAULT_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.05, 5.0), (0.25, 2.0), (0.5, 5.0), (1.0, 10.0))

_STAT_KEYS = ("median_pos_m", "median_ori_deg", "mean_pos_m", "mean_ori_deg")


def recall_label(max_pos_m: float, max_ori_deg: float) -> str:
    """Column name of one threshold pair, e.g. ``recall_0.05m_5deg``."""
    return f"recall_{max_pos_m:g}m_{max_ori_deg:g}deg"


@dataclass
class PoseSummary:
    """Accuracy of one scene (or any set of frames); errors in metres and degrees."""

    scene: str
    n_frames: int
    n_failed: int
    median_pos_m: float
    median_ori_deg: float
    mean_pos_m: float
    mean_ori_deg: float
    recalls: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Flat row for CSV/JSON: the scalar fields followed by one column per recall label."""
        row = {"scene": self.scene, "n_frames": self.n_frames, "n_failed": self.n_failed}
        row.update({key: getattr(self, key) for key in _STAT_KEYS})
        row.update(self.recalls)
        return row


def _as_float64_1d(errors: Array, name: str) -> np.ndarray:
    if isinstance(errors, torch.Tensor):
        errors = errors.detach().cpu().double().numpy()
    arr = np.asarray(errors, dtype=np.float64)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be one error per frame (1-D), got shape {arr.shape}")
    return arr.reshape(-1)


def _check_thresholds(thresholds: Iterable[tuple[float, float]]) -> list[tuple[float, float, str]]:
    checked, labels = [], set()
    for pair in thresholds:
        if len(pair) != 2:
            raise ValueError(f"a threshold is a (metres, degrees) pair, got {pair!r}")
        max_pos_m, max_ori_deg = float(pair[0]), float(pair[1])
        if not (max_pos_m >= 0 and max_ori_deg >= 0):
            raise ValueError(f"thresholds must be >= 0, got ({max_pos_m}, {max_ori_deg})")
        label = recall_label(max_pos_m, max_ori_deg)
        if label in labels:
            raise ValueError(f"duplicate threshold {label}")
        labels.add(label)
        checked.append((max_pos_m, max_ori_deg, label))
    return checked


def summarize(
    pos_err_N: Array,
    ori_err_N: Array,
    scene: str = "all",
    thresholds: Iterable[tuple[float, float]] = DEFAULT_THRESHOLDS,
) -> PoseSummary:
    """Summarise per-frame position (m) and orientation (deg) errors of one scene.

    Accepts numpy arrays, torch tensors (any device) or sequences. Non-finite errors are failures and
    count as +inf; a frame fails if either of its errors is non-finite. Raises ValueError on mismatched
    lengths or negative errors, which no error function produces.
    """
    pos_N = _as_float64_1d(pos_err_N, "pos_err_N")
    ori_N = _as_float64_1d(ori_err_N, "ori_err_N")
    if pos_N.shape != ori_N.shape:
        raise ValueError(f"{pos_N.size} position errors but {ori_N.size} orientation errors")
    checked = _check_thresholds(thresholds)
    if np.any(np.isfinite(pos_N) & (pos_N < 0)) or np.any(np.isfinite(ori_N) & (ori_N < 0)):
        raise ValueError("errors must be >= 0 (distances and angles)")

    n_frames = int(pos_N.size)
    if n_frames == 0:
        nan = float("nan")
        return PoseSummary(scene, 0, 0, nan, nan, nan, nan, {label: nan for _, _, label in checked})

    failed_N = ~(np.isfinite(pos_N) & np.isfinite(ori_N))
    pos_N = np.where(np.isfinite(pos_N), pos_N, np.inf)
    ori_N = np.where(np.isfinite(ori_N), ori_N, np.inf)
    recalls = {
        label: float(np.mean((pos_N <= max_pos_m) & (ori_N <= max_ori_deg)))
        for max_pos_m, max_ori_deg, label in checked
    }
    return PoseSummary(
        scene=scene,
        n_frames=n_frames,
        n_failed=int(failed_N.sum()),
        median_pos_m=float(np.median(pos_N)),
        median_ori_deg=float(np.median(ori_N)),
        mean_pos_m=float(np.mean(pos_N)),
        mean_ori_deg=float(np.mean(ori_N)),
        recalls=recalls,
    )


def aggregate(summaries: Sequence[PoseSummary]) -> dict:
    """Combine per-scene summaries into the multi-scene averages.

    - ``mean_of_median_pos_m`` / ``mean_of_median_ori_deg``: the unweighted mean of the per-scene
      medians, the "average" row that papers print for 7Scenes and Cambridge (every scene counts once).
    - ``weighted_median_pos_m`` / ``weighted_median_ori_deg``: the per-scene medians averaged with the
      scenes' frame counts as weights.
    - ``weighted_mean_pos_m`` / ``weighted_mean_ori_deg`` and every ``recall_*``: frame-weighted, i.e.
      the mean error and the recall over all frames pooled.
    - ``n_scenes``, ``n_frames``, ``n_failed``: counts over the scenes used.
    Scenes without frames are skipped with a warning. Raises ValueError if no scene has frames or the
    summaries were made with different thresholds.
    """
    empty = [s.scene for s in summaries if s.n_frames == 0]
    if empty:
        log.warning("aggregate: skipping scene(s) without frames: %s", ", ".join(empty))
    used = [s for s in summaries if s.n_frames > 0]
    if not used:
        raise ValueError("aggregate needs at least one summary with frames")
    labels = list(used[0].recalls)
    for s in used[1:]:
        if set(s.recalls) != set(labels):
            raise ValueError(f"scene {s.scene!r} has recall columns {list(s.recalls)}, expected {labels}")

    weights = np.array([s.n_frames for s in used], dtype=np.float64)
    weights /= weights.sum()

    def weighted(values: list[float]) -> float:
        # Every weight is > 0, so an infinite value gives inf, never NaN.
        return float(np.sum(weights * np.asarray(values, dtype=np.float64)))

    row = {
        "n_scenes": len(used),
        "n_frames": int(sum(s.n_frames for s in used)),
        "n_failed": int(sum(s.n_failed for s in used)),
        "mean_of_median_pos_m": float(np.mean([s.median_pos_m for s in used])),
        "mean_of_median_ori_deg": float(np.mean([s.median_ori_deg for s in used])),
        "weighted_median_pos_m": weighted([s.median_pos_m for s in used]),
        "weighted_median_ori_deg": weighted([s.median_ori_deg for s in used]),
        "weighted_mean_pos_m": weighted([s.mean_pos_m for s in used]),
        "weighted_mean_ori_deg": weighted([s.mean_ori_deg for s in used]),
    }
    row.update({label: weighted([s.recalls[label] for s in used]) for label in labels})
    return row


def _cell(value, width: int, digits: int) -> str:
    """One right-aligned table cell; NaN (not measured) prints as "-"."""
    if isinstance(value, float):
        return "-".rjust(width) if math.isnan(value) else f"{value:{width}.{digits}f}"
    return str(value).rjust(width)


def format_summaries(summaries: Sequence[PoseSummary], average: Mapping | None = None) -> str:
    """A fixed-width text table, one row per summary: errors in m / deg, recalls in percent.

    With ``average`` (an :func:`aggregate` result) a last row "average" shows the mean of the per-scene
    medians, the frame-weighted means and the pooled recalls. "-" marks a value not measured.
    """
    rows = [s.to_dict() for s in summaries]
    if average is not None:
        rows.append(
            {
                "scene": "average",
                "n_frames": average["n_frames"],
                "n_failed": average["n_failed"],
                "median_pos_m": average["mean_of_median_pos_m"],
                "median_ori_deg": average["mean_of_median_ori_deg"],
                "mean_pos_m": average["weighted_mean_pos_m"],
                "mean_ori_deg": average["weighted_mean_ori_deg"],
                **{k: v for k, v in average.items() if k.startswith("recall_")},
            }
        )
    labels: list[str] = []
    for row in rows:
        labels += [k for k in row if k.startswith("recall_") and k not in labels]
    columns = [
        ("n_frames", "frames", 0),
        ("n_failed", "failed", 0),
        ("median_pos_m", "med pos [m]", 3),
        ("median_ori_deg", "med ori [deg]", 2),
        ("mean_pos_m", "mean pos [m]", 3),
        ("mean_ori_deg", "mean ori [deg]", 2),
    ]
    columns += [(lab, lab[len("recall_") :].replace("_", "/") + " [%]", 1) for lab in labels]
    widths = [len(head) + 2 for _, head, _ in columns]
    scene_width = max([len("scene")] + [len(str(row["scene"])) for row in rows])

    header = "scene".ljust(scene_width) + "".join(head.rjust(w) for (_, head, _), w in zip(columns, widths))
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for (key, _, digits), width in zip(columns, widths):
            value = row.get(key, float("nan"))
            if key.startswith("recall_"):
                value = 100.0 * float(value)
            cells.append(_cell(value, width, digits))
        lines.append(str(row["scene"]).ljust(scene_width) + "".join(cells))
    return "\n".join(lines)
