"""`x @ W + b` as one fused kernel, for the matmuls of the transformer's hot path."""

import torch
from jaxtyping import Float
from torch import Tensor


def affine(
    x: Float[Tensor, "*batch d_in"], weight: Float[Tensor, "d_in d_out"], bias: Float[Tensor, "d_out"]
) -> Float[Tensor, "*batch d_out"]:
    """x @ weight + bias, with the bias added inside the matmul (addmm) rather than in a second pass."""
    flat = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
    return flat.view(*x.shape[:-1], weight.shape[-1])
