"""Causal attention without the [batch, n_heads, query_pos, key_pos] tensors: our CPU kernel, or torch's SDPA.

`causal_attention(q, k, v)` computes what scratchnn.Attention's own lines compute from the scores
to the weighted sum, softmax(q k^T / sqrt(d_head) + causal mask) v, forward and backward; the
attention module calls it (through scratchnn.backend) when nobody listens to the scores or
the pattern.

Our kernel (kernels/causal_attention.cpp, built by blocks.fast.build on first use and checked
against SDPA, values and gradients, before it is used) runs on x86-64 Linux CPUs with AVX-512,
in float32, for d_head a multiple of 16. At this sandbox's sizes torch's CPU flash attention is
mostly the overhead of many small matmul calls; the kernel keeps one (batch, head) pair's keys
and scores in cache and computes only the lower triangle (benchmarks/RESULTS.md has the numbers).
Everywhere else (CUDA, other dtypes, no compiler, autocast, torch.compile) it is torch's
`scaled_dot_product_attention`; under forward-mode AD or torch.func transforms, SDPA's math
backend, since its CPU flash kernel supports neither. `kernel_status()` says whether the kernel
is in use here, and if not, why.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import subprocess
import threading
import warnings

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from blocks.fast import build
from blocks.fast.applies import batched, plain_cpu_float32, transforms_active

MAX_POS_WITH_GRAD = 2048  # the backward keeps two [pos, pos] float tables per thread: 16 MiB each at 2,048

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: str | None = "not built yet"


def kernel_status() -> str | None:
    """None when the kernel is built, loaded and agrees with torch here; otherwise why SDPA is used (builds on first call)."""
    _load()
    return _status


def causal_attention(
    q: Float[Tensor, "batch pos n_heads d_head"],
    k: Float[Tensor, "batch pos n_heads d_head"],
    v: Float[Tensor, "batch pos n_heads d_head"],
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """Each position's mix of the values at it and before it, weighted by softmax(q . k / sqrt(d_head))."""
    if _kernel_applies(q, k, v):
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            return _KernelAttention.apply(q, k, v)
        return _forward(q, k, v, with_lse=False)[0]  # nothing will ask for a backward
    return _sdpa(q, k, v)


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # SDPA's layout: [batch, n_heads, pos, d_head]
    # the CPU flash kernel has no forward-mode derivative and no vmap rule; the math backend has both
    with sdpa_kernel(SDPBackend.MATH) if transforms_active() else contextlib.nullcontext():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # a copy in [batch, pos, n_heads, d_head] (the next op needs that layout anyway), not a view of what SDPA keeps
    # for its backward: a hook on hook_z may edit it in place
    return out.transpose(1, 2).clone(memory_format=torch.contiguous_format)


def _kernel_applies(q: Tensor, k: Tensor, v: Tensor) -> bool:
    n_pos, d_head = q.shape[1], q.shape[3]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return (
        d_head % build.VECTOR_FLOATS == 0
        and 0 < n_pos
        and not (grad and n_pos > MAX_POS_WITH_GRAD)
        and all(t.stride(-1) == 1 and not t.is_sparse for t in (q, k, v))
        and plain_cpu_float32(q, k, v)
        and _load() is not None
    )


