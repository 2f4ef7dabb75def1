"""The outputs of a robustness report: the CSV, the HTML page's data and the console table.

Columns: docs/robustness.md.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from datasets.corruptions import CORRUPTIONS
from engine.evaluation.page import BatchReport, Column, Section
from engine.evaluation.records import frames_by_scene

if TYPE_CHECKING:
    from engine.robustness.report import RobustnessResult


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
    w.writerow(
        [
            "model",
            "checkpoint",
            "condition",
            *stats,
            "pos_change_vs_base",
            "ori_change_vs_base",
            "rank",
            *recalls,
            "n_frames",
            "n_failed",
            "scene_acc",
            "base",
            "file",
            "test_files",
            "seed",
            "group",
        ]
    )
    for e, c, r in _rows(result):
        w.writerow(
            [
                e.model_name,
                e.label,
                c.name,
                *(r.overall[k] for k in stats),
                result.change(e.label, c.name, "median_pos_m"),
                result.change(e.label, c.name, "median_ori_deg"),
                result.rank(e.label, c.name),
                *(r.overall[k] for k in recalls),
                r.overall["n_frames"],
                r.overall["n_failed"],
                r.overall.get("scene_acc", ""),
                result.base,
                str(e.path),
                c.describe(),
                "" if e.seed is None else e.seed,
                e.group,
            ]
        )
    for name, c, r in _baseline_rows(result):
        w.writerow(
            [
                name,
                name,
                c.name,
                *(r.overall[k] for k in stats),
                _change(result, name, c.name, "median_pos_m"),
                _change(result, name, c.name, "median_ori_deg"),
                "",
                *(r.overall[k] for k in recalls),
                r.overall["n_frames"],
                r.overall["n_failed"],
                "",
                result.base,
                str(r.path),
                c.describe(),
                "",
                "baseline",
            ]
        )
    return buf.getvalue()


def _baseline_rows(result: RobustnessResult):
    """(baseline name, condition, record) in report order: by baseline, then condition."""
    names = list(dict.fromkeys(name for name, _ in result.baseline_records))
    for name in names:
        for c in result.conditions:
            r = result.baseline_records.get((name, c.name))
            if r is not None:
                yield name, c, r


def _change(result: RobustnessResult, name: str, condition: str, key: str) -> float:
    """A baseline's relative change from the base condition (NaN if unknown)."""
    base, here = result.baseline_records.get((name, result.base)), result.baseline_records.get((name, condition))
    if base is None or here is None or not base.overall[key] > 0:
        return float("nan")
    return (here.overall[key] - base.overall[key]) / base.overall[key]


