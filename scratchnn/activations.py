"""Element-wise activations and Flatten, written from scratch."""

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scratchnn import backend


class ReLU(nn.Module):
    """max(x, 0), element-wise: x where x is positive, else 0 (so the slope at exactly 0 is 0, as torch's)."""

    def forward(self, x: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
        if fast := backend.fast("relu"):
            return fast(x)
        return torch.where(x > 0, x, 0.0)


class GELU(nn.Module):
    """x * Phi(x), Phi the standard normal's CDF: the exact (erf) GELU that torch.nn.GELU() computes by default."""

    def forward(self, x: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
        if fast := backend.fast("gelu"):
            return fast(x)
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class NewGELU(nn.Module):
    """GPT-2's GELU ("gelu_new"): x * Phi(x) with Phi approximated by 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).

    GPT-2 was trained with this approximation, so its weights need it: the exact GELU differs by up to 1e-3.
    """

    def forward(self, x: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class Flatten(nn.Module):
    """Keep the batch dimension and flatten everything after it: [batch, ...] -> [batch, features]."""

    def forward(self, x: Float[Tensor, "batch *rest"]) -> Float[Tensor, "batch features"]:  # noqa: F821
        return x.reshape(x.shape[0], -1)