class _KernelAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # type: ignore[override]
        out, lse = _forward(q, k, v)
        # the backward reads the output as computed; a hook on hook_z may edit the returned one in place
        ctx.save_for_backward(q, k, v, out.clone(), lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        if torch.is_grad_enabled() or batched(grad_out):
            # create_graph=True, or batched gradients (a vmap over grad_out): differentiate SDPA's math path instead,
            # whose gradients have gradients and which takes batched tensors
            create_graph = torch.is_grad_enabled()
            needs = ctx.needs_input_grad
            inputs = (
                (q, k, v) if create_graph else tuple(t.detach().requires_grad_(n) for t, n in zip((q, k, v), needs))
            )
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                attended = _sdpa(*inputs)
            wanted = [t for t, need in zip(inputs, needs) if need]
            grads = iter(torch.autograd.grad(attended, wanted, grad_out, create_graph=create_graph))
            return tuple(next(grads) if need else None for need in needs)
        return _backward(q, k, v, out, lse, grad_out)


def _run(kernel: str, *args: object) -> None:
    """One call into the library, shown by torch.profiler as blocks::<kernel>."""
    assert _lib is not None
    with torch.profiler.record_function(f"blocks::{kernel}"):
        failed = getattr(_lib, kernel)(*args)
    if failed:
        raise MemoryError(f"{kernel}: no memory for the kernel's per-thread scratch")


def _strides(t: Tensor) -> ctypes.Array:
    return (ctypes.c_int64 * 3)(t.stride(0), t.stride(2), t.stride(1))  # batch, head, pos


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _forward(q: Tensor, k: Tensor, v: Tensor, with_lse: bool = True) -> tuple[Tensor, Tensor | None]:
    """out, and each row's log-sum-exp (what the backward needs) unless `with_lse` is False."""
    batch, n_pos, n_heads, d_head = q.shape
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"q has shape {tuple(q.shape)} but {name} has {tuple(t.shape)}; they must match")
    out = q.new_empty(batch, n_pos, n_heads, d_head)
    lse = q.new_empty(batch, n_heads, n_pos) if with_lse else None
    _run(
        "causal_attention_forward", _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse) if lse is not None else None,
        _strides(q), _strides(k), _strides(v), _strides(out), batch, n_heads, n_pos, d_head, 1 / math.sqrt(d_head),
    )  # fmt: skip
    return out, lse


def _backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    batch, n_pos, n_heads, d_head = q.shape
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    grad_q, grad_k, grad_v = q.new_empty(3, batch, n_pos, n_heads, d_head).unbind(0)
    _run(
        "causal_attention_backward", _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(grad_out), _ptr(lse),
        _ptr(grad_q), _ptr(grad_k), _ptr(grad_v), _strides(q), _strides(k), _strides(v), _strides(out),
        _strides(grad_out), _strides(grad_q), batch, n_heads, n_pos, d_head, 1 / math.sqrt(d_head),
    )  # fmt: skip
    return grad_q, grad_k, grad_v


def _load() -> ctypes.CDLL | None:
    """The checked kernel, or None; the first call builds and checks it (other threads wait for that)."""
    global _lib, _status
    if _status == "not built yet":
        with _lock:
            if _status == "not built yet":
                status: str | None
                try:
                    _lib = build.load()
                    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
                        status = _disagreement()
                except build.UnsupportedPlatform as err:  # expected there: no warning
                    status = f"attention kernel not used, torch's SDPA instead: {err}"
                except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                    status = f"attention kernel unavailable, torch's SDPA instead (slower where measured): {err}"
                    warnings.warn(status, RuntimeWarning, stacklevel=2)
                if status is not None:
                    _lib = None
                _status = status  # settled last: until then, other threads wait on the lock
    return _lib if _status is None else None


def _disagreement() -> str | None:
    """None if the kernel's values and gradients match SDPA's on a fixed case; otherwise what differed."""
    shape = (3, 2, 21, 2, 32)  # q, k, v; 21 positions: blocks of 8 rows and 16 keys with remainders
    # fixed values: checking must not move the caller's random stream
    base = torch.sin(torch.arange(math.prod(shape), dtype=torch.float32) * 0.37).view(shape)
    q, k, v = (t.clone().requires_grad_() for t in base)
    out = _KernelAttention.apply(q, k, v)
    grads = torch.autograd.grad((out * base[0]).sum(), (q, k, v))
    q2, k2, v2 = (t.clone().requires_grad_() for t in base)
    ref = _sdpa(q2, k2, v2)
    ref_grads = torch.autograd.grad((ref * base[0]).sum(), (q2, k2, v2))
    for what, got, want in [("output", out, ref), *zip(("grad q", "grad k", "grad v"), grads, ref_grads)]:
        if not torch.allclose(got, want, atol=1e-5, rtol=1e-4):
            status = f"attention kernel disagreed with SDPA ({what} off by {(got - want).abs().max():.2e}); torch's SDPA instead"
            warnings.warn(status, RuntimeWarning, stacklevel=3)
            return status
    return None
