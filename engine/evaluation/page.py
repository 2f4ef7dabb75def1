"""Self-contained HTML reports (batch evaluation, robustness): error curves, a sortable table, CDFs, a 3D view.

The page embeds plotly.js, so it opens offline and survives being copied or mailed as one file (about 5 MB,
small next to the checkpoints it describes). Each figure is stored as plotly JSON in a
``<script type="application/json">`` block that a few lines of JS render; :func:`read_embedded_json` reads
the same blocks back, for tests and tools. Nothing here opens a browser.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from util import jsonio
from util.io import atomic_write_text

# The element id of the embedded data, stable so that tools can find it: <script type="application/json" id="...">.
DATA_ID = "batch-eval-data"

MAX_CDF_POINTS = 1000  # per curve; more frames are drawn at evenly spaced quantiles
MAX_POSITION_POINTS = 5000  # per scene; more frames are drawn with a uniform stride
MAX_ERROR_SEGMENTS = 2000  # per scene; pred-to-gt segments beyond this would clutter the 3D view


@dataclass
class Column:
    """One table column: header, cell format for numbers, and whether to show values in percent."""

    header: str
    fmt: str = "{:.3f}"
    percent: bool = False


@dataclass
class Section:
    """An extra part of a report page after its main table: a heading, a note, a table and/or a figure."""

    heading: str
    note: str = ""
    columns: list[Column] | None = None
    rows: list[list] | None = None
    figure: go.Figure | None = None


@dataclass
class BatchReport:
    """Everything the page shows, as plain data.

    A batch evaluation has one x-axis entry and one table row per checkpoint and marks the best one; the
    robustness report (``best_index=None``) has one x-axis entry per test condition, one series per
    checkpoint and no 3D view (``positions`` empty).
    """

    title: str
    facts: list[tuple[str, str]]  # (key, value) lines under the title
    labels: list[str]  # x axis of the error curves
    curves: dict[str, tuple[list[float], list[float]]]  # series -> (position m, orientation deg)
    columns: list[Column]
    rows: list[list]  # one cell per column: str, int, float or None
    best_index: int | None
    best_rule: str
    cdf_errors: dict[str, tuple[np.ndarray, np.ndarray]]  # group -> (pos_err_N, ori_err_N), best checkpoint
    positions: dict[str, tuple[np.ndarray, np.ndarray]]  # scene -> (t_gt_N3, t_pred_N3), best checkpoint
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    data: dict = field(default_factory=dict)  # embedded as JSON (id ``batch-eval-data``)
    hidden_curves: tuple[str, ...] = ()  # series shown only after a click on the legend
    x_title: str = "checkpoint"  # what the x axis and the table rows are
    table_title: str = "Checkpoints"
    skipped_title: str = "Skipped checkpoints"
    cdf_note: str = ""  # what the CDF groups are, when not the best's scenes
    # Extra curve figures, fig id -> (heading, y titles (position, orientation), series -> (pos, ori)).
    more_curves: dict[str, tuple[str, tuple[str, str], dict]] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)  # after the main table, in order


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def script_json(obj) -> str:
    """Strict JSON (:mod:`util.jsonio`) that is safe inside a <script> element (no '<', so no '</script>')."""
    return jsonio.dumps(obj, separators=(",", ":")).replace("<", "\\u003c")


def read_embedded_json(page: str, element_id: str):
    """Parse the ``<script type="application/json" id=element_id>`` block of a report page."""
    match = re.search(
        r'<script type="application/json" id="%s"[^>]*>(.*?)</script>' % re.escape(element_id), page, re.S
    )
    if match is None:
        raise KeyError(f"no JSON block with id {element_id!r}")
    return json.loads(match.group(1))


def figure_dict(fig: go.Figure) -> dict:
    # Traces are built from Python lists: plotly would encode numpy arrays as base64 typed arrays.
    return json.loads(pio.to_json(fig, validate=True, pretty=False))


# Figures -----------------------------------------------------------------------------------------------------
def error_curves_figure(
    labels: Sequence[str],
    curves: dict[str, tuple[list[float], list[float]]],
    best_index: int | None,
    hidden: Sequence[str] = (),
    x_title: str = "checkpoint",
    titles: tuple[str, str] = ("Position error [m]", "Orientation error [deg]"),
) -> go.Figure:
    """Position (top) and orientation (bottom) error against checkpoint (or condition), one trace per series."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=titles)
    x = list(labels)
    colors = pio.templates["plotly"].layout.colorway
    for k, (name, (pos, ori)) in enumerate(curves.items()):
        bold = name in ("average", "median")
        style = dict(
            mode="lines+markers",
            legendgroup=name,
            visible="legendonly" if name in hidden else True,
            line=dict(
                width=3 if bold else 1.5,
                color="black" if name == "average" else colors[k % len(colors)],
                dash="dot" if name == "mean" else None,
            ),
        )
        fig.add_trace(go.Scatter(x=x, y=[_finite_or_none(v) for v in pos], name=name, **style), row=1, col=1)
        fig.add_trace(
            go.Scatter(x=x, y=[_finite_or_none(v) for v in ori], name=name, showlegend=False, **style), row=2, col=1
        )
    # Category axes place shapes at the category's index.
    if best_index is not None:
        for row in (1, 2):
            fig.add_vline(x=best_index, line=dict(color="#d62728", width=1, dash="dash"), row=row, col=1)
        fig.add_annotation(
            x=best_index,
            y=1.0,
            xref="x",
            yref="paper",
            text="best",
            showarrow=False,
            yanchor="bottom",
            font=dict(color="#d62728"),
        )
    fig.update_xaxes(type="category", title_text=x_title, row=2, col=1)
    fig.update_xaxes(type="category", row=1, col=1)
    fig.update_layout(
        height=620,
        margin=dict(l=60, r=20, t=50, b=60),
        hovermode="x unified",
        legend=dict(title="series (click to toggle)"),
    )
    return fig