def build_report(result: RobustnessResult, facts: Sequence[tuple[str, str]]) -> BatchReport:
    """The page: error against condition per checkpoint, relative degradation, a table, CDFs per condition."""
    names = [c.name for c in result.conditions]

    def series(value):
        return {
            e.label: ([value(e, c, "median_pos_m") for c in names], [value(e, c, "median_ori_deg") for c in names])
            for e in result.entries
        }

    absolute = series(lambda e, c, k: r.overall[k] if (r := result.records.get((e.label, c))) else None)
    relative = series(lambda e, c, k: 100.0 * result.change(e.label, c, k))
    for name in dict.fromkeys(name for name, _ in result.baseline_records):
        absolute[name] = tuple(
            [(r.overall[k] if (r := result.baseline_records.get((name, c))) else None) for c in names]
            for k in ("median_pos_m", "median_ori_deg")
        )
    recalls = _recalls(result)
    pct = dict(fmt="{:.1f}", percent=True)
    columns = (
        [
            Column("#", "{:.0f}"),
            Column("checkpoint"),
            Column("condition"),
            Column("median pos [m]"),
            Column("median ori [deg]", "{:.2f}"),
            Column(f"pos vs {result.base} [%]", **pct),
            Column(f"ori vs {result.base} [%]", **pct),
            Column("rank", "{:.0f}"),
            Column("mean pos [m]"),
            Column("mean ori [deg]", "{:.2f}"),
        ]
        + [Column(k[len("recall_") :].replace("_", " / ") + " [%]", **pct) for k in recalls]
        + [Column("failed", "{:.0f}"), Column("frames", "{:.0f}")]
    )
    rows, cdf = [], {}
    for i, (e, c, r) in enumerate(_rows(result)):
        o = r.overall
        rows.append(
            [
                i + 1,
                e.label,
                c.name,
                o["median_pos_m"],
                o["median_ori_deg"],
                result.change(e.label, c.name, "median_pos_m"),
                result.change(e.label, c.name, "median_ori_deg"),
                result.rank(e.label, c.name),
                o["mean_pos_m"],
                o["mean_ori_deg"],
                *(o[k] for k in recalls),
                o["n_failed"],
                o["n_frames"],
            ]
        )
        per_scene = frames_by_scene(r.frames)
        if per_scene:
            cdf[f"{e.label} @ {c.name}"] = (
                np.concatenate([d["pos"] for d in per_scene.values()]),
                np.concatenate([d["ori"] for d in per_scene.values()]),
            )
    for name, c, r in _baseline_rows(result):
        o = r.overall
        rows.append(
            [
                len(rows) + 1,
                f"{name} (baseline)",
                c.name,
                o["median_pos_m"],
                o["median_ori_deg"],
                _change(result, name, c.name, "median_pos_m"),
                _change(result, name, c.name, "median_ori_deg"),
                None,
                o["mean_pos_m"],
                o["mean_ori_deg"],
                *(o[k] for k in recalls),
                o["n_failed"],
                o["n_frames"],
            ]
        )
    data = {
        "conditions": names,
        "base": result.base,
        "checkpoints": [{"label": e.label, "model": e.model_name, "file": str(e.path)} for e in result.entries],
        "results": [
            {
                "checkpoint": e.label,
                "condition": c.name,
                "overall": r.overall,
                "scenes": r.scenes,
                "rank": result.rank(e.label, c.name),
            }
            for e, c, r in _rows(result)
        ],
        "baselines": [
            {"baseline": name, "condition": c.name, "overall": r.overall, "scenes": r.scenes}
            for name, c, r in _baseline_rows(result)
        ],
        "skipped": [list(s) for s in result.skipped],
    }
    return BatchReport(
        title=f"Robustness: {', '.join(e.label for e in result.entries)} on {len(names)} conditions",
        facts=list(facts),
        labels=names,
        curves=absolute,
        columns=columns,
        rows=rows,
        best_index=None,
        best_rule=(
            f"Changes are relative to the base condition {result.base}: (error - base error) / base error. "
            f"Rank 1 = the lowest median position error at that condition (ties: orientation)."
        ),
        cdf_errors=cdf,
        positions={},
        skipped=list(result.skipped),
        data=data,
        x_title="condition",
        table_title="Results",
        skipped_title="Skipped",
        cdf_note="One curve per checkpoint and condition.",
        more_curves={
            "fig-degradation": (
                f"Relative degradation from {result.base}",
                ("Median position error change [%]", "Median orientation error change [%]"),
                relative,
            )
        },
        sections=_sections(result),
    )


def _sections(result: RobustnessResult) -> list[Section]:
    from engine.robustness.compare import paired_section

    sections = [paired_section(result.paired)] if result.paired else []
    if result.corruption_rows:
        sections += corruption_sections(result.corruption_rows, result.baseline)
    return sections


def format_summaries(result: RobustnessResult) -> str:
    """The paired comparison and the corruption summary in words (empty when the report has neither)."""
    from engine.robustness.compare import format_paired

    parts = []
    if result.paired:
        parts.append(format_paired(result.paired))
    if result.corruption_rows:
        parts.append(format_corruptions(result.corruption_rows, result.baseline))
    return "\n".join(parts)


