"""`x @ weight.T + bias` (scratchnn.Linear's computation) through the fastest matmul this torch build has.

On x86-64 CPUs in float32, oneDNN's linear primitive (the kernel torch.compile's CPU backend
emits), with the bias added inside the matmul, forward and for the input's gradient; the weight's
gradient stays with MKL. With gradients, only for matmuls of at least MIN_MACS_WITH_GRAD
multiply-adds: on small ones the Python autograd Function around oneDNN costs what it saves.
Measured here (benchmarks/RESULTS.md): an MNIST training step, whose largest layer has 26
million, ran 11% to 20% slower with oneDNN at every size, while a transformer layer at batch
64 x 128 has 134 million or more and trains a third faster with it. Everywhere else
`torch.addmm`, which also adds the bias inside the matmul: CUDA, other dtypes, CPU autocast,
torch.compile, forward-mode AD, torch.func transforms, builds without oneDNN, and operands that
are not contiguous (oneDNN reads a strided tensor as if it were not).
"""

from __future__ import annotations

import platform

import torch
from jaxtyping import Float
from torch import Tensor

from blocks.fast.applies import batched, plain_cpu_float32

_AVAILABLE: bool | None = None  # probed on first use
MIN_MACS_WITH_GRAD = 2**25  # rows * d_in * d_out; `python benchmarks/bench_backend.py --linear` shows the crossover


def linear(
    x: Float[Tensor, "*batch d_in"], weight: Float[Tensor, "d_out d_in"], bias: Float[Tensor, " d_out"] | None
) -> Float[Tensor, "*batch d_out"]:
    """x @ weight.T + bias, with the bias added inside the matmul."""
    if bias is not None and (bias.shape != weight.shape[:1] or bias.dtype != weight.dtype):
        return x @ weight.T + bias  # a bias that broadcasts or promotes: as the module's own line computes it
    flat = x.reshape(-1, x.shape[-1])
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if _use_onednn(flat, weight, bias) and (not grad or flat.shape[0] * weight.numel() >= MIN_MACS_WITH_GRAD):
        out = _OneDNNLinear.apply(flat, weight, bias)
    elif bias is None:
        out = flat @ weight.T
    else:
        out = torch.addmm(bias, flat, weight.T)
    return out.view(*x.shape[:-1], weight.shape[0])


def onednn_available() -> bool:
    """True on x86-64 (where it was measured) when this torch build's oneDNN linear runs and agrees with addmm."""
    global _AVAILABLE
    if _AVAILABLE is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            _AVAILABLE = False
            return _AVAILABLE
        try:  # fixed values, not torch.randn: probing must not move the caller's random stream
            x = torch.linspace(-2, 2, 35).view(5, 7)
            w = torch.linspace(-1, 1, 21).view(3, 7)
            b = torch.tensor([0.1, -0.2, 0.3])
            _AVAILABLE = bool(torch.allclose(_onednn(x, w, b), torch.addmm(b, x, w.T), atol=1e-5))
        except (AttributeError, RuntimeError, NotImplementedError):
            _AVAILABLE = False
    return _AVAILABLE


def _use_onednn(flat: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    operands = (flat, weight) if bias is None else (flat, weight, bias)
    return (
        plain_cpu_float32(*operands)
        and all(t.is_contiguous() and not t.is_sparse for t in operands)
        and onednn_available()
    )


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weight.T + bias by oneDNN's linear primitive, which takes the weight as [d_out, d_in]."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """x @ weight.T + bias with oneDNN's forward and input-gradient matmuls."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _onednn(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, Tensor, Tensor | None], output: Tensor) -> None:  # type: ignore[no-untyped-def]
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[no-untyped-def]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = None
        if need_x and (torch.is_grad_enabled() or batched(grad)):
            # create_graph=True, or batched gradients: a differentiable op that takes batched tensors
            grad_x = grad @ weight
        elif need_x:
            grad_x = _onednn(grad.contiguous(), weight.T.contiguous(), None)  # grad @ weight
        grad_w = grad.T @ x if need_w else None
        return grad_x, grad_w, grad.sum(0) if need_b else None