def _cdf_points(errors_N: np.ndarray) -> tuple[list[float], list[float]]:
    """(error, fraction of all frames with error <= it); failures (inf) never reach the curve."""
    err = np.sort(np.asarray(errors_N, dtype=np.float64))
    n = err.size
    finite = err[np.isfinite(err)]
    if finite.size == 0:
        return [], []
    frac = np.arange(1, finite.size + 1) / n
    if finite.size > MAX_CDF_POINTS:
        idx = np.unique(np.linspace(0, finite.size - 1, MAX_CDF_POINTS).round().astype(int))
        finite, frac = finite[idx], frac[idx]
    # Starts at (0, 0); drawn as steps (line shape "hv"), as an empirical CDF is.
    return [0.0] + [float(f"{v:.6g}") for v in finite], [0.0] + [float(f"{v:.6g}") for v in frac]


def cdf_figure(cdf_errors: dict[str, tuple[np.ndarray, np.ndarray]]) -> go.Figure:
    """Cumulative distribution of position and orientation errors, one curve per group."""
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=("Position error CDF", "Orientation error CDF")
    )
    colors = pio.templates["plotly"].layout.colorway
    for k, (name, (pos, ori)) in enumerate(cdf_errors.items()):
        color = "black" if name == "all" else colors[k % len(colors)]
        for col, errors in ((1, pos), (2, ori)):
            x, y = _cdf_points(errors)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    line=dict(color=color, width=2.5 if name == "all" else 1.5, shape="hv"),
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="position error [m]", row=1, col=1)
    fig.update_xaxes(title_text="orientation error [deg]", row=1, col=2)
    fig.update_yaxes(title_text="fraction of frames", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=420, margin=dict(l=60, r=20, t=50, b=50))
    return fig


def xyz(points_N3: np.ndarray) -> dict:
    pts = np.asarray(points_N3, dtype=np.float64).reshape(-1, 3)
    return {axis: [_finite_or_none(round(float(v), 5)) for v in pts[:, i]] for i, axis in enumerate("xyz")}


