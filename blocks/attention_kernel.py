"""Attention's products through our own CPU kernels where they apply, through torch everywhere else.

- `causal_attention(q, k, v)`, the fused path of blocks.attention: softmax(q k^T / sqrt(d_head)
  + causal mask) v without materialising [batch, n_heads, query_pos, key_pos]; forward and backward.
- `causal_scores`, `pattern_times_values`, `head_results`: the explicit path's products, for when
  hooks read or patch the scores, the pattern or each head's result (backwards are torch ops).

The kernels (blocks/kernels/, built by blocks.kernel_library on first use) run on x86-64 Linux
CPUs with AVX-512, in float32, for d_head (and d_model, for head results) a multiple of 16; on first use
they are also checked against torch's SDPA, values and gradients. Why kernels of our own: at
this sandbox's sizes torch's CPU flash attention is mostly the overhead of many tiny matmul calls
and its batched matmuls with d_head 32 run far below peak (`python benchmarks/profile_model.py`
times both at the benchmark's shape). Everywhere else (CUDA, other dtypes, no compiler, autocast,
torch.compile, `linear_ops.fused_kernels(False)`) these are torch's own ops, the fused path
`torch.nn.functional.scaled_dot_product_attention`; under forward-mode AD or vmap and grad
transforms it is SDPA's math backend (its CPU flash kernel supports neither). `kernel_status()`
says whether the kernels are in use here, and if not, why.
"""

from __future__ import annotations

import ctypes
import math
import subprocess
import threading
import warnings

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.autograd import forward_ad
from torch.nn.attention import SDPBackend, sdpa_kernel

from blocks import kernel_library
from blocks.linear_ops import plain_cpu_float32

MAX_POS_WITH_GRAD = 2048  # backward keeps two [pos, pos] float tables per thread: 32 MB each at 2,048

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: str | None = "not built yet"


def kernel_status() -> str | None:
    """None when the kernels are built, loaded and agree with torch here; otherwise why torch's ops are used (builds on first call)."""
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
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # SDPA's layout: [batch, n_heads, pos, d_head]
    if forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
        # torch's CPU flash kernel has no forward-mode derivative and no vmap rule; its math backend has both
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def causal_scores(
    q: Float[Tensor, "batch pos n_heads d_head"],
    k: Float[Tensor, "batch pos n_heads d_head"],
    causal_bias: Float[Tensor, "n_ctx n_ctx"],
) -> Float[Tensor, "batch n_heads pos pos"]:
    """q . k / sqrt(d_head) at and below the diagonal, -inf above: the scores the explicit path shows, then softmaxes.

    `causal_bias` (0 at and below the diagonal, -inf above, at least pos x pos) is what torch's
    path adds inside its batched matmul; our kernel computes only the lower triangle."""
    if _kernel_applies(q, k, max_pos_with_grad=None):  # its backward is torch ops: no [pos, pos] scratch
        return _KernelScores.apply(q, k)
    batch, n_pos, n_heads, d_head = q.shape
    # "batch query_pos n_heads d_head, batch key_pos n_heads d_head -> batch n_heads query_pos key_pos"
    q_heads = q.transpose(1, 2).reshape(batch * n_heads, n_pos, d_head)
    k_heads = k.permute(0, 2, 3, 1).reshape(batch * n_heads, d_head, n_pos)
    scores = torch.baddbmm(causal_bias[:n_pos, :n_pos], q_heads, k_heads, alpha=1 / math.sqrt(d_head))
    return scores.view(batch, n_heads, n_pos, n_pos)


