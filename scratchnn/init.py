"""Weight initialisers written out, so the variance argument behind each bound is visible."""

import math

import torch
from torch import Tensor


def _fans(tensor: Tensor) -> tuple[int, int]:
    """Return (fan_in, fan_out) of a weight stored as [out_features, in_features, ...]."""
    if tensor.dim() < 2:
        raise ValueError(f"fan in/out needs a weight with at least 2 dimensions, got shape {tuple(tensor.shape)}")
    receptive = math.prod(tensor.shape[2:]) if tensor.dim() > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def kaiming_uniform_(tensor: Tensor, fan_in: int | None = None) -> Tensor:
    """Fill `tensor` in place from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's Linear default.

    Why this bound: U(-b, b) has variance b^2 / 3, so b = 1/sqrt(n_in) gives each weight
    variance 1 / (3 n_in). A unit's pre-activation sums n_in products w_i x_i, so
    Var(y) = n_in * Var(w) * E[x^2] = E[x^2] / 3: the scale of the output no longer grows
    with the width of the input. (This is kaiming_uniform with a = sqrt(5), as torch.nn.Linear
    uses; the ReLU-gain version would take b = sqrt(6 / n_in) to keep E[x^2] fixed through ReLUs.)
    `fan_in` defaults to the second dimension of a [out_features, in_features] weight.
    """
    n_in = _fans(tensor)[0] if fan_in is None else fan_in
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """Fill `tensor` in place from U(-b, b) with b = gain * sqrt(6 / (n_in + n_out)) (Glorot & Bengio).

    Why this bound: forward, Var(y) = n_in Var(w) Var(x) keeps the signal's scale when
    Var(w) = 1 / n_in; backward, gradients keep theirs when Var(w) = 1 / n_out. The compromise
    Var(w) = 2 / (n_in + n_out), with U(-b, b) having variance b^2 / 3, gives
    b = sqrt(6 / (n_in + n_out)). Activations through a deep linear stack then keep a
    roughly constant variance instead of exploding or vanishing.
    """
    n_in, n_out = _fans(tensor)
    bound = gain * math.sqrt(6.0 / (n_in + n_out))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)