def positions_figure(positions: dict[str, tuple[np.ndarray, np.ndarray]]) -> go.Figure:
    """Ground-truth and predicted camera centres per scene, with pred-to-gt segments; first scene shown."""
    fig = go.Figure()
    for k, (scene, (t_gt_N3, t_pred_N3)) in enumerate(positions.items()):
        t_gt_N3, t_pred_N3 = np.asarray(t_gt_N3).reshape(-1, 3), np.asarray(t_pred_N3).reshape(-1, 3)
        stride = max(1, math.ceil(len(t_gt_N3) / MAX_POSITION_POINTS))
        gt, pred = t_gt_N3[::stride], t_pred_N3[::stride]
        visible = True if k == 0 else "legendonly"
        suffix = f" (every {stride}th frame)" if stride > 1 else ""
        fig.add_trace(
            go.Scatter3d(
                **xyz(gt),
                mode="markers",
                name=f"{scene} ground truth{suffix}",
                legendgroup=scene,
                visible=visible,
                marker=dict(size=3, color="#1f77b4"),
            )
        )
        fig.add_trace(
            go.Scatter3d(
                **xyz(pred),
                mode="markers",
                name=f"{scene} predicted",
                legendgroup=scene,
                visible=visible,
                marker=dict(size=3, color="#ff7f0e"),
            )
        )
        seg_stride = max(1, math.ceil(len(gt) / MAX_ERROR_SEGMENTS))
        seg = np.full((len(gt[::seg_stride]) * 3, 3), np.nan)
        seg[0::3], seg[1::3] = gt[::seg_stride], pred[::seg_stride]
        fig.add_trace(
            go.Scatter3d(
                **xyz(seg),
                mode="lines",
                name=f"{scene} error",
                legendgroup=scene,
                visible=visible,
                line=dict(color="rgba(90,90,90,0.7)", width=2),
                hoverinfo="skip",
                connectgaps=False,
            )
        )
    fig.update_layout(
        height=640,
        margin=dict(l=0, r=0, t=30, b=0),
        scene=dict(aspectmode="data", xaxis_title="x [m]", yaxis_title="y [m]", zaxis_title="z [m]"),
        legend=dict(title="click a scene to show or hide it"),
    )
    return fig


# Page -------------------------------------------------------------------------------------------------------
def _cell(value, column: Column) -> tuple[str, str]:
    """(text shown, sort key) of one table cell; missing and non-finite values sort last."""
    if value is None:
        return "", "Infinity"
    if isinstance(value, str):
        return html.escape(value), html.escape(value)
    value = float(value)
    if math.isnan(value):
        return "-", "Infinity"
    if math.isinf(value):
        return ("inf" if value > 0 else "-inf"), ("Infinity" if value > 0 else "-Infinity")
    shown = column.fmt.format(100.0 * value if column.percent else value)
    return shown, repr(value)


def sortable_table(columns: Sequence[Column], rows: Sequence[Sequence], best_index: int | None) -> str:
    """An HTML table whose headers sort it on click (see the JS in :func:`render_batch_report`)."""
    head = "".join(f'<th title="click to sort">{html.escape(c.header)}</th>' for c in columns)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, (value, column) in enumerate(zip(row, columns)):
            shown, key = _cell(value, column)
            if j == 0:  # the first column holds the evaluation order: sorting by it restores the order
                key = str(i)
            if i == best_index and j == 1:
                shown += ' <span class="badge">best</span>'
            cells.append(f'<td data-sort="{key}">{shown}</td>')
        row_class = ' class="best"' if i == best_index else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return f'<table id="results" class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1300px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; font-family: monospace; word-break: break-all; }
