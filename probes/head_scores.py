"""Head scores (previous-token, current-token, first-token, induction, duplicate-token) and their heatmaps.

The scores themselves live in blocks.scores (a task's evaluation reports them during
training); this module re-exports them beside the figures that draw them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from blocks.scores import SCORE_NAMES, head_scores, pattern_scores, repeated_tokens, score_batch

__all__ = [
    "SCORE_NAMES",
    "head_scores",
    "head_scores_figure",
    "head_scores_over_steps_figure",
    "pattern_scores",
    "score_batch",
    "repeated_tokens",
    "top_heads",
]

THRESHOLD = 0.4  # DESIGN.md: a head "is" a previous-token/induction/... head above this score


def top_heads(scores: Float[Tensor, "layer n_heads"], k: int = 1) -> list[tuple[int, int, float]]:
    """The k highest-scoring heads as (layer, head, score), best first."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    flat = scores.flatten()
    values, idx = flat.topk(min(k, flat.numel()))
    n_heads = scores.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values, idx)]


def head_scores_figure(scores: Float[Tensor, "layer n_heads"], title: str = "head score") -> go.Figure:
    """A layer x head heatmap of one score, on a fixed 0..1 colour scale so runs compare by eye."""
    z = scores.detach().cpu().tolist()
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"H{h}" for h in range(scores.shape[1])],
            y=[f"L{l}" for l in range(scores.shape[0])],
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            text=[[f"{v:.2f}" for v in row] for row in z],
            texttemplate="%{text}",
            hovertemplate="layer %{y} head %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed")
    return fig


def head_scores_over_steps_figure(
    steps: Sequence[int], per_step: Sequence[Mapping[str, Sequence[Sequence[float]]]], score: str = "induction"
) -> go.Figure:
    """One score of every head (rows L0H0, L0H1, ...) across training steps (columns).

    `per_step[i]` is the "head_scores" entry of a metrics.jsonl line: {score: [[float] * n_heads] * n_layers}.
    """
    if len(steps) != len(per_step):
        raise ValueError(f"got {len(steps)} steps but {len(per_step)} score dicts; give one dict per step")
    if not per_step:
        raise ValueError("no head scores to draw; the run's metrics have no 'head_scores' entries")
    if score not in per_step[0]:
        raise KeyError(f"no score {score!r}; the scores logged are {sorted(per_step[0])}")
    grid = torch.tensor([d[score] for d in per_step], dtype=torch.float32)  # step layer n_heads
    n_layers, n_heads = grid.shape[1], grid.shape[2]
    z = grid.flatten(1).T.tolist()  # (layer n_heads) step
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(s) for s in steps],
            y=[f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)],
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            hovertemplate="step %{x}, %{y}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(title=f"{score} score over training", xaxis_title="step", yaxis_title="head",
                      yaxis_autorange="reversed")
    return fig
