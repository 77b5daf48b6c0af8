"""LayerNorm with hook points at its scale and its output."""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from scratchnn import HookPoint, LayerNorm


class HookedLayerNorm(LayerNorm):
    """scratchnn.LayerNorm that exposes `hook_scale` and `hook_normalized` (after the affine map).

    Where these land matches TransformerLens, so caches compare name by name. When nobody
    listens to the scale, torch's fused layer_norm computes the same map in one pass.
    """

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__(d_model, eps)
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if not self.hook_scale.is_listened():
            return self.hook_normalized(F.layer_norm(x, (self.normalized_shape,), self.weight, self.bias, self.eps))
        # TransformerLens's order of operations (biased variance), so caches agree to float precision;
        # torch.var_mean would read x once but is ~30x slower on CPU for a last-dim reduction.
        centred = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(torch.addcmul(self.bias, centred / scale, self.weight))
