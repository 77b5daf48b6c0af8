"""LayerNorm with hook points at its scale and its output."""

from jaxtyping import Float
from torch import Tensor

from scratchnn import HookPoint, LayerNorm


class HookedLayerNorm(LayerNorm):
    """scratchnn.LayerNorm that exposes `hook_scale` and `hook_normalized` (after the affine map).

    Where these land matches TransformerLens, so caches compare name by name.
    """

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__(d_model, eps)
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        centred = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(centred / scale * self.weight + self.bias)

