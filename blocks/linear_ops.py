"""`act(x @ W + b)` for the transformer's hot path, through the fastest kernel this torch build has.

On x86-64 CPUs in float32, oneDNN's linear primitive (the kernel torch.compile's CPU backend
emits) adds the bias and applies ReLU or GELU inside the matmul: on both models of
benchmarks/bench_transformer.py it raised forward tokens/s by about 10% over MKL's addmm
(2 layers 133k to 147k, 4 layers 22.4k to 24.5k). Everywhere else it is addmm: CUDA, other
dtypes, CPU autocast, torch.compile, forward-mode AD, torch.func transforms, sliced weights,
builds without oneDNN. Both compute the same function; tests/blocks/test_linear_ops.py holds
them together (forward, gradients, second gradients, tangents), and `fused_kernels(False)`
switches the oneDNN path off.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.autograd import forward_ad

Activation = Literal["relu", "gelu"]
# torch's fused kernels compute exactly scratchnn's ReLU and (erf) GELU (tests/scratchnn checks them)
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}

_ENABLED: ContextVar[bool] = ContextVar("blocks_fused_kernels", default=True)
_AVAILABLE: bool | None = None  # probed on first use


@contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """Within this block (this thread only), use our CPU kernels (oneDNN's fused linear, our causal
    attention) where they apply, or never: torch's addmm and scaled_dot_product_attention."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def onednn_available() -> bool:
    """True on x86-64 (where it was measured) when this torch build's oneDNN linear runs and agrees with addmm."""
    global _AVAILABLE
    if _AVAILABLE is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            _AVAILABLE = False
            return _AVAILABLE
        try:  # fixed values, not torch.randn: probing must not move the caller's random stream
            x = torch.linspace(-2, 2, 35).view(5, 7)
            w = torch.linspace(-1, 1, 21).view(7, 3)
            b = torch.tensor([0.1, -0.2, 0.3])
            got = _onednn(x, w, b, "gelu")
            _AVAILABLE = bool(torch.allclose(got, F.gelu(torch.addmm(b, x, w)), atol=1e-5))
        except (AttributeError, RuntimeError, NotImplementedError):
            _AVAILABLE = False
    return _AVAILABLE


def plain_cpu_float32(*tensors: Tensor) -> bool:
    """True where one of our CPU kernels may stand in for torch's: switched on, float32 CPU tensors, and
    nothing that the kernel, called directly, would bypass (autocast, torch.compile, forward-mode AD,
    vmap and grad transforms)."""
    return (
        _ENABLED.get()
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch._C._are_functorch_transforms_active()  # vmap, grad, jvp: wrapped tensors the op cannot take
        and not torch.is_autocast_enabled("cpu")  # the kernel would ignore autocast's lower precision
        and not torch.compiler.is_compiling()  # inductor cannot lower the op as we call it, and fuses on its own
        and forward_ad._current_level < 0  # the kernel would drop forward-mode tangents without a word
    )


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    return (
        plain_cpu_float32(x, weight)
        # a slice of a weight (W_in[:, :64]) sends oneDNN to its reference kernel: 1,000x slower
        and weight.is_contiguous()
        and not x.is_sparse
        and onednn_available()
    )


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None, act: Activation | None) -> Tensor:
    # oneDNN takes the weight as [d_out, d_in]; a transposed view costs nothing. For GELU,
    # algorithm "none" is the exact (erf) GELU and "tanh" the approximation.
    return torch.ops.mkldnn._linear_pointwise(x, weight.t(), bias, act or "none", [], "none" if act == "gelu" else "")


class _OneDNNAffine(torch.autograd.Function):
    """x @ weight + bias with oneDNN forward and input-gradient matmuls, for training."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return _onednn(x, weight, bias, None)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor) -> None:  # type: ignore[no-untyped-def]
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[no-untyped-def]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = None
        if need_x and torch.is_grad_enabled():  # create_graph=True: a differentiable op, so a second backward works
            grad_x = grad @ weight.t()
        elif need_x:
            grad_x = _onednn(grad, weight.t(), None, None)  # grad @ weight.T
        grad_w = _weight_grad(x, grad) if need_w else None
        return grad_x, grad_w, grad.sum(0) if need_b else None


def _weight_grad(x: Float[Tensor, "rows d_in"], grad: Float[Tensor, "rows d_out"]) -> Float[Tensor, "d_in d_out"]:
    """x.T @ grad. On 2 threads, from 2,048 rows up, for a weight no taller than wide: one batched
    matmul over the two halves of the rows (a half per thread), then a sum.

    `python benchmarks/profile_model.py --grad-w --layers 2 --d-model 128 --heads 4` timed the
    halves at 0.80x to 0.99x of MKL's own x.T @ grad for W_QKV, W_O, W_in and W_U at 8,192 rows
    (two runs), about 0.96x at 2,048 rows and 1.09x to 1.25x at 512, where this keeps one matmul;
    other thread counts were not measured. oneDNN was slower on these views and only faster
    after copying both transposed. Differentiable, so create_graph works.
    """
    rows, d_in = x.shape
    if torch.get_num_threads() != 2 or rows < 2048 or d_in > grad.shape[1]:  # where it was not faster, or not measured
        return x.t() @ grad
    return _halves_weight_grad(x, grad)


def _halves_weight_grad(x: Float[Tensor, "rows d_in"], grad: Float[Tensor, "rows d_out"]) -> Float[Tensor, "d_in d_out"]:
    """x.T @ grad as one batched matmul over the two halves of the rows, then a sum (an odd last row added apart)."""
    rows, d_in = x.shape
    half = rows // 2
    out = torch.bmm(x[: 2 * half].view(2, half, d_in).transpose(1, 2), grad[: 2 * half].view(2, half, -1)).sum(0)
    if rows % 2:
        out = out + x[-1:].t() @ grad[-1:]
    return out


def affine(
    x: Float[Tensor, "*batch d_in"],
    weight: Float[Tensor, "d_in d_out"],
    bias: Float[Tensor, "d_out"],
    act: Activation | None = None,
) -> Float[Tensor, "*batch d_out"]:
    """act(x @ weight + bias), the bias (and, without gradients, the activation) applied inside the matmul."""
    flat = x.reshape(-1, x.shape[-1])
    onednn = _use_onednn(x, weight)
    if onednn and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad)):
        out = _onednn(flat, weight, bias, act)
    else:  # the activation in its own pass: its backward needs its input kept
        out = _OneDNNAffine.apply(flat, weight, bias) if onednn else torch.addmm(bias, flat, weight)
        out = out if act is None else ACTIVATIONS[act](out)
    return out.view(*x.shape[:-1], weight.shape[-1])

