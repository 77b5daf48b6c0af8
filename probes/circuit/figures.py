"""Figures of circuits: the edges over the layers, the faithfulness curve, estimate against exact, composition."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from jaxtyping import Bool, Float
from torch import Tensor

from probes.circuit.graph import Graph
from probes.circuit.scores import EdgeScores

INPUT_OFFSET = {"q": 0.22, "k": 0.0, "v": -0.22}  # where a head's three inputs meet it, so edges into each stay apart


def node_positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """(x, y) of each node: x is the stage of the forward pass (embeddings, L0 heads, MLP0, ...), y the head."""
    mid = (graph.n_heads - 1) / 2
    pos: dict[str, tuple[float, float]] = {"embed": (0.0, mid - 0.5), "pos_embed": (0.0, mid + 0.5)}
    for name in graph.senders:
        if name.startswith("L"):
            pos[name] = (float(graph.sender_stage(name)), float(name.split("H")[1]))
        elif name.startswith("MLP"):
            pos[name] = (float(graph.sender_stage(name)), mid)
    pos["logits"] = (float(graph.receiver_stage("logits")), mid)
    return pos


def _receiver_point(graph: Graph, name: str, pos: dict[str, tuple[float, float]]) -> tuple[float, float]:
    node, _, which = name.partition(".")
    x, y = pos[node]
    return (x - 0.12, y + INPUT_OFFSET[which]) if which else (x, y)


def circuit_figure(
    edges: Bool[Tensor, "sender receiver"],
    scores: EdgeScores,
    exact: EdgeScores | None = None,
    title: str = "",
    max_edges: int = 300,
) -> go.Figure:
    """The kept edges (a bool mask) drawn over the layers, coloured by their score; hover shows the exact value too.

    A marker at each edge's midpoint carries the hover text and `customdata` = the edge's name,
    so that a click can select it. At most `max_edges` edges are drawn, the largest first.
    """
    graph = scores.graph
    pos = node_positions(graph)
    chosen = [(int(s), int(r)) for s, r in (edges.bool() & graph.valid).nonzero()]
    chosen.sort(key=lambda e: -abs(float(scores.scores[e])))
    chosen = chosen[:max_edges]
    top = max((abs(float(scores.scores[e])) for e in chosen), default=0.0) or 1.0
    fig = go.Figure()
    mid_x, mid_y, mid_c, hover, names = [], [], [], [], []
    for s, r in chosen:
        value = float(scores.scores[s, r])
        (x0, y0), (x1, y1) = pos[graph.senders[s]], _receiver_point(graph, graph.receivers[r], pos)
        colour = "rgba(178,24,43,0.7)" if value < 0 else "rgba(33,102,172,0.7)"
        fig.add_trace(
            go.Scatter(
                x=[x0, x1],
                y=[y0, y1],
                mode="lines",
                line={"width": 0.5 + 6 * abs(value) / top, "color": colour},
                hoverinfo="skip",
                showlegend=False,
            )
        )
        name = graph.edge_name(s, r)
        text = f"{name}<br>{scores.method}: {value:+.4f}"
        if exact is not None:
            text += f"<br>exact: {float(exact.scores[s, r]):+.4f}"
        mid_x.append((x0 + x1) / 2), mid_y.append((y0 + y1) / 2), mid_c.append(value)
        hover.append(text), names.append(name)
    bound = max((abs(c) for c in mid_c), default=1.0) or 1.0
    fig.add_trace(
        go.Scatter(
            x=mid_x,
            y=mid_y,
            mode="markers",
            marker={
                "size": 9,
                "color": mid_c,
                "colorscale": "RdBu",
                "cmin": -bound,
                "cmax": bound,
                "colorbar": {"title": {"text": "metric change<br>if patched"}},
            },
            hovertext=hover,
            hoverinfo="text",
            customdata=names,
            name="edges",
            showlegend=False,
        )
    )
    used = {n for n in graph.senders if edges[graph.senders.index(n)].any()} | {
        graph.receivers[r].split(".")[0] for s, r in chosen
    }
    nodes = [n for n in [*graph.senders, "logits"] if n in pos]
    fig.add_trace(
        go.Scatter(
            x=[pos[n][0] for n in nodes],
            y=[pos[n][1] for n in nodes],
            mode="markers+text",
            text=nodes,
            textposition="top center",
            marker={"size": 14, "color": ["#222" if n in used else "#ccc" for n in nodes], "symbol": "square"},
            hovertext=nodes,
            hoverinfo="text",
            name="nodes",
            showlegend=False,
        )
    )
    ticks = [0.0] + [float(2 * l + 1) for l in range(graph.n_layers)] + [float(2 * graph.n_layers + 1)]
    labels = ["embeddings"] + [f"layer {l}" for l in range(graph.n_layers)] + ["logits"]
    fig.update_layout(
        title=title or f"{len(chosen)} edges ({scores.method}); into a head: q above, k level, v below",
        xaxis={"title": "stage of the forward pass", "tickvals": ticks, "ticktext": labels, "zeroline": False},
        yaxis={"title": "head", "zeroline": False, "autorange": "reversed"},
        height=420,
    )
    return fig


def faithfulness_figure(curves: dict[str, list[tuple[int, float]]], target: float | None = 0.8) -> go.Figure:
    """Faithfulness against the number of edges kept, one line per method."""
    fig = go.Figure()
    for method, curve in curves.items():
        fig.add_trace(go.Scatter(x=[k for k, _ in curve], y=[f for _, f in curve], mode="lines+markers", name=method))
    if target is not None:
        fig.add_hline(y=target, line_dash="dot", annotation_text=f"target {target:g}")
    fig.update_layout(
        title="Faithfulness of the top-k edges",
        xaxis={"title": "edges kept (top by score)", "type": "log"},
        yaxis={"title": "faithfulness (1 = the whole model)"},
    )
    return fig


def agreement_figure(estimate: EdgeScores, exact: EdgeScores) -> go.Figure:
    """Each edge's estimated effect against its exact effect, with the line y = x."""
    x, y = exact.edge_values().tolist(), estimate.edge_values().tolist()
    lo, hi = min(x + y + [0.0]), max(x + y + [0.0])
    fig = go.Figure(
        [
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "grey"}, name="y = x"),
            go.Scatter(
                x=x, y=y, mode="markers", hovertext=estimate.graph.edge_names, hoverinfo="text+x+y", name="edges"
            ),
        ]
    )
    fig.update_layout(
        title=f"{estimate.method} against exact edge patching",
        xaxis={"title": "exact effect (metric change)"},
        yaxis={"title": f"{estimate.method} estimate"},
    )
    return fig


def composition_figure(scores: Float[Tensor, "layer_a head_a layer_b head_b"], kind: str, baseline: float) -> go.Figure:
    """Heatmap of writer heads (rows) against reader heads (columns), with the random baseline in the title."""
    la, ha, lb, hb = scores.shape
    matrix = scores.reshape(la * ha, lb * hb)
    rows = [f"L{l}H{h}" for l in range(la) for h in range(ha)]
    cols = [f"L{l}H{h}" for l in range(lb) for h in range(hb)]
    z = [[None if math.isnan(v) else round(v, 4) for v in row] for row in matrix.tolist()]
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=rows, colorscale="Blues", colorbar={"title": {"text": "score"}}))
    fig.update_layout(
        title=f"{kind.upper()}-composition (random heads give {baseline:.3f})",
        xaxis={"title": "reader head", "type": "category"},
        yaxis={"title": "writer head", "type": "category", "autorange": "reversed"},
    )
    return fig
