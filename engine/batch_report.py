"""The outputs of a batch evaluation: the CSV (reference columns first), the HTML report's data, the console table.

See docs/batch_eval.md for the columns.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from engine.checkpoints import checkpoint_number
from engine.records import CheckpointResult, frames_by_scene
from util.report import BatchReport, Column

if TYPE_CHECKING:
    from engine.batch_eval import BatchResult

BEST_RULE = ("Best = the lowest median position error ({what}); ties go to the lower median orientation error, "
             "then to the earlier checkpoint.")
SINGLE_REF_COLUMNS = ["checkpoint", "Model", "Median Position Error [m]", "Median Orientation Error[deg]"]


def _scene_names(results: Sequence[CheckpointResult]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [s["scene"] for s in r.scenes if s["scene"] not in names]
    return names


def _recall_keys(results: Sequence[CheckpointResult]) -> list[str]:
    return [k for k in results[0].overall if k.startswith("recall_")]


def _scene_value(r: CheckpointResult, scene: str, key: str):
    return next((s[key] for s in r.scenes if s["scene"] == scene), None)


def results_csv(results: Sequence[CheckpointResult], best: CheckpointResult, model_name: str,
                multi_scene: bool) -> str:
    """The CSV: the reference's columns first, then ours (see docs/batch_eval.md)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    recalls = _recall_keys(results)
    ours = ["epoch", "mean_pos_m", "mean_ori_deg"] + recalls + ["n_frames", "n_failed"]
    if multi_scene:
        scenes = _scene_names(results)
        w.writerow(["model"] + [f"{s}_{c}" for s in scenes for c in ("x", "q")] + ["avrg_x", "avrg_q"] +
                   ["checkpoint"] + ours + [f"{s}_scene_acc" for s in scenes] + ["scene_acc", "best"])
        for r in results:
            n = checkpoint_number(r.path)
            w.writerow([n if n is not None else r.label] +
                       [_scene_value(r, s, k) for s in scenes for k in ("median_pos_m", "median_ori_deg")] +
                       [r.overall["median_pos_m"], r.overall["median_ori_deg"], str(r.path)] +
                       [r.epoch] + [r.overall[k] for k in ours[1:]] +
                       [r.scene_acc.get(s) for s in scenes] + [r.overall["scene_acc"], int(r is best)])
    else:
        w.writerow(SINGLE_REF_COLUMNS + ours + ["best"])
        for r in results:
            w.writerow([r.label, str(r.path), r.overall["median_pos_m"], r.overall["median_ori_deg"], r.epoch] +
                       [r.overall[k] for k in ours[1:]] + [int(r is best)])
    return buf.getvalue()


def build_report(results: Sequence[CheckpointResult], best: CheckpointResult, skipped: Sequence[tuple[Path, str]],
                 *, model_name: str, multi_scene: bool, checkpoints_dir: Path, test_set: str,
                 facts: Sequence[tuple[str, str]]) -> BatchReport:
    """Assemble the plain data of the HTML page."""
    labels = [r.label for r in results]
    best_index = list(results).index(best)
    recalls = _recall_keys(results)
    scenes = _scene_names(results)
    pct = dict(fmt="{:.1f}", percent=True)
    columns = [Column("#", "{:.0f}"), Column("checkpoint"), Column("epoch", "{:.0f}")]
    if multi_scene:
        curves = {s: ([_scene_value(r, s, "median_pos_m") for r in results],
                      [_scene_value(r, s, "median_ori_deg") for r in results]) for s in scenes}
        curves["average"] = ([r.overall["median_pos_m"] for r in results],
                             [r.overall["median_ori_deg"] for r in results])
        columns += [Column("avrg median pos [m]"), Column("avrg median ori [deg]", "{:.2f}")]
        columns += [c for s in scenes for c in (Column(f"{s} pos [m]"), Column(f"{s} ori [deg]", "{:.2f}"))]
        columns += [Column("scene acc [%]", **pct)]
    else:
        curves = {"median": ([r.overall["median_pos_m"] for r in results],
                             [r.overall["median_ori_deg"] for r in results]),
                  "mean": ([r.overall["mean_pos_m"] for r in results], [r.overall["mean_ori_deg"] for r in results])}
        columns += [Column("median pos [m]"), Column("median ori [deg]", "{:.2f}")]
    columns += [Column("mean pos [m]"), Column("mean ori [deg]", "{:.2f}")]
    columns += [Column(k[len("recall_"):].replace("_", " / ") + " [%]", **pct) for k in recalls]
    columns += [Column("failed", "{:.0f}"), Column("frames", "{:.0f}"), Column("file")]
    rows = []
    for i, r in enumerate(results):
        row = [i + 1, r.label, r.epoch, r.overall["median_pos_m"], r.overall["median_ori_deg"]]
        if multi_scene:
            row += [_scene_value(r, s, k) for s in scenes for k in ("median_pos_m", "median_ori_deg")]
            row += [r.overall.get("scene_acc")]
        row += [r.overall["mean_pos_m"], r.overall["mean_ori_deg"]] + [r.overall[k] for k in recalls]
        row += [r.overall["n_failed"], r.overall["n_frames"], r.path.name]
        rows.append(row)

    per_scene = frames_by_scene(best.frames)
    cdf = {s: (d["pos"], d["ori"]) for s, d in per_scene.items()}
    if len(cdf) > 1:
        cdf["all"] = (np.concatenate([d["pos"] for d in per_scene.values()]),
                      np.concatenate([d["ori"] for d in per_scene.values()]))
    what = "for multi-scene, the mean of the per-scene medians" if multi_scene else "all test frames"
    data = {"model": model_name, "multi_scene": multi_scene, "checkpoints_dir": str(checkpoints_dir),
            "test_set": test_set, "best": best.label, "best_index": best_index,
            "checkpoints": [{"label": r.label, "file": r.path.name, "epoch": r.epoch, "overall": r.overall,
                             "scenes": r.scenes, "scene_acc": r.scene_acc} for r in results],
            "skipped": [[p.name, reason] for p, reason in skipped]}
    return BatchReport(
        title=f"Batch evaluation: {model_name} on {test_set}", facts=list(facts), labels=labels, curves=curves,
        columns=columns, rows=rows, best_index=best_index, best_rule=BEST_RULE.format(what=what),
        cdf_errors=cdf, positions={s: (d["t_gt"], d["t_pred"]) for s, d in per_scene.items()},
        skipped=[(p.name, reason) for p, reason in skipped], data=data,
        hidden_curves=() if multi_scene else ("mean",))


def format_batch(batch: BatchResult) -> str:
    """A short text table for the console: one line per checkpoint, the best marked."""
    width = max(len(r.label) for r in batch.results)
    lines = [f"{'checkpoint'.ljust(width)}  {'median pos [m]':>14}  {'median ori [deg]':>16}"]
    for r in batch.results:
        mark = "  <- best" if r is batch.best else ""
        lines.append(f"{r.label.ljust(width)}  {r.overall['median_pos_m']:14.4f}  "
                     f"{r.overall['median_ori_deg']:16.3f}{mark}")
    return "\n".join(lines)
