"""Figures of an SAE: its training loss, feature frequencies, one feature's activations and logit effect, variable matches."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from probes.sae.evaluate import SAEEvaluation
from probes.sae.known import VariableMatch


def training_figure(losses: Sequence[float], title: str = "SAE training loss") -> go.Figure:
    fig = go.Figure(go.Scatter(y=list(losses), mode="lines", name="loss"))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss", yaxis_type="log")
    return fig


def frequency_figure(evaluation: SAEEvaluation, title: str = "How often each feature fires") -> go.Figure:
    """Histogram of log10 firing frequency; dead features are counted in the title (log10 0 has no bar)."""
    freq = evaluation.frequency
    alive = freq[freq > 0]
    fig = go.Figure(go.Histogram(x=alive.log10().tolist(), nbinsx=40, name="features"))
    fig.update_layout(
        title=f"{title} ({evaluation.dead} dead, {evaluation.dense} dense)",
        xaxis_title="log10 share of activations the feature fires on",
        yaxis_title="features",
    )
    return fig


def loss_figure(evaluation: SAEEvaluation) -> go.Figure:
    """The model's loss clean, with the SAE spliced in, and with the activation zeroed."""
    names = ["clean", "SAE spliced in", "zero ablation"]
    values = [evaluation.loss_clean, evaluation.loss_spliced, evaluation.loss_zero]
    fig = go.Figure(go.Bar(x=names, y=values, text=[f"{v:.4f}" for v in values], textposition="outside"))
    recovered = evaluation.loss_recovered
    fig.update_layout(title=f"Model loss (fraction of loss recovered {recovered:.3f})", yaxis_title="loss")
    return fig


def activation_histogram(values: Float[Tensor, " m"], feature: int) -> go.Figure:
    """Histogram of the feature's nonzero codes."""
    fired = values[values > 0]
    fig = go.Figure(go.Histogram(x=fired.tolist(), nbinsx=40, name=f"feature {feature}"))
    share = fired.numel() / max(values.numel(), 1)
    fig.update_layout(
        title=f"Feature {feature}: codes where it fires ({share:.1%} of positions)",
        xaxis_title="code",
        yaxis_title="positions",
    )
    return fig


def logit_effect_figure(effect: Float[Tensor, " d_vocab"], vocab: Sequence[str], k: int = 10) -> go.Figure:
    """The k tokens whose log-probability the feature raises most, and the k it lowers most."""
    k = min(k, effect.numel())
    up, down = effect.topk(k), (-effect).topk(k)
    idx = torch.cat([down.indices.flip(0), up.indices])
    values = effect[idx]
    fig = go.Figure(
        go.Bar(
            x=values.tolist(),
            y=[f"{vocab[int(i)]!r}" for i in idx],
            orientation="h",
            marker_color=["rgba(178,24,43,0.8)" if v < 0 else "rgba(33,102,172,0.8)" for v in values.tolist()],
        )
    )
    fig.update_layout(title="Tokens the feature raises and lowers", xaxis_title="change in log-probability")
    return fig


def variable_match_figure(matches: Sequence[VariableMatch]) -> go.Figure:
    """Best single-feature probe accuracy per known variable, against chance."""
    names = [m.name for m in matches]
    fig = go.Figure(
        [
            go.Bar(
                x=names,
                y=[m.best_accuracy for m in matches],
                name="best single feature",
                text=[f"f{m.best_feature}" for m in matches],
                textposition="outside",
            ),
            go.Bar(x=names, y=[m.chance for m in matches], name="chance"),
        ]
    )
    fig.update_layout(title="Known variables: best single-feature probe", yaxis_title="accuracy", yaxis_range=[0, 1.1])
    return fig
