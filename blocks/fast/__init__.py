"""The speed backend: faster functions for scratchnn's operations, registered when `blocks` is imported.

The model's modules (scratchnn) hold the reference code; this package only registers functions
that compute the same things faster, through `scratchnn.backend`, and nothing else knows how
it is fast. What it registers, and where each applies:

- "causal_attention": our C++ kernel on x86-64 Linux CPUs with AVX-512 (float32, d_head a
  multiple of 16), else torch's scaled_dot_product_attention (blocks.fast.attention);
- "linear": oneDNN's linear primitive on x86-64 CPUs in float32, else torch.addmm (blocks.fast.linear);
- "layer_norm", "gelu", "relu": torch's fused kernels, one pass each (ReLU as F.threshold, whose
  backward reads the input, not the output a hook may have edited in place).

Switch it all off for a process with the environment variable SANDBOX_FAST=0, or for a block
of code with `scratchnn.backend.reference_only()`; then only the modules' own code runs.
`keep_freed_memory()` is the one process setting (for entry points: scripts, the app), and
`status()` says what runs here. tests/blocks/test_fast.py holds every function to the
reference, values and gradients; benchmarks/RESULTS.md has what each is worth.
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from blocks.fast import linear  # the module: its function `linear` would shadow it here
from blocks.fast.attention import causal_attention, kernel_status
from blocks.fast.memory import keep_freed_memory
from scratchnn import backend


def layer_norm(
    x: Float[Tensor, "*batch d"], weight: Float[Tensor, " d"] | None, bias: Float[Tensor, " d"] | None, eps: float
) -> Float[Tensor, "*batch d"]:
    """scratchnn.LayerNorm's output (biased variance, then weight and bias, if any: LNPre has none) in one pass."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def relu(x: Tensor) -> Tensor:
    """max(x, 0) in one pass; unlike torch.relu, its backward reads x, so a hook may edit the output in place."""
    return F.threshold(x, 0.0, 0.0)


FUNCTIONS = {
    "linear": linear.linear,
    "relu": relu,
    "gelu": F.gelu,
    "layer_norm": layer_norm,
    "causal_attention": causal_attention,
}


def register() -> None:
    """Register every function above with scratchnn.backend (done once, when blocks is imported)."""
    for name, fn in FUNCTIONS.items():
        backend.register(name, fn)


def status() -> dict[str, str]:
    """What each operation runs here, in words: the fast function and where it applies, or why not."""
    if not backend.is_on():
        return dict.fromkeys(FUNCTIONS, "the module's own code (the backend is switched off)")
    kernel = kernel_status()
    return {
        "causal_attention": "our C++ kernel for float32 CPU tensors with d_head a multiple of 16, SDPA elsewhere"
        if kernel is None
        else f"torch's SDPA ({kernel})",
        "linear": f"oneDNN's linear for contiguous float32 CPU tensors (with gradients, from {linear.MIN_MACS_WITH_GRAD:,}"
        " multiply-adds up), torch.addmm elsewhere"
        if linear.onednn_available()
        else "torch.addmm",
        "layer_norm": "torch.nn.functional.layer_norm",
        "gelu": "torch.nn.functional.gelu",
        "relu": "torch.nn.functional.threshold at 0",
    }


register()

__all__ = ["FUNCTIONS", "causal_attention", "keep_freed_memory", "kernel_status", "layer_norm", "register", "status"]
