"""Information-flow routes (Ferrando & Voita, 2024): which earlier states each residual stream is built from.

For parts z_k that add up to y, proximity(z_k, y) = max(||y||_1 - ||y - z_k||_1, 0) and
importance = proximity / sum of proximities. A block's attention writes into `resid_mid[i]`
(parts: `resid_pre[i]`, one part per source position j summed over heads, and b_O); its
MLP writes into `resid_post[i]` (parts: `resid_mid[i]`, the MLP's output without b_out, and
b_out). Edges below `tau` are dropped, what is left is renormalised per node, and the
routes are what is reachable walking back from the target position. One forward pass.

Unlike the reference tool, the output biases are nodes of their own, so a node's parts add
up to it exactly (`attention_parts`, `mlp_parts`). Attention-only blocks write straight
into `resid_post`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import einops
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.cache import ActivationCache
from blocks.transformer import Transformer

NodeKind = Literal["resid_pre", "resid_mid", "mlp", "b_O", "b_out"]
EdgeKind = Literal["attn", "resid", "mlp", "mlp_in", "bias"]
TAU = 0.04


@dataclass(frozen=True)
class FlowNode:
    """A residual-stream state or a component output at (layer, pos).

    kind "resid_pre" at layer n_layers is the final stream (resid_post of the last block).
    """

    layer: int
    pos: int
    kind: NodeKind

    @property
    def label(self) -> str:
        return f"{self.kind}[L{self.layer}, {self.pos}]"


@dataclass(frozen=True)
class FlowEdge:
    """Information moving from node `src` to node `dst` (indices into FlowGraph.nodes)."""

    src: int
    dst: int
    importance: float  # after thresholding and renormalising over dst's kept edges
    kind: EdgeKind


@dataclass(frozen=True)
class FlowGraph:
    """The routes reachable from `target_pos`, with per-head and per-neuron breakdowns.

    `head_contributions[e]` [n_heads] is each head's importance within attention edge e
    (its own proximity over the node's total, before thresholding); `neuron_contributions[v]`
    [d_mlp] is the same for each neuron of MLP node v.
    """

    nodes: list[FlowNode]
    edges: list[FlowEdge]
    head_contributions: dict[int, Float[Tensor, " n_heads"]]
    neuron_contributions: dict[int, Float[Tensor, " d_mlp"]]
    target_pos: int
    tau: float
    n_layers: int
    attn_only: bool
    index: dict[FlowNode, int] = field(default_factory=dict)

    def node_index(self, layer: int, pos: int, kind: NodeKind) -> int:
        """Index of a node in `nodes`; KeyError if it is not on any route."""
        key = FlowNode(layer, pos, kind)
        if key not in self.index:
            raise KeyError(f"{key.label} is not on a route from position {self.target_pos} at tau={self.tau}")
        return self.index[key]


@dataclass(frozen=True)
class AttentionParts:
    """The parts that add up to the stream after layer `layer`'s attention: total = resid + heads.sum((1, 2)) + bias."""

    resid: Float[Tensor, "pos d_model"]
    heads: Float[Tensor, "query_pos key_pos n_heads d_model"]
    bias: Float[Tensor, " d_model"]
    total: Float[Tensor, "pos d_model"]


@dataclass(frozen=True)
class MLPParts:
    """The parts that add up to the stream after layer `layer`'s MLP: total = resid + neurons.sum(1) + bias."""

    resid: Float[Tensor, "pos d_model"]
    neurons: Float[Tensor, "pos d_mlp d_model"]
    bias: Float[Tensor, " d_model"]
    total: Float[Tensor, "pos d_model"]


def _flow_names(model: Transformer) -> list[str]:
    keep = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "attn.hook_pattern", "attn.hook_v", "mlp.hook_post")
    return [n for n in model.hook_names() if n.endswith(keep)]


