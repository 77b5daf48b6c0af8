"""MLP neurons: their top activating examples over a dataset, and their direct effect on the logits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer


@dataclass(frozen=True)
class TopExamples:
    """The `k` (row, position) places where one neuron fires most, strongest first."""

    layer: int
    neuron: int
    values: Float[Tensor, " k"]
    rows: Int[Tensor, " k"]
    positions: Int[Tensor, " k"]


def _check_neuron(model: Transformer, layer: int, neuron: int | None = None) -> None:
    if model.cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLP neurons")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must lie in [0, {model.cfg.n_layers}), got {layer}")
    if neuron is not None and not 0 <= neuron < model.cfg.d_mlp:
        raise ValueError(f"neuron must lie in [0, {model.cfg.d_mlp}), got {neuron}")


@torch.no_grad()
def neuron_activations(
    model: Transformer, tokens: Int[Tensor, "batch pos"], layer: int, batch_size: int = 64
) -> Float[Tensor, "batch pos d_mlp"]:
    """Every neuron's activation (`mlp.hook_post`) of one layer over `tokens`, in batches."""
    _check_neuron(model, layer)
    name = f"blocks.{layer}.mlp.hook_post"
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start : start + batch_size].to(device), names=name, stop_early=True)
        chunks.append(cache[name].cpu())
    return torch.cat(chunks)


@torch.no_grad()
def top_activating_examples(
    model: Transformer, tokens: Int[Tensor, "batch pos"], layer: int, neuron: int, k: int = 10, batch_size: int = 64
) -> TopExamples:
    """Where in `tokens` neuron `neuron` of layer `layer` fires most."""
    _check_neuron(model, layer, neuron)
    acts = neuron_activations(model, tokens, layer, batch_size)[..., neuron]  # batch pos
    top = acts.flatten().topk(min(k, acts.numel()))
    pos = acts.shape[1]
    return TopExamples(layer, neuron, top.values, top.indices // pos, top.indices % pos)


def top_examples_figure(
    examples: TopExamples, tokens: Int[Tensor, "batch pos"], token_strs: Sequence[str], window: int = 8
) -> go.Figure:
    """A table: activation, and the text around each top position with the token itself in [brackets]."""
    texts = []
    for r, p in zip(examples.rows.tolist(), examples.positions.tolist()):
        lo = max(0, p - window)
        ctx = [token_strs[t] for t in tokens[r, lo : p + 1].tolist()]
        ctx[-1] = f"[{ctx[-1]}]"
        texts.append(" ".join(ctx))
    fig = go.Figure(
        go.Table(
            header={"values": ["activation", "row", "pos", "context"]},
            cells={
                "values": [
                    [f"{v:.3f}" for v in examples.values.tolist()],
                    examples.rows.tolist(),
                    examples.positions.tolist(),
                    texts,
                ]
            },
        )
    )
    fig.update_layout(title=f"top activations of L{examples.layer} neuron {examples.neuron}")
    return fig


@torch.no_grad()
def neuron_logit_effects(
    model: Transformer, layer: int, tokens: Int[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "d_mlp d_vocab"]:
    """Each neuron's direct effect on the logits per unit of activation: W_out[n] @ W_U through the final LN.

    The final LayerNorm is linear once its scale is frozen: centre, divide by the scale, multiply
    by its weight. The scale is the mean `ln_final.hook_scale` over `tokens` when given, else 1
    (then the values rank tokens correctly for a neuron but their size is not in logits).
    """
    _check_neuron(model, layer)
    direction = model.blocks[layer].mlp.W_out  # d_mlp d_model
    if model.cfg.normalization is not None:
        scale = torch.tensor(1.0)
        if tokens is not None:
            _, cache = model.run_with_cache(tokens.to(direction.device), names="ln_final.hook_scale")
            scale = cache["ln_final.hook_scale"].mean()
        direction = (direction - direction.mean(-1, keepdim=True)) / scale
        if model.cfg.normalization == "LN":
            direction = direction * model.ln_final.weight
    return (direction @ model.W_U).cpu()


def neuron_logit_figure(
    effects: Float[Tensor, "d_mlp d_vocab"], neuron: int, vocab: Sequence[str], k: int = 10
) -> go.Figure:
    """The k tokens a neuron pushes up most and the k it pushes down most, as bars from most up to most down.

    A vocabulary of at most 2k tokens is drawn whole, each token once. The x axis is categorical,
    so tokens named by numbers keep this order and none is merged or dropped.
    """
    row = effects[neuron]
    if row.numel() <= 2 * k:
        idx = row.argsort(descending=True).tolist()
    else:
        up, down = row.topk(k), (-row).topk(k)
        idx = up.indices.tolist() + down.indices.flip(0).tolist()
    vals = row[idx].tolist()
    fig = go.Figure(
        go.Bar(
            x=[vocab[i] for i in idx],
            y=vals,
            marker_color=["#2b6cb0" if v >= 0 else "#c53030" for v in vals],
            hovertemplate="token %{x}: %{y:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"direct logit effect of neuron {neuron}", xaxis_title="token", yaxis_title="logit per unit activation"
    )
    fig.update_xaxes(type="category")
    return fig
