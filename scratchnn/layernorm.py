"""LayerNorm written from scratch: biased variance, eps inside the square root, affine."""

import torch
from jaxtyping import Float
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """Normalise the last dimension to zero mean and unit (biased) variance, then scale and shift.

    Parameters are named `weight` and `bias` as in torch.nn.LayerNorm, so state dicts move
    between the two.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5) -> None:
        super().__init__()
        if normalized_shape <= 0:
            raise ValueError(f"LayerNorm needs a positive normalized_shape, got {normalized_shape}")
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(normalized_shape))
        self.bias = nn.Parameter(torch.empty(normalized_shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()

    def scale(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch 1"]:
        """The denominator sqrt(var + eps) of each row (biased variance)."""
        centred = x - x.mean(-1, keepdim=True)
        return (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        if x.shape[-1] != self.normalized_shape:
            raise ValueError(
                f"LayerNorm expected a last dimension of {self.normalized_shape}, got shape {tuple(x.shape)}"
            )
        centred = x - x.mean(-1, keepdim=True)
        scale = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        return centred / scale * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"