def attention_parts(model: Transformer, cache: ActivationCache, layer: int, batch_index: int = 0) -> AttentionParts:
    """Split the stream after layer `layer`'s attention into the residual, each (query, key, head) write, and b_O."""
    attn = model.blocks[layer].attn
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][batch_index]  # n_heads query_pos key_pos
    v = cache[f"blocks.{layer}.attn.hook_v"][batch_index]  # key_pos n_heads d_head
    vo = einops.einsum(v, attn.W_O, "key_pos n_heads d_head, n_heads d_head d_model -> key_pos n_heads d_model")
    heads = einops.einsum(
        pattern, vo, "n_heads query_pos key_pos, key_pos n_heads d_model -> query_pos key_pos n_heads d_model"
    )
    after = "resid_post" if model.cfg.attn_only else "resid_mid"
    return AttentionParts(
        resid=cache[f"blocks.{layer}.hook_resid_pre"][batch_index],
        heads=heads,
        bias=attn.b_O.detach(),
        total=cache[f"blocks.{layer}.hook_{after}"][batch_index],
    )


def mlp_parts(model: Transformer, cache: ActivationCache, layer: int, batch_index: int = 0) -> MLPParts:
    """Split resid_post of layer `layer` into resid_mid, each neuron's write (post[n] * W_out[n]) and b_out."""
    if model.cfg.attn_only:
        raise ValueError("this model is attention-only: its blocks have no MLP parts")
    mlp = model.blocks[layer].mlp
    post = cache[f"blocks.{layer}.mlp.hook_post"][batch_index]  # pos d_mlp
    return MLPParts(
        resid=cache[f"blocks.{layer}.hook_resid_mid"][batch_index],
        neurons=post[:, :, None] * mlp.W_out.detach(),
        bias=mlp.b_out.detach(),
        total=cache[f"blocks.{layer}.hook_resid_post"][batch_index],
    )


def _proximity(y: Tensor, z: Tensor) -> Tensor:
    """max(||y||_1 - ||y - z||_1, 0) over the last axis; y broadcasts against z."""
    return (y.abs().sum(-1) - (y - z).abs().sum(-1)).clamp_min(0.0)


def _keep(importance: Tensor, tau: float) -> Tensor:
    """Zero what is below tau, then renormalise the rest along the last axis (each row is one node's inputs)."""
    kept = torch.where(importance >= tau, importance, torch.zeros_like(importance))
    total = kept.sum(-1, keepdim=True)
    return torch.where(total > 0, kept / total.clamp_min(1e-30), kept)


