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

from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.cache import ActivationCache
from blocks.transformer import Transformer
from probes.information_flow.graph import FlowEdge, FlowGraph, FlowNode, NodeKind

TAU = 0.04


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


def proximity(y: Tensor, z: Tensor) -> Tensor:
    """How much part z contributes to the whole y: max(||y||_1 - ||y - z||_1, 0) over the last axis; y broadcasts against z."""
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
            cache[f"blocks.{layer}.attn.hook_v"][0],
            attn.W_O,
            "key_pos n_heads d_head, n_heads d_head d_model -> key_pos n_heads d_model",
        )
        sources = einops.einsum(
            pattern, vo, "n_heads query_pos key_pos, key_pos n_heads d_model -> query_pos key_pos d_model"
        )
        y = cache[f"blocks.{layer}.hook_{'resid_post' if attn_only else 'resid_mid'}"][0]
        resid = cache[f"blocks.{layer}.hook_resid_pre"][0]
        prox = torch.cat(
            [proximity(y, resid)[:, None], proximity(y[:, None], sources), proximity(y, attn.b_O)[:, None]], dim=1
        )
        attn_denom.append(prox.sum(-1).clamp_min(1e-30))
        attn_imp.append(prox / attn_denom[-1][:, None])
        if not attn_only:
            mlp = model.blocks[layer].mlp
            y = cache[f"blocks.{layer}.hook_resid_post"][0]
            mid = cache[f"blocks.{layer}.hook_resid_mid"][0]
            out = cache[f"blocks.{layer}.mlp.hook_post"][0] @ mlp.W_out
            prox = torch.stack([proximity(y, mid), proximity(y, out), proximity(y, mlp.b_out)], dim=1)
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
        parts = a[..., None] * einops.einsum(
            v, attn.W_O, "edge n_heads d_head, n_heads d_head d_model -> edge n_heads d_model"
        )
        y = cache[f"blocks.{layer}.hook_{'resid_post' if attn_only else 'resid_mid'}"][0][i]
        split = (proximity(y[:, None], parts) / attn_denom[layer][i][:, None]).cpu()
        for k, edge in enumerate(e.tolist()):
            heads_of[edge] = split[k]

    def neuron_split(layer: int, i: int) -> Tensor:
        mlp = model.blocks[layer].mlp
        parts = cache[f"blocks.{layer}.mlp.hook_post"][0, i][:, None] * mlp.W_out  # d_mlp d_model
        y = cache[f"blocks.{layer}.hook_resid_post"][0, i]
        return (proximity(y, parts) / mlp_denom[layer][i]).cpu()

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


@torch.no_grad()
def head_importance_map(
    model: Transformer, cache: ActivationCache, layer: int, head: int, batch_index: int = 0
) -> Float[Tensor, "query_pos key_pos"]:
    """One head's importance for every (query, key) attention edge of `layer`, before thresholding.

    The same number `information_flow` keeps per head on the edges of its routes
    (`FlowGraph.head_contributions`), here for every edge, so a head's whole map can sit
    beside its attention pattern.
    """
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must lie in [0, {model.cfg.n_layers}), got {layer}")
    if not 0 <= head < model.cfg.n_heads:
        raise ValueError(f"head must lie in [0, {model.cfg.n_heads}), got {head}")
    a = attention_parts(model, cache, layer, batch_index)
    y = a.total
    prox = torch.cat(
        [proximity(y, a.resid)[:, None], proximity(y[:, None], a.heads.sum(2)), proximity(y, a.bias)[:, None]], dim=1
    )
    return proximity(y[:, None], a.heads[:, :, head]) / prox.sum(-1, keepdim=True).clamp_min(1e-30)
