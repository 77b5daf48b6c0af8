"""Exact patching of edges: the ground truth that attribution estimates.

An edge s -> r is patched by giving receiver r the corrupted run's write of s in place of the
clean one, while every other receiver keeps reading s's clean write; everything downstream of
r is recomputed. Many edge sets go through the model at once: the clean batch is copied once
per set (`EdgePatch.masks`), in chunks whose senders' writes stay under `MAX_BYTES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from blocks.transformer import Transformer
from probes.circuit.contrast import Contrast
from probes.circuit.edges import EdgePatch, run_edges, sender_values
from probes.circuit.graph import Graph
from probes.circuit.scores import EdgeScores

Ablation = Literal["corrupted", "mean"]
MAX_BYTES = 2**30  # senders' writes held per pass of copies
EXACT_AUTO_LIMIT = 4_000_000  # sequence positions run in all (edges x prompts x positions) before exact is opt-in


def exact_cost(graph: Graph, contrast: Contrast) -> int:
    """Sequence positions that exact patching of every edge runs through the model: edges x prompts x positions."""
    return graph.n_edges * contrast.clean.numel()


@torch.no_grad()
def patched_values(
    model: Transformer, contrast: Contrast, ablation: Ablation = "corrupted"
) -> tuple[float, float, Float[Tensor, "batch pos sender d_model"]]:
    """(clean metric, metric with every edge patched, the senders' patched writes).

    `ablation="corrupted"` patches each write to its value on the corrupted prompts;
    `"mean"` to its mean over the clean prompts at that position.
    """
    if ablation not in ("corrupted", "mean"):
        raise ValueError(f"ablation must be 'corrupted' or 'mean', got {ablation!r}")
    contrast.check(model)
    clean_logits, clean = sender_values(model, contrast.clean)
    if ablation == "corrupted":
        _, values = sender_values(model, contrast.corrupted)
    else:
        values = clean.mean(0, keepdim=True).expand_as(clean)
    graph = Graph.of(model.cfg)
    logits = run_edges(model, contrast.clean, EdgePatch(graph.valid[None].float(), values))
    return float(contrast.value(clean_logits)), float(contrast.value(logits)), values


@torch.no_grad()
def evaluate_edge_sets(
    model: Transformer,
    contrast: Contrast,
    patched: Bool[Tensor, "sets sender receiver"],
    values: Float[Tensor, "batch pos sender d_model"],
    max_bytes: int = MAX_BYTES,
) -> Float[Tensor, " sets"]:
    """The metric with each set's edges patched to `values`, all sets batched.

    A pass holds as many copies of the batch as keep every sender's write of every copy
    (what a patched receiver reads back) under `max_bytes`.
    """
    graph = Graph.of(model.cfg)
    if patched.dim() != 3 or patched.shape[1:] != graph.valid.shape:
        raise ValueError(
            f"edge sets must have shape [sets, {len(graph.senders)}, {len(graph.receivers)}], got {tuple(patched.shape)}"
        )
    if (patched & ~graph.valid).any():
        raise ValueError("an edge set holds a (sender, receiver) pair that is not an edge of this model's graph")
    batch, pos, n_senders, d_model = values.shape
    per_pass = max(1, max_bytes // (batch * pos * n_senders * d_model * values.element_size()))
    out = []
    for chunk in patched.split(per_pass):
        logits = run_edges(model, contrast.clean, EdgePatch(chunk.float(), values))
        out.append(contrast.values(logits).detach().cpu())
    return torch.cat(out)


def exact_edge_patching(
    model: Transformer, contrast: Contrast, ablation: Ablation = "corrupted", max_bytes: int = MAX_BYTES
) -> EdgeScores:
    """Every edge's exact effect: metric with that edge alone patched, minus the clean metric."""
    graph = Graph.of(model.cfg)
    clean, corrupted, values = patched_values(model, contrast, ablation)
    edges = torch.tensor(graph.edges)
    sets = torch.zeros(len(edges), *graph.valid.shape, dtype=torch.bool)
    sets[torch.arange(len(edges)), edges[:, 0], edges[:, 1]] = True
    metrics = evaluate_edge_sets(model, contrast, sets, values, max_bytes)
    scores = torch.zeros(graph.valid.shape, dtype=metrics.dtype)
    scores[edges[:, 0], edges[:, 1]] = metrics - clean
    return EdgeScores(graph, scores, "exact", clean, corrupted)


@dataclass(frozen=True)
class PathPatchingResult:
    """The metric with the senders' writes patched along their direct edges into the receivers only."""

    senders: list[str]
    receivers: list[str]
    edges: list[str]
    metric: float
    clean: float
    corrupted: float

    @property
    def effect(self) -> float:
        """metric(patched) - metric(clean)."""
        return self.metric - self.clean

    def normalized(self) -> float:
        """The share of the clean-to-corrupted gap this path carries: 1 = all of it."""
        gap = self.corrupted - self.clean
        if gap == 0:
            raise ValueError("clean and corrupted metrics are equal, so there is nothing to normalise by")
        return self.effect / gap


def path_patching(
    model: Transformer,
    contrast: Contrast,
    senders: Sequence[str],
    receivers: Sequence[str],
    ablation: Ablation = "corrupted",
) -> PathPatchingResult:
    """Path patching (Wang et al. 2022) over direct edges: each sender's patched write reaches only the receivers.

    Receivers are receiver names (`L1H2.k`, `MLP1`, `logits`) or a head's name for all three of
    its inputs. Every other node keeps its clean input, so the effect is the one that flows
    from the senders to the receivers directly and on from there.
    """
    graph = Graph.of(model.cfg)
    if not senders or not receivers:
        raise ValueError("name at least one sender and one receiver")
    s_idx = [graph.sender_index(s) for s in senders]
    r_idx = [r for name in receivers for r in graph.receiver_indices(name)]
    mask = torch.zeros_like(graph.valid)
    mask[torch.tensor(s_idx)[:, None], torch.tensor(r_idx)[None, :]] = True
    mask &= graph.valid
    if not mask.any():
        raise ValueError(
            f"no edge leads from {list(senders)} to {list(receivers)}: every sender writes after every receiver reads"
        )
    clean, corrupted, values = patched_values(model, contrast, ablation)
    metric = float(evaluate_edge_sets(model, contrast, mask[None], values)[0])
    names = [graph.edge_name(int(s), int(r)) for s, r in mask.nonzero()]
    return PathPatchingResult(list(senders), list(receivers), names, metric, clean, corrupted)