def format_table(result: RobustnessResult) -> str:
    """Console table: one line per condition, median position / orientation error of each checkpoint, then of
    each baseline."""

    def text(r) -> str:
        return f"{r.overall['median_pos_m']:.3f} m / {r.overall['median_ori_deg']:.2f} deg" if r else "-"

    columns = [
        (e.label, {c.name: text(result.records.get((e.label, c.name))) for c in result.conditions})
        for e in result.entries
    ]
    columns += [
        (name, {c.name: text(result.baseline_records.get((name, c.name))) for c in result.conditions})
        for name in dict.fromkeys(name for name, _ in result.baseline_records)
    ]
    width = max(len("condition"), *(len(c.name) for c in result.conditions))
    widths = [max(len(label), *(len(v) for v in cells.values())) for label, cells in columns]
    lines = ["condition".ljust(width) + "".join(f"  {label:>{w}}" for (label, _), w in zip(columns, widths))]
    for c in result.conditions:
        lines.append(c.name.ljust(width) + "".join(f"  {cells[c.name]:>{w}}" for (_, cells), w in zip(columns, widths)))
    return "\n".join(lines)


# Corruptions: per-corruption errors, degradation and the mean corruption error (ImageNet-C) -------------------
def _group_error(result: RobustnessResult, group: str, condition: str, metric: str) -> float | None:
    """The mean over a group's runs (seeds) of one error at one condition; None when none was evaluated."""
    values = [
        r.overall[metric]
        for e in result.entries
        if e.group == group and (r := result.records.get((e.label, condition))) is not None
    ]
    return float(np.mean(values)) if values else None


def corruption_summary(result: RobustnessResult, baseline: str) -> list[dict]:
    """Per group and corruption: median errors by severity (mean over the group's seeds), the mean relative
    degradation from the base condition, and the corruption error CE = sum_s E_s / sum_s E_s(baseline) and
    relative CE = sum_s (E_s - E_base) / sum_s (E_s(baseline) - E_base(baseline)), as in ImageNet-C, for
    position and orientation; the group's mCE is the mean of its CEs (:func:`mean_corruption_errors`)."""
    by_name: dict[str, list] = {}
    for c in result.conditions:
        if c.corruption is not None:
            by_name.setdefault(c.corruption.name, []).append(c)
    groups = list(dict.fromkeys(e.group for e in result.entries))
    rows = []
    for group in groups:
        for name, conditions in by_name.items():
            row = {
                "group": group,
                "corruption": name,
                "family": CORRUPTIONS[name].family,
                "severities": [c.corruption.severity for c in conditions],
            }
            for metric, short in (("median_pos_m", "pos"), ("median_ori_deg", "ori")):
                clean, base_clean = (_group_error(result, g, result.base, metric) for g in (group, baseline))
                errs = [_group_error(result, group, c.name, metric) for c in conditions]
                base_errs = [_group_error(result, baseline, c.name, metric) for c in conditions]
                row[f"{short}_by_severity"] = errs
                row[f"{short}_clean"] = clean
                known = None not in errs and clean is not None
                row[f"{short}_degradation"] = (
                    float(np.mean([(e - clean) / clean for e in errs])) if known and clean > 0 else float("nan")
                )
                comparable = known and None not in base_errs and base_clean is not None
                row[f"{short}_ce"] = sum(errs) / sum(base_errs) if comparable and sum(base_errs) > 0 else float("nan")
                extra_base = sum(e - base_clean for e in base_errs) if comparable else 0.0
                row[f"{short}_relative_ce"] = (
                    # Undefined where the baseline model loses nothing under this corruption (sum <= 0).
                    sum(e - clean for e in errs) / extra_base if comparable and extra_base > 0 else float("nan")
                )
            rows.append(row)
    return rows


def mean_corruption_errors(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """group -> mCE and relative mCE of position and orientation (the mean over corruptions)."""
    out = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == group]
        out[group] = {
            k: _finite_mean([r[k] for r in mine])
            for k in ("pos_ce", "ori_ce", "pos_relative_ce", "ori_relative_ce", "pos_degradation", "ori_degradation")
        }
    return out


