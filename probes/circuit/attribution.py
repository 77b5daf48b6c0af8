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
from torch import Tensor, nn

from blocks.transformer import Transformer
from probes.circuit.contrast import Contrast
from probes.circuit.graph import Graph
from probes.circuit.scores import EdgeScores
from scratchnn import HookPoint

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
        kind, torch.stack(per_layer).detach().cpu(), float(value.detach()), float(contrast.value(corrupted_logits))
    )


def _layer_norm_vjp(norm: nn.Module, x: Tensor, grad: Tensor) -> Tensor:
    """The gradient at a LayerNorm's input `x` [..., 1, d] given the gradient at its output [..., n, d], per row n.

    Every head reads the same stream through the same ln1, so one set of statistics serves all
    their inputs; written out here so that no per-head copy of the stream is ever formed.
    """
    if isinstance(norm, nn.Identity):
        return grad
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    normalized = centred / scale
    g = grad if norm.weight is None else grad * norm.weight  # LNPre (folded LayerNorm) has no weight
    return (g - g.mean(-1, keepdim=True) - normalized * (g * normalized).mean(-1, keepdim=True)) / scale


def _is_sender_hook(name: str) -> bool:
    return name in ("hook_embed", "hook_pos_embed") or name.endswith(("attn.hook_z", "hook_mlp_out"))


def _sender_rows(
    model: Transformer, graph: Graph, clean: dict[str, Tensor], corrupted: dict[str, Tensor]
) -> list[Tensor]:
    """Each sender's corrupted write minus its clean one, flattened, in graph order: blocks of [senders, batch * pos * d_model].

    A head's write is z_h @ W_O[h], so its difference comes from the two runs' z, and neither
    run has to form every head's result. The blocks are kept apart (not concatenated): on the
    benchmark model they hold 300 MB.
    """
    diff = lambda name: corrupted[name] - clean[name]  # noqa: E731
    rows = [diff("hook_embed").flatten()[None]]
    if graph.has_pos_embed:
        rows.append(diff("hook_pos_embed").flatten()[None])
    for layer, block in enumerate(model.blocks):
        heads = einops.einsum(
            diff(f"blocks.{layer}.attn.hook_z"),
            block.attn.W_O.detach(),
            "batch pos n_heads d_head, n_heads d_head d_model -> n_heads batch pos d_model",
        )
        rows.append(heads.flatten(1))
        if graph.has_mlp:
            rows.append(diff(f"blocks.{layer}.hook_mlp_out").flatten()[None])
    return rows


