"""Circuits: a set of edges that alone carries the behaviour, found from edge scores or by search, and evaluated.

A circuit is evaluated by running the clean prompts with every edge *outside* it patched
(to the corrupted or the mean value): faithfulness = (metric - m_ablated) / (m_clean - m_ablated),
1 when the circuit does all the model does, 0 when it does nothing; m_ablated is the metric
with every edge patched. Completeness patches the circuit's own edges instead and reports
1 - the faithfulness that is left, so a circuit missing a second route scores low.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from blocks.transformer import Transformer
from probes.circuit.contrast import Contrast
from probes.circuit.exact import Ablation, evaluate_edge_sets, patched_values
from probes.circuit.graph import Graph
from probes.circuit.scores import EdgeScores


@dataclass(frozen=True)
class Circuit:
    """The kept edges (pruned to paths from the embeddings to the logits), how they were chosen, how they do.

    `curve` is the faithfulness of the top-k edges for each k tried (by the scores' size),
    as (k, faithfulness) pairs; empty for a search.
    """

    graph: Graph
    edges: Bool[Tensor, "sender receiver"]
    method: str
    ablation: str
    clean: float
    ablated: float
    metric: float
    complement: float  # the metric with the circuit's own edges patched
    scores: EdgeScores | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    top_k: int | None = None  # for a circuit of top edges: how many were taken before pruning

    @property
    def size(self) -> int:
        return int(self.edges.sum())

    @property
    def faithfulness(self) -> float:
        return _share(self.metric, self.clean, self.ablated)

    @property
    def completeness(self) -> float:
        return 1.0 - _share(self.complement, self.clean, self.ablated)

    @property
    def has_path(self) -> bool:
        return self.graph.has_path(self.edges)

    def edge_names(self) -> list[str]:
        return [self.graph.edge_name(int(s), int(r)) for s, r in self.edges.nonzero()]

    def nodes(self) -> list[str]:
        """The senders and receiver nodes the circuit's edges touch, in graph order."""
        s, r = self.edges.any(1), self.edges.any(0)
        touched = {self.graph.senders[i] for i in s.nonzero().flatten().tolist()}
        touched |= {self.graph.receivers[i].split(".")[0] for i in r.nonzero().flatten().tolist()}
        return [n for n in [*self.graph.senders, "logits"] if n in touched]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "ablation": self.ablation,
            "size": self.size,
            "n_edges_in_graph": self.graph.n_edges,
            "faithfulness": self.faithfulness,
            "completeness": self.completeness,
            "metric": {
                "clean": self.clean,
                "ablated": self.ablated,
                "circuit": self.metric,
                "without": self.complement,
            },
            "edges": self.edge_names(),
            "curve": [list(p) for p in self.curve],
        }


def _share(value: float, clean: float, ablated: float) -> float:
    gap = clean - ablated
    if abs(gap) <= 1e-6 * max(1.0, abs(clean)):  # equal but for rounding
        raise ValueError(
            "the metric is the same with every edge patched as on the clean prompts, so faithfulness is "
            "undefined; choose corrupted prompts (or a metric) that the model tells apart"
        )
    return (value - ablated) / gap


def _sizes(n: int, points: int = 24) -> list[int]:
    """About `points` circuit sizes from 1 to n, dense at the small end."""
    grid = {max(1, min(n, round(n ** (i / (points - 1))))) for i in range(points)}
    return sorted(grid | {n})


def top_edges(scores: EdgeScores, k: int) -> Bool[Tensor, "sender receiver"]:
    """The k edges with the largest scores by size, as a mask (before pruning)."""
    values = scores.edge_values().abs()
    keep = torch.zeros(len(values), dtype=torch.bool)
    keep[values.argsort(descending=True, stable=True)[:k]] = True
    mask = torch.zeros_like(scores.graph.valid)
    mask[scores.graph.valid] = keep
    return mask


def evaluate_circuit(
    model: Transformer,
    contrast: Contrast,
    edges: Bool[Tensor, "sender receiver"],
    ablation: Ablation = "corrupted",
    method: str = "given",
    scores: EdgeScores | None = None,
    curve: list[tuple[int, float]] | None = None,
    top_k: int | None = None,
) -> Circuit:
    """Faithfulness and completeness of a set of edges (pruned first; a warning if no path reaches the logits)."""
    graph = Graph.of(model.cfg)
    if edges.shape != graph.valid.shape:
        raise ValueError(
            f"edges must have shape {tuple(graph.valid.shape)} (senders x receivers), got {tuple(edges.shape)}"
        )
    if (edges & ~graph.valid).any():
        raise ValueError("the circuit holds a (sender, receiver) pair that is not an edge of this model's graph")
    kept = graph.prune(edges, unfed=ablation == "corrupted")
    if not kept[:, graph.receivers.index("logits")].any():
        warnings.warn(
            f"the circuit's {int(edges.sum())} edge(s) hold no path from the embeddings to the logits, so it "
            "computes nothing of its own; its faithfulness is that of the fully patched model",
            stacklevel=2,
        )
    clean, ablated, values = patched_values(model, contrast, ablation)
    sets = torch.stack([graph.valid & ~kept, kept])
    metric, complement = evaluate_edge_sets(model, contrast, sets, values).tolist()
    return Circuit(graph, kept, method, ablation, clean, ablated, metric, complement, scores, curve or [], top_k)


