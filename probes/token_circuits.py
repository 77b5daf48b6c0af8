"""QK and OV circuits of one head in token space (small vocabularies), and how much a head copies.

Both use the direct path from the token embeddings: a token's embedding goes through the
layer's ln1 (as a lone row; positions are left out) into the head. The OV circuit's output
then goes through the final LayerNorm with its scale frozen at 1 (centre, multiply by its
weight) into the unembedding, so it ranks output tokens but its size is not calibrated.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from blocks.transformer import Transformer

MAX_VOCAB = 4096  # a d_vocab x d_vocab matrix beyond this is too big to be worth drawing


def _embedded(model: Transformer, layer: int, head: int) -> Tensor:
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must lie in [0, {model.cfg.n_layers}), got {layer}")
    if not 0 <= head < model.cfg.n_heads:
        raise ValueError(f"head must lie in [0, {model.cfg.n_heads}), got {head}")
    if model.cfg.d_vocab > MAX_VOCAB:
        raise ValueError(f"d_vocab={model.cfg.d_vocab} is too large for token-space circuits (at most {MAX_VOCAB})")
    return model.blocks[layer].ln1(model.W_E[None])[0]  # nn.Identity when the model has no LayerNorm


@torch.no_grad()
def qk_circuit(model: Transformer, layer: int, head: int) -> Float[Tensor, "query_token key_token"]:
    """Attention score (before scaling) of a query token for a key token: E W_Q W_K^T E^T (+ biases)."""
    x = _embedded(model, layer, head)
    attn = model.blocks[layer].attn
    q = x @ attn.W_Q[head] + attn.b_Q[head]
    k = x @ attn.W_K[head] + attn.b_K[head]
    return (q @ k.T).cpu()


@torch.no_grad()
def ov_circuit(model: Transformer, layer: int, head: int) -> Float[Tensor, "source_token out_token"]:
    """Direct logit effect of attending to a source token: E W_V W_O (through ln_final) W_U."""
    x = _embedded(model, layer, head)
    attn = model.blocks[layer].attn
    out = (x @ attn.W_V[head] + attn.b_V[head]) @ attn.W_O[head]
    if model.cfg.normalization is not None:  # LNPre centres too, without a weight
        out = out - out.mean(-1, keepdim=True)
        if model.cfg.normalization == "LN":
            out = out * model.ln_final.weight
    return (out @ model.W_U).cpu()


def copying_score(ov: Float[Tensor, "source_token out_token"]) -> float:
    """Sum of the OV matrix's eigenvalues over the sum of their sizes (Elhage et al., 2021).

    Near 1: attending to a token raises that same token's logit (a copying head); near -1:
    it suppresses it.
    """
    if ov.shape[0] != ov.shape[1]:
        raise ValueError(f"the copying score needs a square token x token matrix, got {tuple(ov.shape)}")
    eig = torch.linalg.eigvals(ov.double())
    return float(eig.real.sum() / eig.abs().sum())


def copying_fraction(ov: Float[Tensor, "source_token out_token"]) -> float:
    """Share of source tokens whose own logit is the one the OV circuit raises most."""
    return float((ov.argmax(-1) == torch.arange(ov.shape[0])).float().mean())


def circuit_figure(
    matrix: Float[Tensor, "a b"],
    vocab: Sequence[str],
    title: str,
    x_title: str,
    y_title: str,
    keep: Sequence[int] | None = None,
) -> go.Figure:
    """A token x token heatmap (rows: y_title, columns: x_title), of the tokens in `keep` only when given.

    Both axes are categorical: token names such as "0".."112" would otherwise make plotly draw a
    numeric axis, where a token like "BOS" has no place and the order follows the numbers.
    """
    if len(vocab) != matrix.shape[0] or len(vocab) != matrix.shape[1]:
        raise ValueError(f"got {len(vocab)} token names for a {tuple(matrix.shape)} matrix")
    ids = list(range(len(vocab))) if keep is None else list(dict.fromkeys(int(i) for i in keep))
    if not ids or not all(0 <= i < len(vocab) for i in ids):
        raise ValueError(f"keep must name tokens 0..{len(vocab) - 1}; got {list(keep or [])}")
    names = [vocab[i] for i in ids]
    fig = go.Figure(
        go.Heatmap(
            z=matrix[ids][:, ids].tolist(),
            x=names,
            y=names,
            colorscale="RdBu",
            zmid=0.0,
            hovertemplate=f"{y_title} %{{y}}, {x_title} %{{x}}: %{{z:.3f}}<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, yaxis_autorange="reversed")
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig
