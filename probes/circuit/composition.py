"""Q-, K- and V-composition between heads (Elhage et al. 2021), from the weights alone.

Head A (an earlier layer) composes with head B when what A writes (its OV circuit W_V W_O,
a d_model x d_model map) lands in the subspace B reads: B's queries (Q), keys (K) or values
(V). The score is ||W_OV^A M^B||_F / (||W_OV^A||_F ||M^B||_F) with M^B = W_Q W_K^T (Q), its
transpose (K) or B's own W_OV (V), in TransformerLens's row-vector convention. LayerNorms are
left out, as there. Every product is computed through d_head x d_head Gram matrices, so the
cost does not grow with d_model cubed.
"""

from __future__ import annotations

from typing import Literal

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from blocks.transformer import Transformer

Kind = Literal["q", "k", "v"]


def _grams(W_Q: Tensor, W_K: Tensor, W_V: Tensor, W_O: Tensor) -> dict[str, Tensor]:
    """Per-head Gram matrices [..., d_head, d_head]: V^T V, K^T K, Q^T Q and O O^T."""
    t = lambda w: w.transpose(-1, -2)  # noqa: E731
    return {"V": t(W_V) @ W_V, "K": t(W_K) @ W_K, "Q": t(W_Q) @ W_Q, "O": W_O @ t(W_O)}


def _scores(
    kind: str,
    W_Q: Tensor,
    W_K: Tensor,
    W_V: Tensor,
    W_O: Tensor,
    W_Qb: Tensor,
    W_Kb: Tensor,
    W_Vb: Tensor,
    W_Ob: Tensor,
) -> Tensor:
    """Scores of every writer head (first axis of W_*) against every reader head (first axis of W_*b)."""
    a, b = _grams(W_Q, W_K, W_V, W_O), _grams(W_Qb, W_Kb, W_Vb, W_Ob)
    # ||V_A O_A X_B Y_B^T||^2 = tr(M^T G_V[A] M G_Y[B]) with M = O_A X_B
    x, gram_y = {"q": (W_Qb, b["K"]), "k": (W_Kb, b["Q"]), "v": (W_Vb, b["O"])}[kind]
    m = einops.einsum(W_O, x, "a d_head d_model, b d_model e_head -> a b d_head e_head")
    left = einops.einsum(a["V"], m, "a d_head f_head, a b f_head e_head -> a b d_head e_head")
    right = einops.einsum(m, gram_y, "a b d_head e_head, b e_head g_head -> a b d_head g_head")
    product = einops.einsum(left, right, "a b d_head e_head, a b d_head e_head -> a b")
    norm_a = einops.einsum(a["V"], a["O"], "a d_head e_head, a e_head d_head -> a")
    if kind == "v":
        norm_b = einops.einsum(b["V"], b["O"], "b d_head e_head, b e_head d_head -> b")
    else:
        norm_b = einops.einsum(b["Q"], b["K"], "b d_head e_head, b e_head d_head -> b")
    return (product.clamp(min=0) / (norm_a[:, None] * norm_b[None, :])).sqrt()


@torch.no_grad()
def composition_scores(model: Transformer, kind: Kind) -> Float[Tensor, "layer_a head_a layer_b head_b"]:
    """Composition score of every head A with every head B; NaN unless B's layer is after A's (or a head is all zeros)."""
    if kind not in ("q", "k", "v"):
        raise ValueError(f"kind must be 'q', 'k' or 'v', got {kind!r}")
    cfg = model.cfg
    stack = lambda name: torch.stack([getattr(b.attn, name) for b in model.blocks]).flatten(0, 1)  # noqa: E731
    weights = [stack(n).float() for n in ("W_Q", "W_K", "W_V", "W_O")]
    scores = _scores(kind, *weights, *weights).view(cfg.n_layers, cfg.n_heads, cfg.n_layers, cfg.n_heads)
    layer = torch.arange(cfg.n_layers)
    later = (layer[None, :] > layer[:, None])[:, None, :, None].expand_as(scores)
    return torch.where(later, scores.cpu(), float("nan"))


@torch.no_grad()
def composition_baseline(model: Transformer, kind: Kind, samples: int = 256, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the score between random Gaussian heads of this model's shapes: what chance gives."""
    if kind not in ("q", "k", "v"):
        raise ValueError(f"kind must be 'q', 'k' or 'v', got {kind!r}")
    if samples < 2:
        raise ValueError(f"samples must be at least 2, got {samples}")
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    shape_in, shape_out = (samples, cfg.d_model, cfg.d_head), (samples, cfg.d_head, cfg.d_model)
    draw = lambda shape: torch.randn(shape, generator=gen)  # noqa: E731
    a = [draw(shape_in), draw(shape_in), draw(shape_in), draw(shape_out)]
    b = [draw(shape_in), draw(shape_in), draw(shape_in), draw(shape_out)]
    # sample i of A against sample i of B: independent pairs (one at a time, not all samples x samples)
    pairs = torch.stack(
        [_scores(kind, *(w[i : i + 1] for w in a), *(w[i : i + 1] for w in b))[0, 0] for i in range(samples)]
    )
    return float(pairs.mean()), float(pairs.std())