def circuit_from_scores(
    model: Transformer,
    contrast: Contrast,
    scores: EdgeScores,
    n_edges: int | None = None,
    target: float = 0.8,
    ablation: Ablation = "corrupted",
) -> Circuit:
    """The top edges by the size of their score: `n_edges` of them, or the first count that reaches `target`.

    The faithfulness curve (metric against edges kept) is measured at about 24 sizes in one
    batched run; the count is refined one by one below the first size on that grid that
    reaches `target`. The curve need not rise monotonically, so a smaller count further down
    could also reach it.
    """
    graph = Graph.of(model.cfg)
    if scores.graph != graph:
        raise ValueError("the scores belong to a model of another shape")
    total = graph.n_edges
    if n_edges is not None and not 1 <= n_edges <= total:
        raise ValueError(f"n_edges must lie in [1, {total}] (the graph's edges), got {n_edges}")
    if not 0 < target <= 1:
        raise ValueError(f"target faithfulness must lie in (0, 1], got {target}")
    clean, ablated, values = patched_values(model, contrast, ablation)
    curve = _curve(model, contrast, scores, values, clean, ablated, _sizes(total), ablation)
    if n_edges is None:
        reached = [k for k, f in curve if f >= target]
        n_edges = reached[0] if reached else total
        lower = [k for k, _ in curve if k < n_edges]
        if reached and lower and lower[-1] + 1 < n_edges:  # refine between the grid's points
            finer = _curve(model, contrast, scores, values, clean, ablated, range(lower[-1] + 1, n_edges), ablation)
            n_edges = next((k for k, f in finer if f >= target), n_edges)
    return evaluate_circuit(
        model, contrast, top_edges(scores, n_edges), ablation, scores.method, scores, curve, n_edges
    )


def _curve(
    model: Transformer,
    contrast: Contrast,
    scores: EdgeScores,
    values: Tensor,
    clean: float,
    ablated: float,
    sizes: Sequence[int],
    ablation: Ablation,
) -> list[tuple[int, float]]:
    """(k, faithfulness of the top-k edges) for each size, all sizes in one batched run."""
    graph = scores.graph
    unfed = ablation == "corrupted"
    masks = torch.stack([graph.valid & ~graph.prune(top_edges(scores, k), unfed=unfed) for k in sizes])
    metrics = evaluate_edge_sets(model, contrast, masks, values)
    return [(k, _share(float(m), clean, ablated)) for k, m in zip(sizes, metrics)]


def acdc(model: Transformer, contrast: Contrast, threshold: float = 0.01, ablation: Ablation = "corrupted") -> Circuit:
    """ACDC-style search (Conmy et al. 2023) against exact patching, with the metric in place of the KL divergence.

    From the logits back to the embeddings, each receiver's incoming edges are tried one at a
    time, latest sender first: an edge is removed (patched) for good when removing it moves the
    metric by less than `threshold` times the clean-to-ablated gap. A receiver whose node no
    longer reaches the logits loses its edges without a try. One forward pass per edge tried.
    """
    if not 0 <= threshold < 1 or math.isnan(threshold):
        raise ValueError(f"threshold is a share of the clean-to-ablated gap in [0, 1), got {threshold}")
    graph = Graph.of(model.cfg)
    clean, ablated, values = patched_values(model, contrast, ablation)
    _share(clean, clean, ablated)  # raises a clear error when clean and ablated do not differ
    gap = abs(clean - ablated)
    kept = graph.valid.clone()
    current = clean
    order = sorted(range(len(graph.receivers)), key=lambda r: -graph.receiver_stage(graph.receivers[r]))
    for r in order:
        if not graph.prune(kept, unfed=ablation == "corrupted")[:, r].any() and graph.receivers[r] != "logits":
            kept[:, r] = False  # nothing downstream listens: these edges cannot matter
            continue
        for s in sorted(kept[:, r].nonzero().flatten().tolist(), key=lambda s: -graph.sender_stage(graph.senders[s])):
            kept[s, r] = False
            metric = float(evaluate_edge_sets(model, contrast, (graph.valid & ~kept)[None], values)[0])
            if abs(metric - current) < threshold * gap:
                current = metric
            else:
                kept[s, r] = True
    return evaluate_circuit(model, contrast, kept, ablation, f"acdc (threshold {threshold})")