def pattern_times_values(
    pattern: Float[Tensor, "batch n_heads pos pos"], v: Float[Tensor, "batch pos n_heads d_head"]
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """z: each position's values mixed by its row of the (possibly patched) pattern.

    Our kernel skips the keys past the diagonal where the pattern is exactly 0 there, as
    softmax leaves it; where 0 meets an inf or NaN value it thus gives a number where torch's
    matmul gives NaN."""
    if pattern.is_contiguous() and _kernel_applies(v, max_pos_with_grad=None) and plain_cpu_float32(pattern):
        return _KernelPatternValues.apply(pattern, v)
    # "batch n_heads query_pos key_pos, batch key_pos n_heads d_head -> batch query_pos n_heads d_head"
    return torch.matmul(pattern, v.transpose(1, 2)).transpose(1, 2)


def head_results(
    z: Float[Tensor, "batch pos n_heads d_head"], W_O: Float[Tensor, "n_heads d_head d_model"]
) -> Float[Tensor, "batch pos n_heads d_model"]:
    """Each head's write to the residual stream, z[..., h, :] @ W_O[h], laid out as hook_result shows it."""
    if W_O.shape[-1] % kernel_library.VECTOR_FLOATS == 0 and W_O.is_contiguous() and plain_cpu_float32(z, W_O) and _load() is not None:
        return _KernelHeadResults.apply(z.contiguous(), W_O)
    return einops.einsum(z, W_O, "batch pos n_heads d_head, n_heads d_head d_model -> batch pos n_heads d_model")


def _kernel_applies(*tensors: Tensor, max_pos_with_grad: int | None = MAX_POS_WITH_GRAD) -> bool:
    n_pos, d_head = tensors[0].shape[1], tensors[0].shape[3]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return (
        d_head % kernel_library.VECTOR_FLOATS == 0
        and n_pos > 0
        and not (grad and max_pos_with_grad is not None and n_pos > max_pos_with_grad)
        and all(t.stride(-1) == 1 and not t.is_sparse for t in tensors)
        and plain_cpu_float32(*tensors)
        and _load() is not None
    )


class _KernelAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # type: ignore[override]
        out, lse = _forward(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the same gradients from differentiable ops
            return _differentiable_backward(q, k, v, grad_out)
        return _backward(q, k, v, out, lse, grad_out)


class _KernelScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor) -> Tensor:  # type: ignore[override]
        batch, n_pos, n_heads, d_head = q.shape
        scores = q.new_empty(batch, n_heads, n_pos, n_pos)
        scale = 1 / math.sqrt(d_head)
        _run("causal_scores", _ptr(q), _ptr(k), _ptr(scores), _strides(q), _strides(k), batch, n_heads, n_pos, d_head, scale)
        ctx.save_for_backward(q, k)
        return scores

    @staticmethod
    def backward(ctx, grad_scores: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        q, k = ctx.saved_tensors
        grad_scores = grad_scores.tril() / math.sqrt(q.shape[-1])  # above the diagonal the scores are a constant -inf
        grad_q = einops.einsum(
            grad_scores, k, "batch n_heads query_pos key_pos, batch key_pos n_heads d_head -> batch query_pos n_heads d_head"
        )
        grad_k = einops.einsum(
            grad_scores, q, "batch n_heads query_pos key_pos, batch query_pos n_heads d_head -> batch key_pos n_heads d_head"
        )
        return grad_q, grad_k


class _KernelPatternValues(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pattern: Tensor, v: Tensor) -> Tensor:  # type: ignore[override]
        batch, n_pos, n_heads, d_head = v.shape
        z = v.new_empty(batch, n_pos, n_heads, d_head)
        _run("pattern_times_values", _ptr(pattern), _ptr(v), _ptr(z), _strides(v), _strides(z), batch, n_heads, n_pos, d_head)
        ctx.save_for_backward(pattern, v)
        return z

    @staticmethod
    def backward(ctx, grad_z: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        pattern, v = ctx.saved_tensors
        grad_pattern = einops.einsum(
            grad_z, v, "batch query_pos n_heads d_head, batch key_pos n_heads d_head -> batch n_heads query_pos key_pos"
        )
        grad_v = einops.einsum(
            pattern, grad_z, "batch n_heads query_pos key_pos, batch query_pos n_heads d_head -> batch key_pos n_heads d_head"
        )
        return grad_pattern, grad_v


class _KernelHeadResults(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, W_O: Tensor) -> Tensor:  # type: ignore[override]
        batch, n_pos, n_heads, d_head = z.shape
        result = z.new_empty(batch, n_pos, n_heads, W_O.shape[-1])
        _run("head_results", _ptr(z), _ptr(W_O), _ptr(result), batch * n_pos, n_heads, d_head, W_O.shape[-1])
        ctx.save_for_backward(z, W_O)
        return result

    @staticmethod
    def backward(ctx, grad_result: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        z, W_O = ctx.saved_tensors
        grad_z = einops.einsum(
            grad_result, W_O, "batch pos n_heads d_model, n_heads d_head d_model -> batch pos n_heads d_head"
        )
        grad_W_O = einops.einsum(
            z, grad_result, "batch pos n_heads d_head, batch pos n_heads d_model -> n_heads d_head d_model"
        )
        return grad_z, grad_W_O


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


def _backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    batch, n_pos, n_heads, d_head = q.shape
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    grads = q.new_empty(3, batch, n_pos, n_heads, d_head)
    grad_q, grad_k, grad_v = grads.unbind(0)
    _run(
        "causal_attention_backward", _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(grad_out), _ptr(lse),
        _ptr(grad_q), _ptr(grad_k), _ptr(grad_v), _strides(q), _strides(k), _strides(v), _strides(out),
        _strides(grad_out), _strides(grad_q), batch, n_heads, n_pos, d_head, 1 / math.sqrt(d_head),
    )  # fmt: skip
    return grad_q, grad_k, grad_v


def _differentiable_backward(q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The kernel's backward as torch ops, so that gradients of gradients exist."""
    scale = 1 / math.sqrt(q.shape[-1])
    n_pos = q.shape[1]
    scores = einops.einsum(
        q, k, "batch query_pos n_heads d_head, batch key_pos n_heads d_head -> batch n_heads query_pos key_pos"
    ) * scale
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=q.device).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    grad_pattern = einops.einsum(
        grad_out, v, "batch query_pos n_heads d_head, batch key_pos n_heads d_head -> batch n_heads query_pos key_pos"
    )
    grad_scores = pattern * (grad_pattern - (grad_pattern * pattern).sum(-1, keepdim=True))
    grad_q = einops.einsum(
        grad_scores, k, "batch n_heads query_pos key_pos, batch key_pos n_heads d_head -> batch query_pos n_heads d_head"
    ) * scale
    grad_k = einops.einsum(
        grad_scores, q, "batch n_heads query_pos key_pos, batch query_pos n_heads d_head -> batch key_pos n_heads d_head"
    ) * scale
    grad_v = einops.einsum(
        pattern, grad_out, "batch n_heads query_pos key_pos, batch query_pos n_heads d_head -> batch key_pos n_heads d_head"
    )
    return grad_q, grad_k, grad_v


def _load() -> ctypes.CDLL | None:
    """The checked kernel, or None; the first call builds and checks it (other threads wait for that)."""
    global _lib, _status
    if _status == "not built yet":
        with _lock:
            if _status == "not built yet":
                status: str | None
                try:
                    _lib = kernel_library.load()
                    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
                        status = _disagreement()
                except kernel_library.UnsupportedPlatform as err:  # expected there: no warning
                    status = f"attention kernels not used, torch's ops instead: {err}"
                except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                    status = f"attention kernels unavailable, torch's ops instead (attention about 2x slower where measured): {err}"
                    warnings.warn(status, RuntimeWarning, stacklevel=2)
                if status is not None:
                    _lib = None
                _status = status  # settled last: until then, other threads wait on the lock
    return _lib if _status is None else None


def _disagreement() -> str | None:
    """None if the kernel's values and gradients match the explicit path on a fixed case; otherwise what differed."""
    shape = (3, 2, 21, 2, 32)  # q, k, v; 21 positions: blocks of 8 rows and 16 keys with remainders
    base = torch.sin(torch.arange(math.prod(shape), dtype=torch.float32) * 0.37).view(shape)  # fixed: no random stream moved
    q, k, v = (t.clone().requires_grad_() for t in base)
    out = _KernelAttention.apply(q, k, v)
    grads = torch.autograd.grad((out * base[0]).sum(), (q, k, v))
    q2, k2, v2 = (t.clone().requires_grad_() for t in base)
    ref = F.scaled_dot_product_attention(q2.transpose(1, 2), k2.transpose(1, 2), v2.transpose(1, 2), is_causal=True).transpose(1, 2)
    ref_grads = torch.autograd.grad((ref * base[0]).sum(), (q2, k2, v2))
    for what, got, want in [("output", out, ref), *zip(("grad q", "grad k", "grad v"), grads, ref_grads)]:
        if not torch.allclose(got, want, atol=1e-5, rtol=1e-4):
            status = f"attention kernels disagreed with SDPA ({what} off by {(got - want).abs().max():.2e}); torch's ops instead"
            warnings.warn(status, RuntimeWarning, stacklevel=3)
            return status
    return None