@torch.no_grad()
def information_flow(
    model: Transformer, tokens: Int[Tensor, "*one pos"], target_pos: int = -1, tau: float = TAU
) -> FlowGraph:
    """The information-flow routes into the final stream at `target_pos` of one prompt."""
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"give one prompt as [pos] or [1, pos] token ids, got shape {tuple(tokens.shape)}")
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"tau must lie in [0, 1) (the paper uses 0.01 to 0.1), got {tau}")
    model.check_tokens(tokens)
    n = tokens.shape[1]
    if not -n <= target_pos < n:
        raise ValueError(f"target_pos {target_pos} is outside a prompt of {n} tokens")
    target = target_pos % n
    _, cache = model.run_with_cache(tokens.to(next(model.parameters()).device), names=_flow_names(model))
    L, attn_only = model.cfg.n_layers, model.cfg.attn_only

    # per layer: attention importances [query, 1 + key + 1] = (resid, sources..., b_O) and MLP ones
    # [pos, 3] = (resid, mlp, b_out). The per-head and per-neuron splits are costly (one d_model vector
    # per head per edge, per neuron per position), so they are computed only for nodes on a route.
    attn_imp, attn_denom, mlp_imp, mlp_denom = [], [], [], []
    for layer in range(L):
        attn = model.blocks[layer].attn
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
        vo = einops.einsum(
            cache[f"blocks.{layer}.attn.hook_v"][0], attn.W_O,
            "key_pos n_heads d_head, n_heads d_head d_model -> key_pos n_heads d_model",
        )
        sources = einops.einsum(pattern, vo, "n_heads query_pos key_pos, key_pos n_heads d_model -> query_pos key_pos d_model")
        y = cache[f"blocks.{layer}.hook_{'resid_post' if attn_only else 'resid_mid'}"][0]
        resid = cache[f"blocks.{layer}.hook_resid_pre"][0]
        prox = torch.cat(
            [_proximity(y, resid)[:, None], _proximity(y[:, None], sources), _proximity(y, attn.b_O)[:, None]], dim=1
        )
        attn_denom.append(prox.sum(-1).clamp_min(1e-30))
        attn_imp.append(prox / attn_denom[-1][:, None])
        if not attn_only:
            mlp = model.blocks[layer].mlp
            y = cache[f"blocks.{layer}.hook_resid_post"][0]
            mid = cache[f"blocks.{layer}.hook_resid_mid"][0]
            out = cache[f"blocks.{layer}.mlp.hook_post"][0] @ mlp.W_out
            prox = torch.stack([_proximity(y, mid), _proximity(y, out), _proximity(y, mlp.b_out)], dim=1)
            mlp_denom.append(prox.sum(-1).clamp_min(1e-30))
            mlp_imp.append(prox / mlp_denom[-1][:, None])

    def head_splits(layer: int, pairs: list[tuple[int, int, int]]) -> None:
        """Per-head importances of the kept attention edges (edge index, query i, key j), in one batch."""
        if not pairs:
            return
        e, i, j = (torch.tensor(c) for c in zip(*pairs))
        attn = model.blocks[layer].attn
        a = cache[f"blocks.{layer}.attn.hook_pattern"][0][:, i, j].T  # edge n_heads
        v = cache[f"blocks.{layer}.attn.hook_v"][0][j]  # edge n_heads d_head
        parts = a[..., None] * einops.einsum(v, attn.W_O, "edge n_heads d_head, n_heads d_head d_model -> edge n_heads d_model")
        y = cache[f"blocks.{layer}.hook_{'resid_post' if attn_only else 'resid_mid'}"][0][i]
        split = (_proximity(y[:, None], parts) / attn_denom[layer][i][:, None]).cpu()
        for k, edge in enumerate(e.tolist()):
            heads_of[edge] = split[k]

    def neuron_split(layer: int, i: int) -> Tensor:
        mlp = model.blocks[layer].mlp
        parts = cache[f"blocks.{layer}.mlp.hook_post"][0, i][:, None] * mlp.W_out  # d_mlp d_model
        y = cache[f"blocks.{layer}.hook_resid_post"][0, i]
        return (_proximity(y, parts) / mlp_denom[layer][i]).cpu()

    nodes: list[FlowNode] = []
    index: dict[FlowNode, int] = {}

    def node(layer: int, pos: int, kind: NodeKind) -> int:
        key = FlowNode(layer, pos, kind)
        if key not in index:
            index[key] = len(nodes)
            nodes.append(key)
        return index[key]

    edges: list[FlowEdge] = []
    heads_of: dict[int, Tensor] = {}
    neurons_of: dict[int, Tensor] = {}
    frontier = {target}  # positions of resid_pre[layer + 1] on a route
    node(L, target, "resid_pre")
    for layer in reversed(range(L)):
        if not attn_only:
            kept = _keep(mlp_imp[layer], tau)
            mids: set[int] = set()
            for i in sorted(frontier):
                dst = node(layer + 1, i, "resid_pre")
                w_resid, w_mlp, w_bias = kept[i].tolist()
                if w_resid > 0:
                    edges.append(FlowEdge(node(layer, i, "resid_mid"), dst, w_resid, "resid"))
                    mids.add(i)
                if w_mlp > 0:
                    mlp_node = node(layer, i, "mlp")
                    neurons_of[mlp_node] = neuron_split(layer, i)
                    edges.append(FlowEdge(mlp_node, dst, w_mlp, "mlp"))
                    edges.append(FlowEdge(node(layer, i, "resid_mid"), mlp_node, 1.0, "mlp_in"))
                    mids.add(i)
                if w_bias > 0:
                    edges.append(FlowEdge(node(layer, i, "b_out"), dst, w_bias, "bias"))
            frontier, into = mids, "resid_mid"
            dst_layer = layer
        else:
            into, dst_layer = "resid_pre", layer + 1
        kept = _keep(attn_imp[layer], tau)
        pres: set[int] = set()
        pending: list[tuple[int, int, int]] = []
        for i in sorted(frontier):
            dst = node(dst_layer, i, into)  # type: ignore[arg-type]
            row = kept[i]
            if row[0] > 0:
                edges.append(FlowEdge(node(layer, i, "resid_pre"), dst, float(row[0]), "resid"))
                pres.add(i)
            for j in torch.nonzero(row[1 : n + 1]).flatten().tolist():
                edges.append(FlowEdge(node(layer, j, "resid_pre"), dst, float(row[1 + j]), "attn"))
                pending.append((len(edges) - 1, i, j))
                pres.add(j)
            if row[n + 1] > 0:
                edges.append(FlowEdge(node(layer, i, "b_O"), dst, float(row[n + 1]), "bias"))
        head_splits(layer, pending)
        frontier = pres
    return FlowGraph(nodes, edges, heads_of, neurons_of, target, tau, L, attn_only, index)


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


