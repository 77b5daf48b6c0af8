"""Plain plotly layouts for matrices the probes return (patterns, maps, circuits); no numbers are computed here."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from torch import Tensor


def matrix_figure(
    z: Tensor,
    x: Sequence[str],
    y: Sequence[str],
    title: str,
    zmin: float | None = None,
    zmax: float | None = None,
    colorscale: str = "Blues",
    x_title: str = "key",
    y_title: str = "query",
) -> go.Figure:
    """A heatmap of `z` [len(y), len(x)] with readable axis labels, rows top to bottom."""
    fig = go.Figure(
        go.Heatmap(
            z=z.detach().cpu().tolist(),
            x=list(x),
            y=list(y),
            zmin=zmin,
            zmax=zmax,
            colorscale=colorscale,
            hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>%{{z:.3f}}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        yaxis_autorange="reversed",
        height=max(300, 16 * len(y) + 120),
        margin=dict(t=40, b=40, l=60, r=10),
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig
