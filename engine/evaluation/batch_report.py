"""The outputs of a batch evaluation: the CSV (reference columns first), the HTML report's data, the console table.

See docs/batch_eval.md for the columns.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.evaluation.page import BatchReport, Column
from engine.evaluation.records import CheckpointResult, frames_by_scene
from engine.training.checkpoints import checkpoint_number

if TYPE_CHECKING:
    from engine.evaluation.batch_eval import BatchResult

# Which set the best checkpoint was chosen on, keyed by "a validation set was given".
CHOSEN_ON = {
    True: "the validation set",
    False: "the test set itself (an optimistic estimate; --val_labels chooses on a validation set)",
}
BEST_RULE = {
    True: "Best = chosen on the validation set: the lowest median position error on it ({what}); ties go "
    "to the lower median orientation error, then to the earlier checkpoint. The test set played no "
    "part in the choice; its errors are shown.",
    False: "Best = chosen on the test set itself: the lowest median position error ({what}); ties go to "
    "the lower median orientation error, then to the earlier checkpoint. A checkpoint picked on "
    "the test set gives an optimistic estimate of its error; pass --val_labels to choose on a "
    "validation set.",
}
SINGLE_REF_COLUMNS = ["checkpoint", "Model", "Median Position Error [m]", "Median Orientation Error[deg]"]
VAL_COLUMNS = ["val_median_pos_m", "val_median_ori_deg"]  # multi-scene: means of the per-scene medians


def _scene_names(results: Sequence[CheckpointResult]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [s["scene"] for s in r.scenes if s["scene"] not in names]
    return names


def _recall_keys(results: Sequence[CheckpointResult]) -> list[str]:
    return [k for k in results[0].overall if k.startswith("recall_")]


def _scene_value(r: CheckpointResult, scene: str, key: str):
    return next((s[key] for s in r.scenes if s["scene"] == scene), None)


def best_column(validated: bool) -> str:
    """The CSV column that marks the best checkpoint: it names the set the choice was made on."""
    return "best_on_val" if validated else "best_on_test"


def _val_cells(val: dict[Path, CheckpointResult] | None, r: CheckpointResult) -> list:
    if val is None:
        return []
    v = val[r.path].overall
    return [v["median_pos_m"], v["median_ori_deg"]]


def results_csv(
    results: Sequence[CheckpointResult],
    best: CheckpointResult,
    model_name: str,
    multi_scene: bool,
    val: dict[Path, CheckpointResult] | None = None,
) -> str:
    """The CSV: the reference's columns first, then ours (see docs/batch_eval.md). ``val``: the validation
    record of each checkpoint file, when the best was chosen on a validation set."""
    buf = io.StringIO()
    w = csv.writer(buf)
    recalls = _recall_keys(results)
    ours = ["epoch", "mean_pos_m", "mean_ori_deg"] + recalls + ["n_frames", "n_failed"]
    tail = (VAL_COLUMNS if val is not None else []) + [best_column(val is not None)]
    if multi_scene:
        scenes = _scene_names(results)
        w.writerow(
            ["model"]
            + [f"{s}_{c}" for s in scenes for c in ("x", "q")]
            + ["avrg_x", "avrg_q"]
            + ["checkpoint"]
            + ours
            + [f"{s}_scene_acc" for s in scenes]
            + ["scene_acc"]
            + tail
        )
        for r in results:
            n = checkpoint_number(r.path)
            w.writerow(
                [n if n is not None else r.label]
                + [_scene_value(r, s, k) for s in scenes for k in ("median_pos_m", "median_ori_deg")]
                + [r.overall["median_pos_m"], r.overall["median_ori_deg"], str(r.path)]
                + [r.epoch]
                + [r.overall[k] for k in ours[1:]]
                + [r.scene_acc.get(s) for s in scenes]
                + [r.overall["scene_acc"]]
                + _val_cells(val, r)
                + [int(r is best)]
            )
    else:
        w.writerow(SINGLE_REF_COLUMNS + ours + tail)
        for r in results:
            w.writerow(
                [r.label, str(r.path), r.overall["median_pos_m"], r.overall["median_ori_deg"], r.epoch]
                + [r.overall[k] for k in ours[1:]]
                + _val_cells(val, r)
                + [int(r is best)]
            )
    return buf.getvalue()


def build_report(
    results: Sequence[CheckpointResult],
    best: CheckpointResult,
    skipped: Sequence[tuple[Path, str]],
    *,
    model_name: str,
    multi_scene: bool,
    checkpoints_dir: Path,
    test_set: str,
    facts: Sequence[tuple[str, str]],
    val: dict[Path, CheckpointResult] | None = None,
) -> BatchReport:
    """Assemble the plain data of the HTML page (``val``: the validation record per checkpoint file, when the
    best was chosen on a validation set)."""
    labels = [r.label for r in results]
    best_index = list(results).index(best)
    recalls = _recall_keys(results)
    scenes = _scene_names(results)
    pct = dict(fmt="{:.1f}", percent=True)
    columns = [Column("#", "{:.0f}"), Column("checkpoint"), Column("epoch", "{:.0f}")]
    if multi_scene:
        curves = {
            s: (
                [_scene_value(r, s, "median_pos_m") for r in results],
                [_scene_value(r, s, "median_ori_deg") for r in results],
            )
            for s in scenes
        }
        curves["average"] = (
            [r.overall["median_pos_m"] for r in results],
            [r.overall["median_ori_deg"] for r in results],
        )
        columns += [Column("avrg median pos [m]"), Column("avrg median ori [deg]", "{:.2f}")]
        columns += [c for s in scenes for c in (Column(f"{s} pos [m]"), Column(f"{s} ori [deg]", "{:.2f}"))]
        columns += [Column("scene acc [%]", **pct)]
    else:
        curves = {
            "median": ([r.overall["median_pos_m"] for r in results], [r.overall["median_ori_deg"] for r in results]),
            "mean": ([r.overall["mean_pos_m"] for r in results], [r.overall["mean_ori_deg"] for r in results]),
        }
        columns += [Column("median pos [m]"), Column("median ori [deg]", "{:.2f}")]
    if val is not None:
        name = "validation average" if multi_scene else "validation median"
        curves[name] = (
            [val[r.path].overall["median_pos_m"] for r in results],
            [val[r.path].overall["median_ori_deg"] for r in results],
        )
        columns += [Column("val median pos [m]"), Column("val median ori [deg]", "{:.2f}")]
    columns += [Column("mean pos [m]"), Column("mean ori [deg]", "{:.2f}")]
    columns += [Column(k[len("recall_") :].replace("_", " / ") + " [%]", **pct) for k in recalls]
    columns += [Column("failed", "{:.0f}"), Column("frames", "{:.0f}"), Column("file")]
    rows = []
    for i, r in enumerate(results):
        row = [i + 1, r.label, r.epoch, r.overall["median_pos_m"], r.overall["median_ori_deg"]]
        if multi_scene:
            row += [_scene_value(r, s, k) for s in scenes for k in ("median_pos_m", "median_ori_deg")]
            row += [r.overall.get("scene_acc")]
        row += _val_cells(val, r)
        row += [r.overall["mean_pos_m"], r.overall["mean_ori_deg"]] + [r.overall[k] for k in recalls]
        row += [r.overall["n_failed"], r.overall["n_frames"], r.path.name]
        rows.append(row)

    per_scene = frames_by_scene(best.frames)
    cdf = {s: (d["pos"], d["ori"]) for s, d in per_scene.items()}
    if len(cdf) > 1:
        cdf["all"] = (
            np.concatenate([d["pos"] for d in per_scene.values()]),
            np.concatenate([d["ori"] for d in per_scene.values()]),
        )
    what = (
        "the mean of the per-scene medians"
        if multi_scene
        else "over all validation frames"
        if val is not None
        else "over all test frames"
    )
    data = {
        "model": model_name,
        "multi_scene": multi_scene,
        "checkpoints_dir": str(checkpoints_dir),
        "test_set": test_set,
        "best": best.label,
        "best_index": best_index,
        "best_chosen_on": "validation" if val is not None else "test",
        "checkpoints": [
            {
                "label": r.label,
                "file": r.path.name,
                "epoch": r.epoch,
                "overall": r.overall,
                "scenes": r.scenes,
                "scene_acc": r.scene_acc,
                **({"val_overall": val[r.path].overall, "val_scenes": val[r.path].scenes} if val is not None else {}),
            }
            for r in results
        ],
        "skipped": [[p.name, reason] for p, reason in skipped],
    }
    return BatchReport(
        title=f"Batch evaluation: {model_name} on {test_set}",
        facts=list(facts),
        labels=labels,
        curves=curves,
        columns=columns,
        rows=rows,
        best_index=best_index,
        best_rule=BEST_RULE[val is not None].format(what=what),
        cdf_errors=cdf,
        positions={s: (d["t_gt"], d["t_pred"]) for s, d in per_scene.items()},
        skipped=[(p.name, reason) for p, reason in skipped],
        data=data,
        hidden_curves=() if multi_scene else ("mean",),
    )


def format_batch(batch: BatchResult) -> str:
    """A short text table for the console: one line per checkpoint (test errors, then validation errors when
    there is a validation set), the best marked, and which set it was chosen on."""
    validated = batch.val_labels is not None
    width = max(len(r.label) for r in batch.results)
    head = f"{'checkpoint'.ljust(width)}  {'median pos [m]':>14}  {'median ori [deg]':>16}"
    lines = [head + (f"  {'val pos [m]':>11}  {'val ori [deg]':>13}" if validated else "")]
    for r in batch.results:
        line = f"{r.label.ljust(width)}  {r.overall['median_pos_m']:14.4f}  {r.overall['median_ori_deg']:16.3f}"
        if validated:
            v = batch.val[r.path].overall
            line += f"  {v['median_pos_m']:11.4f}  {v['median_ori_deg']:13.3f}"
        mark = f"  <- {best_column(validated)}" if r is batch.best else ""
        lines.append(line + mark)
    lines.append(f"best: {batch.best.label}, chosen on {CHOSEN_ON[validated]}")
    if batch.baselines or batch.baseline_note:
        from engine.evaluation.baselines import format_baselines

        lines.append(format_baselines(batch.baselines) if batch.baselines else f"no baselines: {batch.baseline_note}")
    return "\n".join(lines)
