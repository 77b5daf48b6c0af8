"""What the app shows that no probe script needs: a run's training history and a prompt's losses.

The history functions read the metric dicts `blocks.training.load_run` returns (numbers come
from metrics.jsonl, never recomputed); `prompt_losses` is the loss the app shows for a
prompt, clean or ablated.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from jaxtyping import Float, Int
from torch import Tensor

from blocks.tasks.common import next_token_nll


def metric_curves(metrics: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar metric (train_loss, lr, eval/...) as (steps, values), in the order steps were logged."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for line in metrics:
        if "step" not in line:
            raise ValueError(f"every metrics line needs a 'step'; got keys {sorted(line)}")
        for name, value in line.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            steps, values = curves.setdefault(name, ([], []))
            steps.append(int(line["step"]))
            values.append(float(value))
    return curves


def head_score_entries(metrics: list[dict[str, Any]]) -> tuple[list[int], list[dict[str, Any]]]:
    """The steps that logged a "head_scores" entry, and those entries, for `head_scores_over_steps_figure`."""
    logged = [line for line in metrics if line.get("head_scores")]
    return [int(line["step"]) for line in logged], [line["head_scores"] for line in logged]


def metric_curves_figure(curves: dict[str, tuple[list[int], list[float]]], names: list[str], title: str) -> go.Figure:
    """Line plot of the named curves against step."""
    fig = go.Figure()
    for name in names:
        steps, values = curves[name]
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=name))
    losses = all(n == "train_loss" or "loss" in n for n in names)
    fig.update_layout(
        title=title,
        xaxis_title="training step",
        yaxis_title="loss (nats)" if losses else "value (accuracy: fraction correct)",
        height=340,
        margin=dict(t=40, b=30, l=40, r=10),
    )
    return fig


def prompt_losses(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """Loss (nats) of predicting each next token of a prompt: entry t is -log p(tokens[:, t+1]) at position t.

    Every position counts (a typed prompt has no loss mask); it is the per-position loss the
    trainer averages under the task's mask, so a clean prompt's numbers match training's.
    """
    if logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be the model's output on tokens {tuple(tokens.shape)}: "
            "the same [batch, pos] before the vocabulary axis"
        )
    return next_token_nll(logits, tokens)
