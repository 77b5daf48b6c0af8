"""The information-flow routes as a clickable plotly figure: tokens across, layers up."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from probes.information_flow.graph import FlowGraph, FlowNode


def _xy(node: FlowNode, attn_only: bool) -> tuple[float, float]:
    """Tokens across, layers up: resid_pre of layer l at height l, the attention's write half a step above."""
    x, y = float(node.pos), float(node.layer)
    if node.kind == "resid_mid":
        return x, y + 0.5
    if node.kind == "mlp":
        return x + 0.3, y + 0.75
    if node.kind == "b_O":
        return x - 0.3, y + (0.5 if attn_only else 0.25)
    if node.kind == "b_out":
        return x - 0.3, y + 0.75
    return x, y


EDGE_COLOURS = {"attn": "#2b6cb0", "resid": "#718096", "mlp": "#c05621", "mlp_in": "#c05621", "bias": "#9f7aea"}
NODE_COLOURS = {"resid_pre": "#2d3748", "resid_mid": "#4a5568", "mlp": "#c05621", "b_O": "#9f7aea", "b_out": "#9f7aea"}


EDGE_MEANING = {
    "attn": "attention (a head moves information between positions)",
    "resid": "residual (the stream carried forward)",
    "mlp": "MLP write",
    "mlp_in": "MLP read",
    "bias": "bias (a constant write)",
}


def flow_figure(graph: FlowGraph, token_labels: Sequence[str] | None = None, highlight: int | None = None) -> go.Figure:
    """The routes as a plotly figure: edges as lines with width ~ importance, nodes as markers.

    Each node marker carries customdata [node index, layer, pos, kind], and a marker at each
    edge's midpoint carries [edge index, src layer, src pos, "edge", edge kind, importance, src kind,
    dst layer, dst pos, dst kind], so a click (st.plotly_chart on_select) says which node or edge was chosen. Hovering names the
    tokens (and, on an attention edge, its strongest head); the legend says what each edge colour
    is; the x axis spans every position of the prompt; node `highlight` gets a red ring.
    """
    n_pos = max((v.pos for v in graph.nodes), default=0) + 1
    labels = list(token_labels) if token_labels is not None else [str(i) for i in range(n_pos)]
    fig = go.Figure()
    ends = [(_xy(graph.nodes[e.src], graph.attn_only), _xy(graph.nodes[e.dst], graph.attn_only)) for e in graph.edges]
    groups: dict[tuple[str, int], tuple[list, list]] = {}
    for e, ((x0, y0), (x1, y1)) in zip(graph.edges, ends):
        width_bin = min(int(e.importance * 10), 9)  # ten line widths: one trace per (kind, width)
        xs, ys = groups.setdefault((e.kind, width_bin), ([], []))
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    for (kind, width_bin), (xs, ys) in sorted(groups.items()):
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"width": 0.5 + 0.8 * (width_bin + 1), "color": EDGE_COLOURS[kind]},
                opacity=0.35 + 0.065 * width_bin,
                hoverinfo="skip",
                showlegend=False,
                legendgroup=kind,
                name=f"{kind} edges",
            )
        )
    for kind in sorted({e.kind for e in graph.edges}):  # one legend entry per edge colour on screen
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                line={"width": 3, "color": EDGE_COLOURS[kind]},
                name=f"edge: {EDGE_MEANING[kind]}",
                legendgroup=kind,
                hoverinfo="skip",
            )
        )

    def where(v: FlowNode) -> str:
        return f"{v.label} at {v.pos}: {labels[v.pos]}" if v.pos < len(labels) else v.label

    def edge_text(i: int) -> str:
        e = graph.edges[i]
        text = f"{where(graph.nodes[e.src])} -> {where(graph.nodes[e.dst])}"
        if i in graph.head_contributions:
            heads = graph.head_contributions[i]
            text += f"<br>top head L{graph.nodes[e.src].layer}H{int(heads.argmax())} ({float(heads.max()):.2f})"
        return text

    if graph.edges:  # a marker at each edge's midpoint: lines report no selection, markers do
        fig.add_trace(
            go.Scatter(
                x=[(a[0] + b[0]) / 2 for a, b in ends],
                y=[(a[1] + b[1]) / 2 for a, b in ends],
                mode="markers",
                name="edges",
                marker={
                    "size": 6,
                    "symbol": "diamond",
                    "color": [EDGE_COLOURS[e.kind] for e in graph.edges],
                    "opacity": 0.6,
                },
                customdata=[
                    [i, src.layer, src.pos, "edge", e.kind, e.importance, src.kind, dst.layer, dst.pos, dst.kind]
                    for i, e in enumerate(graph.edges)
                    for src, dst in [(graph.nodes[e.src], graph.nodes[e.dst])]
                ],
                text=[edge_text(i) for i in range(len(graph.edges))],
                hovertemplate="%{customdata[4]} edge, importance %{customdata[5]:.3f}<br>%{text}<extra></extra>",
            )
        )
    for kind in ("resid_pre", "resid_mid", "mlp", "b_O", "b_out"):
        picked = [(i, v) for i, v in enumerate(graph.nodes) if v.kind == kind]
        if not picked:
            continue
        xy = [_xy(v, graph.attn_only) for _, v in picked]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in xy],
                y=[p[1] for p in xy],
                mode="markers",
                name=kind,
                marker={"size": 9 if kind.startswith("resid") else 7, "color": NODE_COLOURS[kind]},
                customdata=[[i, v.layer, v.pos, v.kind] for i, v in picked],
                text=[where(v) for _, v in picked],
                hovertemplate="%{customdata[3]} layer %{customdata[1]}<br>%{text}<extra></extra>",
            )
        )
    if highlight is not None and 0 <= highlight < len(graph.nodes):
        x, y = _xy(graph.nodes[highlight], graph.attn_only)
        fig.add_trace(
            go.Scatter(
                x=[x],
                y=[y],
                mode="markers",
                name="selected",
                marker={"size": 18, "color": "rgba(0,0,0,0)", "line": {"width": 3, "color": "#e53e3e"}},
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        title=f"information flow into position {graph.target_pos} (tau={graph.tau:g})",
        xaxis={
            "tickmode": "array",
            "tickvals": list(range(len(labels))),
            "ticktext": [f"{i}: {t}" for i, t in enumerate(labels)],
            "range": [-0.7, len(labels) - 0.3],  # every position of the prompt, not only those on the routes
            "title": "position: token",
        },
        yaxis={
            "tickmode": "array",
            "tickvals": list(range(graph.n_layers + 1)),
            "ticktext": [f"L{l}" for l in range(graph.n_layers)] + ["final"],
            "title": "layer",
        },
        clickmode="event+select",
        legend={"orientation": "h", "yanchor": "top", "y": -0.15},
        height=560,
    )
    return fig
