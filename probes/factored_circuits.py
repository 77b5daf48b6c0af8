"""A head's QK and OV circuits in d_model space, as factored matrices (A @ B, never formed unless asked).

QK: a query stream x_q and a key stream x_k score x_q A B x_k^T (before the 1/sqrt(d_head) scale),
with A = W_Q [d_model, d_head] and B = W_K^T (in a shortformer model the query and key streams
include the positional embedding). OV: a key's stream x writes x A B to the residual
stream, A = W_V, B = W_O (b_O belongs to no head and is left out).

`biases=True` appends a constant 1 to the stream (so the matrices are d_model + 1 wide): A's last
row is b_Q (or b_V) and B's last column b_K. `fold_ln=True` moves ln1's weight and bias into A and
B, so the matrices read the stream as ln1 centres and scales it, before its weight: for LN and LNPre
models that is (x - mean) / scale, `ln1.hook_scale`. The token-space circuits are in
probes.token_circuits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from blocks.transformer import Transformer


@dataclass(frozen=True)
class FactoredMatrix:
    """The matrix A @ B kept as its factors: [d_in, mid] @ [mid, d_out], mid = d_head << d_model."""

    A: Float[Tensor, "d_in mid"]
    B: Float[Tensor, "mid d_out"]

    @property
    def AB(self) -> Float[Tensor, "d_in d_out"]:
        return self.A @ self.B

    @property
    def shape(self) -> tuple[int, int]:
        return (self.A.shape[0], self.B.shape[1])

    def eigenvalues(self) -> Tensor:
        """The non-zero eigenvalues of A @ B, from the small [mid, mid] matrix B @ A (same non-zero spectrum)."""
        return torch.linalg.eigvals(self.B @ self.A)

    def singular_values(self) -> Tensor:
        """The singular values of A @ B (at most mid of them are non-zero)."""
        q_a, r_a = torch.linalg.qr(self.A)
        q_b, r_b = torch.linalg.qr(self.B.T)
        return torch.linalg.svdvals(r_a @ r_b.T)


def _checked(model: Transformer, layer: int, head: int) -> None:
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must lie in [0, {model.cfg.n_layers}), got {layer}")
    if not 0 <= head < model.cfg.n_heads:
        raise ValueError(f"head must lie in [0, {model.cfg.n_heads}), got {head}")


def _reader(
    model: Transformer, layer: int, W: Tensor, b: Tensor, biases: bool, fold_ln: bool
) -> Float[Tensor, "d_in d_head"]:
    """W [d_model, d_head] (and b as a last row when `biases`), with ln1's weight and bias folded in when `fold_ln`."""
    ln = model.blocks[layer].ln1
    if fold_ln and model.cfg.normalization is None:
        raise ValueError("fold_ln: this model has no LayerNorm to fold")
    if fold_ln and model.cfg.positional == "shortformer":
        raise ValueError("fold_ln: a shortformer model adds positions after ln1, so ln1 cannot be folded into W_Q/W_K")
    if fold_ln and model.cfg.normalization == "LN":
        b = b + ln.bias @ W
        W = ln.weight[:, None] * W
    return torch.cat([W, b[None]]) if biases else W


@torch.no_grad()
def qk_factored(
    model: Transformer, layer: int, head: int, biases: bool = False, fold_ln: bool = False
) -> FactoredMatrix:
    """The head's QK circuit in d_model space: x_q A B x_k^T is its attention score before scaling."""
    _checked(model, layer, head)
    attn = model.blocks[layer].attn
    A = _reader(model, layer, attn.W_Q[head], attn.b_Q[head], biases, fold_ln)
    B = _reader(model, layer, attn.W_K[head], attn.b_K[head], biases, fold_ln).T
    return FactoredMatrix(A.clone(), B.clone())


@torch.no_grad()
def ov_factored(
    model: Transformer, layer: int, head: int, biases: bool = False, fold_ln: bool = False
) -> FactoredMatrix:
    """The head's OV circuit in d_model space: a key stream x writes x A B when fully attended to."""
    _checked(model, layer, head)
    attn = model.blocks[layer].attn
    A = _reader(model, layer, attn.W_V[head], attn.b_V[head], biases, fold_ln)
    return FactoredMatrix(A.clone(), attn.W_O[head].clone())
