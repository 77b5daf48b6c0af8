"""LayerNorm written from scratch, with hook points at its scale and its output."""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scratchnn import backend
from scratchnn.hooks import HookPoint


class LayerNorm(nn.Module):
    """Normalise the last dimension to zero mean and unit (biased) variance, then scale and shift.

    Parameters are named `weight` and `bias` as in torch.nn.LayerNorm, so state dicts move
    between the two. `hook_scale` is each row's sqrt(var + eps) and `hook_normalized` the
    output after the weight and bias, where TransformerLens has them.

    `elementwise_affine=False` (as in torch) leaves out the weight and bias, which are then None:
    TransformerLens's "LNPre", the normalisation left when the weights are folded into the next layer.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True) -> None:
        super().__init__()
        if normalized_shape <= 0:
            raise ValueError(f"LayerNorm needs a positive normalized_shape, got {normalized_shape}")
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.weight = nn.Parameter(torch.empty(normalized_shape)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.empty(normalized_shape)) if elementwise_affine else None
        self.hook_scale = HookPoint()  # [*batch, 1]
        self.hook_normalized = HookPoint()  # [*batch, d]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        if x.shape[-1] != self.normalized_shape:
            raise ValueError(
                f"LayerNorm expected a last dimension of {self.normalized_shape}, got shape {tuple(x.shape)}"
            )
        if not self.hook_scale.is_listened() and (fast := backend.fast("layer_norm")):
            return self.hook_normalized(fast(x, self.weight, self.bias, self.eps))
        centred = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        if not self.elementwise_affine:
            return self.hook_normalized(centred / scale)
        return self.hook_normalized(centred / scale * self.weight + self.bias)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
