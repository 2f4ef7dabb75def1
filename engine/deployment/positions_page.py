"""The predict mode's page: predicted camera centres in 3D, self-contained like the evaluation reports."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from engine.evaluation.page import CSS, JS, MAX_POSITION_POINTS, figure_dict, script_json, xyz
from util.io import atomic_write_text


def predicted_positions_figure(groups: dict[str, tuple[np.ndarray, Sequence[str]]]) -> go.Figure:
    """Predicted camera centres, one trace per group (e.g. per predicted scene), image names on hover."""
    fig = go.Figure()
    for name, (t_N3, labels) in groups.items():
        t_N3 = np.asarray(t_N3).reshape(-1, 3)
        stride = max(1, math.ceil(len(t_N3) / MAX_POSITION_POINTS))
        suffix = f" (every {stride}th image)" if stride > 1 else ""
        fig.add_trace(
            go.Scatter3d(
                **xyz(t_N3[::stride]),
                mode="markers",
                name=f"{name}{suffix}",
                text=[str(s) for s in list(labels)[::stride]],
                hoverinfo="text+x+y+z",
                marker=dict(size=3),
            )
        )
    fig.update_layout(
        height=680,
        margin=dict(l=0, r=0, t=30, b=0),
        scene=dict(aspectmode="data", xaxis_title="x [m]", yaxis_title="y [m]", zaxis_title="z [m]"),
        legend=dict(title="click to show or hide"),
    )
    return fig


def write_positions_page(
    path: str | Path, title: str, facts: Sequence[tuple[str, str]], groups: dict[str, tuple[np.ndarray, Sequence[str]]]
) -> Path:
    """A self-contained page with the 3D view of :func:`predicted_positions_figure`, written atomically."""
    fid = "fig-positions"
    facts_html = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
    block = (
        f'<script type="application/json" id="{fid}" class="plotly-figure" data-target="{fid}-plot">'
        f"{script_json(figure_dict(predicted_positions_figure(groups)))}</script>"
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
<dl class="facts">{facts_html}</dl>
<p>Predicted camera centres in the frame of the training labels. Drag to rotate; hover for the image.</p>
<div id="{fid}-plot" class="plot"></div>
{block}
<script type="text/javascript">{JS}</script>
</body>
</html>
"""
    return atomic_write_text(path, page)