@torch.enable_grad()  # gradients are the method, also when the caller runs under torch.no_grad()
def _gradient_scores(
    model: Transformer, contrast: Contrast, corrupted: dict[str, Tensor], alphas: list[float]
) -> tuple[Float[Tensor, "sender receiver"], float]:
    """sum over batch, pos, d_model of diff[s] * dmetric/d(input of r), averaged over the gradient points; and m(clean).

    One ordinary forward and backward pass per point (alpha 1 is the clean run, done first:
    it also records the clean writes). Backward hooks read the gradient at each head's q, k
    and v and at each MLP's pre-activation, which W_Q (W_K, W_V, W_in) and the LayerNorm's
    vjp take back to that receiver's residual-stream input; one matrix product per layer then
    scores every edge into it.
    """
    graph, cfg = Graph.of(model.cfg), model.cfg
    upstream = graph.valid.sum(0).tolist()  # senders are in forward order: receiver r reads the first upstream[r]
    scores = torch.zeros(graph.valid.shape, dtype=model.W_E.dtype, device=model.W_E.device)
    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    senders: list[Tensor] | None = None
    clean_value = float("nan")
    for alpha in sorted(alphas, reverse=True):
        carriers: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        clean: dict[str, Tensor] = {}
        leaf: list[Tensor] = []

        def embed(act: Tensor, hook: HookPoint, alpha: float = alpha) -> Tensor:
            if alpha != 1.0:  # integrated gradients: the token embeddings between corrupted and clean
                act = corrupted["hook_embed"] + alpha * (act - corrupted["hook_embed"])
            leaf.append(act.detach().requires_grad_())
            return leaf[0]

        def keep(act: Tensor, hook: HookPoint) -> None:
            carriers[hook.name] = act.detach()

        def record(act: Tensor, hook: HookPoint) -> None:
            clean[hook.name] = act.detach()

        def grad_of(grad: Tensor, hook: HookPoint) -> None:
            grads[hook.name] = grad

        fwd = [(lambda n: n.endswith(("hook_resid_pre", "hook_resid_mid")), keep)]
        fwd += [(_is_sender_hook, record)] if senders is None else []
        fwd += [("hook_embed", embed)]  # after the recording hook: the clean embedding is recorded first
        bwd = [(lambda n: n.endswith(("attn.hook_q", "attn.hook_k", "attn.hook_v", "mlp.hook_pre")), grad_of)]
        with model.hooks(fwd=fwd, bwd=[*bwd, (last, grad_of)]):
            value = _metric_with_grad(contrast, model(contrast.clean))
            torch.autograd.grad(value, leaf)
        _check_gradient([grads[last]], "receiver input")
        if senders is None:
            senders, clean_value = _sender_rows(model, graph, clean, corrupted), float(value.detach())

        def add(receivers: list[int], grad_in: Tensor) -> None:
            n = max(upstream[r] for r in receivers)  # rows past a receiver's own upstream are masked out later
            flat = einops.rearrange(grad_in, "batch pos r d_model -> (batch pos d_model) r")
            start = 0
            for rows in senders:
                if start >= n:
                    break
                scores[start : start + len(rows), receivers] += rows @ flat
                start += len(rows)

        for layer, block in enumerate(model.blocks):
            attn = block.attn
            weights = torch.cat([attn.W_Q, attn.W_K, attn.W_V]).detach()  # [3 n_heads, d_model, d_head], q k v
            g = torch.cat([grads[f"blocks.{layer}.attn.hook_{x}"] for x in "qkv"], dim=2)
            back = einops.einsum(g, weights, "b p r d_head, r d_model d_head -> b p r d_model")
            inputs = _layer_norm_vjp(block.ln1, carriers[f"blocks.{layer}.hook_resid_pre"][:, :, None], back)
            add([graph.receiver_index(f"L{layer}H{h}.{x}") for x in "qkv" for h in range(cfg.n_heads)], inputs)
            if not cfg.attn_only:
                back = grads[f"blocks.{layer}.mlp.hook_pre"] @ block.mlp.W_in.detach().T
                mid = carriers[f"blocks.{layer}.hook_resid_mid"]
                add([graph.receiver_index(f"MLP{layer}")], _layer_norm_vjp(block.ln2, mid, back)[:, :, None])
        add([graph.receiver_index("logits")], grads[last][:, :, None])
    return (scores / len(alphas)).cpu(), clean_value


def edge_attribution(
    model: Transformer, contrast: Contrast, method: Literal["eap", "eap-ig"] = "eap", steps: int = 5
) -> EdgeScores:
    """EAP (gradient at the clean run) or EAP-IG (`steps` interpolation points) for every edge of the model's graph.

    Costs one forward pass on the corrupted prompts and one forward and backward pass per
    gradient point, whatever the number of edges.
    """
    if method not in ("eap", "eap-ig"):
        raise ValueError(f"method must be 'eap' or 'eap-ig', got {method!r}")
    contrast.check(model)
    graph = Graph.of(model.cfg)
    if method == "eap-ig" and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int (the interpolation points of EAP-IG), got {steps!r}")
    with torch.no_grad():
        corrupted_logits, corrupted = model.run_with_cache(contrast.corrupted, names=_is_sender_hook)
    alphas = [k / steps for k in range(1, steps + 1)] if method == "eap-ig" else [1.0]
    scores, clean = _gradient_scores(model, contrast, dict(corrupted.items()), alphas)
    return EdgeScores(
        graph,
        torch.where(graph.valid, scores, 0.0).detach(),
        method,
        clean,
        float(contrast.value(corrupted_logits)),
    )