def flow_figure(graph: FlowGraph, token_labels: Sequence[str] | None = None) -> go.Figure:
    """The routes as a plotly figure: edges as lines with width ~ importance, nodes as markers.

    Each node marker carries customdata [node index, layer, pos, kind], and a marker at each
    edge's midpoint carries [edge index, src layer, src pos, "edge", edge kind, importance], so a
    click (st.plotly_chart on_select) says which node or edge was chosen.
    """
    fig = go.Figure()
    groups: dict[tuple[str, int], tuple[list, list]] = {}
    for e in graph.edges:
        x0, y0 = _xy(graph.nodes[e.src], graph.attn_only)
        x1, y1 = _xy(graph.nodes[e.dst], graph.attn_only)
        width_bin = min(int(e.importance * 10), 9)  # ten line widths: one trace per (kind, width)
        xs, ys = groups.setdefault((e.kind, width_bin), ([], []))
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    for (kind, width_bin), (xs, ys) in sorted(groups.items()):
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines", line={"width": 0.5 + 0.8 * (width_bin + 1), "color": EDGE_COLOURS[kind]},
                       opacity=0.35 + 0.065 * width_bin, hoverinfo="skip", showlegend=False, name=f"{kind} edges")
        )
    if graph.edges:  # a marker at each edge's midpoint: lines report no selection, markers do
        mids = [(_xy(graph.nodes[e.src], graph.attn_only), _xy(graph.nodes[e.dst], graph.attn_only)) for e in graph.edges]
        fig.add_trace(
            go.Scatter(
                x=[(a[0] + b[0]) / 2 for a, b in mids], y=[(a[1] + b[1]) / 2 for a, b in mids], mode="markers",
                name="edges", marker={"size": 6, "symbol": "diamond", "color": [EDGE_COLOURS[e.kind] for e in graph.edges],
                                      "opacity": 0.6},
                customdata=[[i, graph.nodes[e.src].layer, graph.nodes[e.src].pos, "edge", e.kind, e.importance]
                            for i, e in enumerate(graph.edges)],
                hovertemplate="%{customdata[4]} edge, importance %{customdata[5]:.3f}<extra></extra>",
            )
        )
    for kind in ("resid_pre", "resid_mid", "mlp", "b_O", "b_out"):
        picked = [(i, v) for i, v in enumerate(graph.nodes) if v.kind == kind]
        if not picked:
            continue
        xy = [_xy(v, graph.attn_only) for _, v in picked]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers", name=kind,
                marker={"size": 9 if kind.startswith("resid") else 7, "color": NODE_COLOURS[kind]},
                customdata=[[i, v.layer, v.pos, v.kind] for i, v in picked],
                hovertemplate="%{customdata[3]} layer %{customdata[1]} pos %{customdata[2]}<extra></extra>",
            )
        )
    n_pos = max((v.pos for v in graph.nodes), default=0) + 1
    labels = list(token_labels) if token_labels is not None else [str(i) for i in range(n_pos)]
    fig.update_layout(
        title=f"information flow into position {graph.target_pos} (tau={graph.tau})",
        xaxis={"tickmode": "array", "tickvals": list(range(len(labels))),
               "ticktext": [f"{i}: {t}" for i, t in enumerate(labels)], "title": "token"},
        yaxis={"tickmode": "array", "tickvals": list(range(graph.n_layers + 1)),
               "ticktext": [f"L{l}" for l in range(graph.n_layers)] + ["final"], "title": "layer"},
        clickmode="event+select",
    )
    return fig
