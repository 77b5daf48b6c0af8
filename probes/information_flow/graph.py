"""The graph information_flow returns: residual-stream states and component outputs as nodes, moves between them as edges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jaxtyping import Float
from torch import Tensor

NodeKind = Literal["resid_pre", "resid_mid", "mlp", "b_O", "b_out"]
EdgeKind = Literal["attn", "resid", "mlp", "mlp_in", "bias"]


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