.rule { background: #f6f8fa; border-left: 4px solid #d62728; padding: 8px 12px; }
.table-wrap { overflow-x: auto; }
table.sortable { border-collapse: collapse; font-size: 0.9em; }
table.sortable th, table.sortable td { border: 1px solid #ddd; padding: 4px 8px; text-align: right;
                                       white-space: nowrap; }
table.sortable td:nth-child(2) { text-align: left; }
table.sortable th { background: #f0f0f0; cursor: pointer; user-select: none; position: sticky; top: 0; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
tr.best td { background: #fff3c4; font-weight: 600; }
.badge { background: #d62728; color: white; border-radius: 4px; padding: 0 5px; font-size: 0.8em; }
.plot { width: 100%; }
"""

# Renders every figure block, and sorts the table on a header click (numbers numerically, missing values last).
JS = """
document.querySelectorAll('script.plotly-figure').forEach(function (el) {
  var fig = JSON.parse(el.textContent);
  Plotly.newPlot(el.getAttribute('data-target'), fig.data, fig.layout, {responsive: true, displaylogo: false});
});
function sortKey(cell) {
  var v = cell.getAttribute('data-sort'), n = parseFloat(v);
  return isNaN(n) ? v : n;
}
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    Array.prototype.slice.call(body.rows).sort(function (a, b) {
      var x = sortKey(a.cells[col]), y = sortKey(b.cells[col]);
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _section_html(k: int, section: Section) -> str:
    parts = [f"<h2>{html.escape(section.heading)}</h2>"]
    if section.note:
        parts.append(f"<p>{html.escape(section.note)}</p>")
    if section.columns is not None:
        parts.append(f'<div class="table-wrap">{sortable_table(section.columns, section.rows or [], None)}</div>')
    if section.figure is not None:
        parts.append(f'<div id="fig-section-{k}-plot" class="plot"></div>')
    return "\n".join(parts) + "\n"


def render_batch_report(report: BatchReport) -> str:
    """The complete HTML page (plotly.js inline)."""
    figures = {
        "fig-errors": error_curves_figure(
            report.labels, report.curves, report.best_index, report.hidden_curves, report.x_title
        )
    }
    for fid, (_, titles, curves) in report.more_curves.items():
        figures[fid] = error_curves_figure(
            report.labels, curves, report.best_index, x_title=report.x_title, titles=titles
        )
    figures["fig-cdf"] = cdf_figure(report.cdf_errors)
    for k, section in enumerate(report.sections):
        if section.figure is not None:
            figures[f"fig-section-{k}"] = section.figure
    if report.positions:
        figures["fig-positions"] = positions_figure(report.positions)
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in report.facts)
    skipped = ""
    if report.skipped:
        items = "".join(
            f"<li><code>{html.escape(name)}</code>: {html.escape(reason)}</li>" for name, reason in report.skipped
        )
        skipped = f"<h2>{html.escape(report.skipped_title)}</h2><ul>{items}</ul>"
    blocks = "\n".join(
        f'<script type="application/json" id="{fid}" class="plotly-figure" '
        f'data-target="{fid}-plot">{script_json(figure_dict(fig))}</script>'
        for fid, fig in figures.items()
    )
    more = "".join(
        f'<h2>{html.escape(heading)}</h2>\n<div id="{fid}-plot" class="plot"></div>\n'
        for fid, (heading, _, _) in report.more_curves.items()
    )
    if report.best_index is not None:
        best = html.escape(report.labels[report.best_index])
        rule = f'<p class="rule">Best checkpoint: <b>{best}</b>. {html.escape(report.best_rule)}</p>'
        table_note = "The best checkpoint is highlighted."
        cdf_heading = f"Error CDFs of the best checkpoint ({best})"
    else:
        rule = f'<p class="rule">{html.escape(report.best_rule)}</p>' if report.best_rule else ""
        table_note, cdf_heading = "", "Error CDFs"
    sections = "".join(_section_html(k, section) for k, section in enumerate(report.sections))
    positions = ""
    if report.positions:
        positions = f"""<h2>Camera positions of the best checkpoint ({best})</h2>
<p>Ground truth (blue) and predicted (orange) camera centres; grey segments join each prediction to its
ground truth. Drag to rotate; click a legend entry to show or hide a scene.</p>
<div id="fig-positions-plot" class="plot"></div>
"""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(report.title)}</title>
<style>{CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head>
<body>
<h1>{html.escape(report.title)}</h1>
<dl class="facts">{facts}</dl>
{rule}
<h2>Error against {html.escape(report.x_title)}</h2>
<div id="fig-errors-plot" class="plot"></div>
{more}<h2>{html.escape(report.table_title)}</h2>
<p>Click a column header to sort; click it again to reverse. {table_note}</p>
<div class="table-wrap">{sortable_table(report.columns, report.rows, report.best_index)}</div>
{sections}<h2>{cdf_heading}</h2>
<p>Fraction of frames whose error is at most x; failed estimates never count. {html.escape(report.cdf_note)}</p>
<div id="fig-cdf-plot" class="plot"></div>
{positions}{skipped}
{blocks}
<script type="application/json" id="{DATA_ID}">{script_json(report.data)}</script>
<script type="text/javascript">{JS}</script>
</body>
</html>
"""


def write_batch_report(path: str | Path, report: BatchReport) -> Path:
    """Render the page and write it atomically."""
    return atomic_write_text(path, render_batch_report(report))
