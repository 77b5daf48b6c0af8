"""Attribution patching: a first-order estimate of every patch from one backward pass.

Patching an activation a from its clean value to its corrupted value changes the metric by
about (a_corrupted - a_clean) . dmetric/da, the gradient taken on the clean run (AtP, Nanda
2023; Syed et al. 2023). For an edge s -> r the activation is receiver r's input and the
change is sender s's write, so one backward pass that yields every receiver's input gradient
scores every edge at once (EAP). EAP-IG (Hanna et al. 2024) averages that gradient over
`steps` runs whose token embeddings are interpolated between corrupted and clean (integrated
gradients), which follows a metric that saturates (a probability, a loss) far better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from blocks.transformer import Transformer
from probes.circuit.contrast import Contrast
from probes.circuit.edges import run_edges, sender_values
from probes.circuit.graph import QKV, Graph
from probes.circuit.scores import EdgeScores

NodeKind = Literal["heads", "mlp", "neurons", "resid"]
NODE_HOOKS = {
    "heads": "attn.hook_z",  # [batch pos n_heads d_head]: one unit per head
    "mlp": "hook_mlp_out",  # [batch pos d_model]: one unit per layer
    "neurons": "mlp.hook_post",  # [batch pos d_mlp]: one unit per neuron
    "resid": "hook_resid_pre",  # [batch pos d_model]: one unit per layer, kept per position
}


class ZeroGradientError(ValueError):
    """The metric's gradient is zero everywhere: it does not depend on what is being attributed."""


@dataclass(frozen=True)
class NodeAttribution:
    """AtP estimate of patching each unit (head, MLP, neuron, residual stream) to its corrupted value, per position.

    `values[layer, unit, pos]`; `total()` sums the positions. Like EdgeScores, a value is an
    estimate of metric(patched) - metric(clean).
    """

    kind: str
    values: Float[Tensor, "layer unit pos"]
    clean: float
    corrupted: float

    def total(self) -> Float[Tensor, "layer unit"]:
        return self.values.sum(-1)


def _check_gradient(grads: list[Tensor], what: str) -> None:
    if all(g is None or not g.any() for g in grads):
        raise ZeroGradientError(
            f"the metric's gradient with respect to every {what} is zero, so every attribution would be 0: the "
            "metric does not depend on the logits through them (or its softmax is saturated); use a metric of "
            "the logits such as a logit difference"
        )


def _metric_with_grad(contrast: Contrast, logits: Tensor) -> Tensor:
    value = contrast.value(logits)
    if not value.requires_grad:
        raise ZeroGradientError(
            "the metric does not depend on the logits (its value carries no gradient), so nothing can be "
            "attributed; compute it from the logits it is given"
        )
    return value


