"""The outputs of a robustness report: the CSV, the HTML page's data and the console table.

Columns: docs/robustness.md.
"""
from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Sequence

import numpy as np

from engine.records import frames_by_scene
from util.report import BatchReport, Column

if TYPE_CHECKING:
    from engine.robustness import RobustnessResult


def _recalls(result: RobustnessResult) -> list[str]:
    return [k for k in next(iter(result.records.values())).overall if k.startswith("recall_")]


def _rows(result: RobustnessResult):
    """(entry, condition, record) in report order: by checkpoint, then condition."""
    for e in result.entries:
        for c in result.conditions:
            r = result.records.get((e.label, c.name))
            if r is not None:
                yield e, c, r


def results_csv(result: RobustnessResult) -> str:
    """One row per checkpoint and condition (columns in docs/robustness.md)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    recalls = _recalls(result)
    stats = ["median_pos_m", "median_ori_deg", "mean_pos_m", "mean_ori_deg"]
    w.writerow(["model", "checkpoint", "condition", *stats, "pos_change_vs_base", "ori_change_vs_base",
                "rank", *recalls, "n_frames", "n_failed", "scene_acc", "base", "file", "test_files"])
    for e, c, r in _rows(result):
        w.writerow([e.model_name, e.label, c.name, *(r.overall[k] for k in stats),
                    result.change(e.label, c.name, "median_pos_m"), result.change(e.label, c.name, "median_ori_deg"),
                    result.rank(e.label, c.name), *(r.overall[k] for k in recalls), r.overall["n_frames"],
                    r.overall["n_failed"], r.overall.get("scene_acc", ""), result.base, str(e.path), c.describe()])
    return buf.getvalue()


def build_report(result: RobustnessResult, facts: Sequence[tuple[str, str]]) -> BatchReport:
    """The page: error against condition per checkpoint, relative degradation, a table, CDFs per condition."""
    names = [c.name for c in result.conditions]

    def series(value):
        return {e.label: ([value(e, c, "median_pos_m") for c in names], [value(e, c, "median_ori_deg") for c in names])
                for e in result.entries}

    absolute = series(lambda e, c, k: (r.overall[k] if (r := result.records.get((e.label, c))) else None))
    relative = series(lambda e, c, k: 100.0 * result.change(e.label, c, k))
    recalls = _recalls(result)
    pct = dict(fmt="{:.1f}", percent=True)
    columns = ([Column("#", "{:.0f}"), Column("checkpoint"), Column("condition"), Column("median pos [m]"),
                Column("median ori [deg]", "{:.2f}"), Column(f"pos vs {result.base} [%]", **pct),
                Column(f"ori vs {result.base} [%]", **pct), Column("rank", "{:.0f}"), Column("mean pos [m]"),
                Column("mean ori [deg]", "{:.2f}")]
               + [Column(k[len("recall_"):].replace("_", " / ") + " [%]", **pct) for k in recalls]
               + [Column("failed", "{:.0f}"), Column("frames", "{:.0f}")])
    rows, cdf = [], {}
    for i, (e, c, r) in enumerate(_rows(result)):
        o = r.overall
        rows.append([i + 1, e.label, c.name, o["median_pos_m"], o["median_ori_deg"],
                     result.change(e.label, c.name, "median_pos_m"), result.change(e.label, c.name, "median_ori_deg"),
                     result.rank(e.label, c.name), o["mean_pos_m"], o["mean_ori_deg"], *(o[k] for k in recalls),
                     o["n_failed"], o["n_frames"]])
        per_scene = frames_by_scene(r.frames)
        if per_scene:
            cdf[f"{e.label} @ {c.name}"] = (np.concatenate([d["pos"] for d in per_scene.values()]),
                                            np.concatenate([d["ori"] for d in per_scene.values()]))
    data = {"conditions": names, "base": result.base,
            "checkpoints": [{"label": e.label, "model": e.model_name, "file": str(e.path)} for e in result.entries],
            "results": [{"checkpoint": e.label, "condition": c.name, "overall": r.overall, "scenes": r.scenes,
                         "rank": result.rank(e.label, c.name)} for e, c, r in _rows(result)],
            "skipped": [list(s) for s in result.skipped]}
    return BatchReport(
        title=f"Robustness: {', '.join(e.label for e in result.entries)} on {len(names)} conditions",
        facts=list(facts), labels=names, curves=absolute, columns=columns, rows=rows, best_index=None,
        best_rule=(f"Changes are relative to the base condition {result.base}: (error - base error) / base error. "
                   f"Rank 1 = the lowest median position error at that condition (ties: orientation)."),
        cdf_errors=cdf, positions={}, skipped=list(result.skipped), data=data, x_title="condition",
        table_title="Results", skipped_title="Skipped", cdf_note="One curve per checkpoint and condition.",
        more_curves={"fig-degradation": (f"Relative degradation from {result.base}",
                                         ("Median position error change [%]", "Median orientation error change [%]"),
                                         relative)})


def format_table(result: RobustnessResult) -> str:
    """Console table: one line per condition, median position / orientation error of each checkpoint."""
    cells = {(e.label, c.name): (f"{r.overall['median_pos_m']:.3f} m / {r.overall['median_ori_deg']:.2f} deg"
                                 if (r := result.records.get((e.label, c.name))) else "-")
             for e in result.entries for c in result.conditions}
    width = max(len("condition"), *(len(c.name) for c in result.conditions))
    widths = [max(len(e.label), *(len(cells[(e.label, c.name)]) for c in result.conditions)) for e in result.entries]
    lines = ["condition".ljust(width) + "".join(f"  {e.label:>{w}}" for e, w in zip(result.entries, widths))]
    for c in result.conditions:
        lines.append(c.name.ljust(width) + "".join(f"  {cells[(e.label, c.name)]:>{w}}"
                                                   for e, w in zip(result.entries, widths)))
    return "\n".join(lines)
