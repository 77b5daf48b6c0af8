"""Linear layer written from scratch, with the same parameters and state dict as nn.Linear."""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scratchnn import backend, init


class Linear(nn.Module):
    """y = x @ weight.T + bias, with weight stored [out_features, in_features] as torch does.

    The [out, in] orientation makes each row one output unit's weights, so the state dict
    loads into torch.nn.Linear and back unchanged. Weights start as torch.nn.Linear's do
    (`init.kaiming_uniform_`), or, given `init_std`, as GPT-2's: N(0, init_std^2) and a zero bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_std: float | None = None) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear needs positive sizes, got in_features={in_features}, out_features={out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init_std is not None:
            nn.init.normal_(self.weight, std=self.init_std)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
            return
        init.kaiming_uniform_(self.weight)
        if self.bias is not None:
            init.kaiming_uniform_(self.bias, fan_in=self.in_features)

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear expected inputs whose last dimension is in_features={self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        if fast := backend.fast("linear"):
            return fast(x, self.weight, self.bias)
        out = x @ self.weight.T
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