@torch.enable_grad()  # gradients are the method, also when the caller runs under torch.no_grad()
def node_attribution(model: Transformer, contrast: Contrast, kind: NodeKind = "heads") -> NodeAttribution:
    """AtP for every head (hook_z), MLP output, neuron (hook_post) or residual stream (resid_pre), at every position."""
    if kind not in NODE_HOOKS:
        raise ValueError(f"kind must be one of {list(NODE_HOOKS)}, got {kind!r}")
    if kind in ("mlp", "neurons") and model.cfg.attn_only:
        raise ValueError(f"an attention-only model has no MLPs, so there are no {kind} to attribute")
    contrast.check(model)
    names = [f"blocks.{layer}.{NODE_HOOKS[kind]}" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        corrupted_logits, corrupted = model.run_with_cache(contrast.corrupted, names=names)
    leaves: dict[str, Tensor] = {}
    clean: dict[str, Tensor] = {}

    def track(act: Tensor, hook) -> Tensor:
        clean[hook.name] = act.detach()
        leaves[hook.name] = torch.zeros_like(act, requires_grad=True)
        return act + leaves[hook.name]

    with model.hooks(fwd=[(n, track) for n in names]):
        value = _metric_with_grad(contrast, model(contrast.clean))
    grads = torch.autograd.grad(value, [leaves[n] for n in names], allow_unused=True)
    _check_gradient(list(grads), f"{kind} activation")
    per_layer = []
    for name, grad in zip(names, grads):
        effect = (corrupted[name] - clean[name]) * (torch.zeros_like(clean[name]) if grad is None else grad)
        if kind == "heads":
            per_layer.append(einops.reduce(effect, "batch pos n_heads d_head -> n_heads pos", "sum"))
        elif kind == "neurons":
            per_layer.append(einops.reduce(effect, "batch pos d_mlp -> d_mlp pos", "sum"))
        else:
            per_layer.append(einops.reduce(effect, "batch pos d_model -> 1 pos", "sum"))
    return NodeAttribution(
        kind, torch.stack(per_layer).detach(), float(value.detach()), float(contrast.value(corrupted_logits))
    )


def _gather(graph: Graph, leaves: dict[str, Tensor]) -> Float[Tensor, "batch pos receiver d_model"]:
    """The receiver groups' gradients side by side in the graph's receiver order."""
    parts = []
    for layer in range(graph.n_layers):
        parts += [leaves[f"L{layer}.{x}"].grad for x in QKV]
        if graph.has_mlp:
            parts.append(leaves[f"MLP{layer}"].grad)
    parts.append(leaves["logits"].grad)
    return torch.cat(parts, dim=2)


@torch.enable_grad()
def receiver_gradients(
    model: Transformer, contrast: Contrast, steps: int | None = None
) -> Float[Tensor, "batch pos receiver d_model"]:
    """dmetric/d(each receiver's input) on the clean run, or its mean over `steps` interpolated runs (IG)."""
    graph = Graph.of(model.cfg)
    if steps is None:
        alphas = [None]
    else:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int (the interpolation points of EAP-IG), got {steps!r}")
        with torch.no_grad():
            _, corrupted = model.run_with_cache(contrast.corrupted, names="hook_embed")
        alphas = [k / steps for k in range(1, steps + 1)]
    total = None
    for alpha in alphas:
        if alpha is None:
            embed = None
        else:
            start = corrupted["hook_embed"]
            embed = lambda clean, a=alpha: start + a * (clean - start)  # noqa: E731
        logits, leaves = run_edges(model, contrast.clean, grad_inputs=True, embed=embed)
        _metric_with_grad(contrast, logits).backward(inputs=list(leaves.values()))
        grads = _gather(graph, leaves)
        total = grads if total is None else total + grads
    assert total is not None
    _check_gradient([total], "receiver input")
    return total / len(alphas)


def edge_attribution(
    model: Transformer, contrast: Contrast, method: Literal["eap", "eap-ig"] = "eap", steps: int = 5
) -> EdgeScores:
    """EAP (gradient at the clean run) or EAP-IG (`steps` interpolation points) for every edge of the model's graph.

    Costs two forward passes for the senders' writes and one forward and backward pass per
    gradient point, whatever the number of edges.
    """
    if method not in ("eap", "eap-ig"):
        raise ValueError(f"method must be 'eap' or 'eap-ig', got {method!r}")
    contrast.check(model)
    graph = Graph.of(model.cfg)
    clean_logits, clean = sender_values(model, contrast.clean)
    corrupted_logits, corrupted = sender_values(model, contrast.corrupted)
    grads = receiver_gradients(model, contrast, steps=steps if method == "eap-ig" else None)
    scores = einops.einsum(
        corrupted - clean, grads, "batch pos sender d_model, batch pos receiver d_model -> sender receiver"
    )
    return EdgeScores(
        graph,
        torch.where(graph.valid, scores, 0.0).detach(),
        method,
        float(contrast.value(clean_logits)),
        float(contrast.value(corrupted_logits)),
    )
