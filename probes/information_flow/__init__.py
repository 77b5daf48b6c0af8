"""Information-flow routes (Ferrando & Voita, 2024) of one prompt: the graph, how it is computed, and its figure.

`information_flow(model, tokens)` returns a `FlowGraph` (graph.py) of the routes into one
position (routes.py); `flow_figure` draws it (figure.py); `head_importance_map` gives one
head's importance on every attention edge, before thresholding.
"""

from probes.information_flow.figure import EDGE_COLOURS, NODE_COLOURS, flow_figure
from probes.information_flow.graph import EdgeKind, FlowEdge, FlowGraph, FlowNode, NodeKind
from probes.information_flow.routes import (
    TAU,
    AttentionParts,
    MLPParts,
    attention_parts,
    head_importance_map,
    information_flow,
    mlp_parts,
    proximity,
)

__all__ = [
    "EDGE_COLOURS",
    "NODE_COLOURS",
    "TAU",
    "AttentionParts",
    "EdgeKind",
    "FlowEdge",
    "FlowGraph",
    "FlowNode",
    "MLPParts",
    "NodeKind",
    "attention_parts",
    "flow_figure",
    "head_importance_map",
    "information_flow",
    "mlp_parts",
    "proximity",
]