def _finite_mean(values: Sequence[float]) -> float:
    """The mean of the finite values (NaN when there is none): an undefined relative CE is left out."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def corruption_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "model",
            "corruption",
            "family",
            "severities",
            "pos_clean_m",
            "pos_by_severity_m",
            "pos_degradation",
            "pos_ce",
            "pos_relative_ce",
            "ori_clean_deg",
            "ori_by_severity_deg",
            "ori_degradation",
            "ori_ce",
            "ori_relative_ce",
        ]
    )
    for r in rows:
        w.writerow(
            [
                r["group"],
                r["corruption"],
                r["family"],
                " ".join(map(str, r["severities"])),
                r["pos_clean"],
                " ".join(f"{e:.6g}" for e in r["pos_by_severity"] if e is not None),
                r["pos_degradation"],
                r["pos_ce"],
                r["pos_relative_ce"],
                r["ori_clean"],
                " ".join(f"{e:.6g}" for e in r["ori_by_severity"] if e is not None),
                r["ori_degradation"],
                r["ori_ce"],
                r["ori_relative_ce"],
            ]
        )
    return buf.getvalue()


def format_corruptions(rows: Sequence[dict], baseline: str) -> str:
    """Console lines: each model's mCE and mean degradation relative to the baseline model."""
    lines = [f"mean corruption error relative to {baseline} (1 = as robust as it; mean degradation from clean):"]
    for group, m in mean_corruption_errors(rows).items():
        lines.append(
            f"  {group}: mCE position {m['pos_ce']:.3f} (relative {m['pos_relative_ce']:.3f}), "
            f"orientation {m['ori_ce']:.3f} (relative {m['ori_relative_ce']:.3f}); degradation "
            f"position {100 * m['pos_degradation']:+.0f} %, orientation {100 * m['ori_degradation']:+.0f} %"
        )
    return "\n".join(lines)


def corruption_sections(rows: Sequence[dict], baseline: str) -> list[Section]:
    """The report's corruption table and one error-versus-severity figure per family."""
    f3, pct = "{:.3f}", dict(fmt="{:.1f}", percent=True)
    columns = [
        Column("model"),
        Column("corruption"),
        Column("family"),
        Column("clean pos [m]", f3),
        Column("pos degradation [%]", **pct),
        Column("pos CE", f3),
        Column("pos relative CE", f3),
        Column("clean ori [deg]", "{:.2f}"),
        Column("ori degradation [%]", **pct),
        Column("ori CE", f3),
        Column("ori relative CE", f3),
    ]
    table = [
        [
            r["group"],
            r["corruption"],
            r["family"],
            r["pos_clean"],
            r["pos_degradation"],
            r["pos_ce"],
            r["pos_relative_ce"],
            r["ori_clean"],
            r["ori_degradation"],
            r["ori_ce"],
            r["ori_relative_ce"],
        ]
        for r in rows
    ]
    means = mean_corruption_errors(rows)
    table += [
        [
            g,
            "mean (mCE)",
            "",
            None,
            m["pos_degradation"],
            m["pos_ce"],
            m["pos_relative_ce"],
            None,
            m["ori_degradation"],
            m["ori_ce"],
            m["ori_relative_ce"],
        ]
        for g, m in means.items()
    ]
    sections = [
        Section(
            "Corruptions",
            f"Median errors averaged over each model's seeds. CE = sum over severities "
            f"of the error / the same sum of {baseline}; relative CE counts only the error added to "
            f"the clean one (undefined, and left out of the mean, where {baseline} adds none); mCE = the "
            f"mean CE over corruptions (ImageNet-C). Below 1: more robust than {baseline}.",
            columns,
            table,
        )
    ]
    for family in dict.fromkeys(r["family"] for r in rows):
        fig = make_subplots(
            rows=1, cols=2, subplot_titles=("median position error [m]", "median orientation error [deg]")
        )
        for r in (r for r in rows if r["family"] == family):
            x = [0] + r["severities"]
            for col, short in ((1, "pos"), (2, "ori")):
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=[r[f"{short}_clean"]] + r[f"{short}_by_severity"],
                        mode="lines+markers",
                        name=f"{r['group']}: {r['corruption']}",
                        legendgroup=f"{r['group']}: {r['corruption']}",
                        showlegend=col == 1,
                    ),
                    row=1,
                    col=col,
                )
        fig.update_xaxes(title_text="severity (0 = clean)", dtick=1)
        fig.update_layout(height=420, margin=dict(l=50, r=20, t=40, b=40))
        sections.append(Section(f"Error against severity: {family}", "", figure=fig))
    return sections
