"""A score for every edge, and how two sets of scores agree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from probes.circuit.graph import Graph


@dataclass(frozen=True)
class EdgeScores:
    """Each edge's effect on the metric when it alone carries the corrupted value (estimated or exact).

    `scores[s, r]` is metric(patched) - metric(clean) for edge s -> r, and 0 where there is no
    edge; `clean` and `corrupted` are the metric of the two unpatched runs. `method` is "eap",
    "eap-ig" or "exact".
    """

    graph: Graph
    scores: Float[Tensor, "sender receiver"]
    method: str
    clean: float
    corrupted: float

    def edge_values(self) -> Float[Tensor, " edge"]:
        """The scores in the order of `graph.edges`."""
        return self.scores[self.graph.valid]

    def ranked(self, k: int | None = None) -> list[tuple[str, float]]:
        """The k edges with the largest effect (by size), as (name, score)."""
        values = self.edge_values()
        order = values.abs().argsort(descending=True, stable=True)[: len(values) if k is None else k]
        return [(self.graph.edge_names[i], float(values[i])) for i in order]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "edges": dict(zip(self.graph.edge_names, self.edge_values().tolist())),
        }


def ranks(values: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Ranks from 0, ties sharing their mean rank."""
    order = values.argsort(stable=True)
    sorted_values = values[order]
    out = torch.empty(len(values), dtype=torch.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        out[order[start : end + 1]] = (start + end) / 2
        start = end + 1
    return out


def spearman(a: Float[Tensor, " n"], b: Float[Tensor, " n"]) -> float:
    """Spearman's rank correlation (Pearson's correlation of the ranks)."""
    if a.shape != b.shape or a.dim() != 1 or len(a) < 2:
        raise ValueError(f"need two 1-d tensors of the same length >= 2, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (a.isfinite().all() and b.isfinite().all()):
        raise ValueError("the scores hold NaN or infinite values, which have no rank")
    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    if denom == 0:
        raise ValueError("one of the score sets is constant, so a rank correlation is undefined")
    return float((ra @ rb).item() / denom)


def rank_agreement(estimate: EdgeScores, exact: EdgeScores) -> float:
    """Spearman's correlation of two score sets over every edge of the same graph."""
    if estimate.graph != exact.graph:
        raise ValueError("the two score sets belong to different graphs (models of different shapes)")
    return spearman(estimate.edge_values(), exact.edge_values())
