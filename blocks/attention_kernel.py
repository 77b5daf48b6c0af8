"""Causal attention without the pattern: our own CPU kernel where it applies, torch's SDPA elsewhere.

`causal_attention(q, k, v)` is the fused path of blocks.attention: softmax(q k^T / sqrt(d_head)
+ causal mask) v, never materialising [batch, n_heads, query_pos, key_pos]. On x86-64 Linux, in
float32 on the CPU with d_head a multiple of 16, it runs kernels/causal_attention.cpp (forward
and backward), which this module compiles with the machine's C++ compiler on first use (about
half a second) into a per-user cache and checks against torch before trusting it. Why a kernel
of our own: at this sandbox's sizes torch's CPU flash attention is mostly call overhead
(`python benchmarks/profile_model.py` times both at the benchmark's shape). Everywhere else (CUDA,
other dtypes, no compiler, autocast, torch.compile, `linear_ops.fused_kernels(False)`) it is
`torch.nn.functional.scaled_dot_product_attention`, and under forward-mode AD or vmap and grad
transforms SDPA's math backend (its CPU flash kernel supports neither). `kernel_status()` says
whether the kernel is in use here, and if not, why.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.autograd import forward_ad
from torch.nn.attention import SDPBackend, sdpa_kernel

from blocks.linear_ops import plain_cpu_float32

SOURCE = Path(__file__).with_name("kernels") / "causal_attention.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
MAX_POS_WITH_GRAD = 2048  # backward keeps two [pos, pos] float tables per thread: 32 MB each at 2,048

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
        return _KernelAttention.apply(q, k, v)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # SDPA's layout: [batch, n_heads, pos, d_head]
    if forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
        # torch's CPU flash kernel has no forward-mode derivative and no vmap rule; its math backend has both
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def _kernel_applies(q: Tensor, k: Tensor, v: Tensor) -> bool:
    n_pos, d_head = q.shape[1], q.shape[3]
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return (
        d_head % 16 == 0
        and n_pos > 0
        and not (grad and n_pos > MAX_POS_WITH_GRAD)
        and all(t.stride(-1) == 1 and not t.is_sparse for t in (q, k, v))
        and plain_cpu_float32(q, k, v)
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


def _strides(t: Tensor) -> ctypes.Array:
    return (ctypes.c_int64 * 3)(t.stride(0), t.stride(2), t.stride(1))  # batch, head, pos


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _forward(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    batch, n_pos, n_heads, d_head = q.shape
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"q has shape {tuple(q.shape)} but {name} has {tuple(t.shape)}; they must match")
    out = q.new_empty(batch, n_pos, n_heads, d_head)
    lse = q.new_empty(batch, n_heads, n_pos)
    assert _lib is not None
    failed = _lib.causal_attention_forward(
        _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse), _strides(q), _strides(k), _strides(v), _strides(out),
        batch, n_heads, n_pos, d_head, 1 / math.sqrt(d_head),
    )  # fmt: skip
    if failed:
        raise MemoryError("causal attention kernel: no memory for its per-thread scratch")
    return out, lse


def _backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    batch, n_pos, n_heads, d_head = q.shape
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    grads = q.new_empty(3, batch, n_pos, n_heads, d_head)
    grad_q, grad_k, grad_v = grads.unbind(0)
    assert _lib is not None
    failed = _lib.causal_attention_backward(
        _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(grad_out), _ptr(lse), _ptr(grad_q), _ptr(grad_k), _ptr(grad_v),
        _strides(q), _strides(k), _strides(v), _strides(out), _strides(grad_out), _strides(grad_q),
        batch, n_heads, n_pos, d_head, 1 / math.sqrt(d_head),
    )  # fmt: skip
    if failed:
        raise MemoryError("causal attention kernel: no memory for its per-thread scratch")
    return grad_q, grad_k, grad_v


def _differentiable_backward(q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The kernel's backward as torch ops, so that gradients of gradients exist."""
    scale = 1 / math.sqrt(q.shape[-1])
    n_pos = q.shape[1]
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * scale
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=q.device).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    grad_pattern = torch.einsum("bqhe,bkhe->bhqk", grad_out, v)
    grad_scores = pattern * (grad_pattern - (grad_pattern * pattern).sum(-1, keepdim=True))
    grad_q = torch.einsum("bhqk,bkhe->bqhe", grad_scores, k) * scale
    grad_k = torch.einsum("bhqk,bqhe->bkhe", grad_scores, q) * scale
    grad_v = torch.einsum("bhqk,bqhe->bkhe", pattern, grad_out)
    return grad_q, grad_k, grad_v


def _load() -> ctypes.CDLL | None:
    """The checked kernel, or None; the first call builds and checks it (other threads wait for that)."""
    global _lib, _status
    if _status == "not built yet":
        with _lock:
            if _status == "not built yet":
                status: str | None
                try:
                    _lib = _declare(ctypes.CDLL(str(_build())))
                    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
                        status = _disagreement()
                except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                    status = f"causal attention kernel unavailable, using SDPA: {err}"
                if status is not None:
                    _lib = None
                _status = status  # settled last: until then, other threads wait on the lock
    return _lib if _status is None else None


def _build() -> Path:
    """The compiled kernel for this source, compiler and CPU, from the cache or built now."""
    if not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")):
        raise RuntimeError(f"built and measured on x86-64 Linux only, not {sys.platform} {platform.machine()}")
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX to one)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("BLOCKS_KERNEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blocks-kernels")
    target = cache / f"causal_attention-{key}.so"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # built aside, then renamed: a reader never sees half a file
        built = Path(tmp) / target.name
        run = subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            raise RuntimeError(f"{compiler} failed to build {SOURCE.name}: {run.stderr.strip()[-2000:]}")
        os.replace(built, target)
    return target


def _cpu() -> str:
    """What -march=native depends on: a cache built on one CPU is never loaded on another."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    wanted = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted)))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, strides, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64 * 3, ctypes.c_float
    lib.causal_attention_forward.argtypes = [p] * 5 + [strides] * 4 + [i64] * 4 + [f32]
    lib.causal_attention_forward.restype = ctypes.c_int
    lib.causal_attention_backward.argtypes = [p] * 9 + [strides] * 6 + [i64] * 4 + [f32]
    lib.causal_attention_backward.restype = ctypes.c_int
    return lib


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
            return f"causal attention kernel disagreed with SDPA ({what} off by {(got - want).abs().max():.2e}); using SDPA"
    return None
