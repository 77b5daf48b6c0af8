"""Where one of our CPU kernels may stand in for torch's op: the test every fast path shares."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import forward_ad


def transforms_active() -> bool:
    """True under forward-mode AD or a torch.func transform (vmap, grad, jvp): tensors a raw kernel cannot take."""
    return forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


def batched(t: Tensor) -> bool:
    """True for a tensor vmap wraps (torch.func's, or the older one behind autograd's is_grads_batched), which has
    no storage a kernel could read."""
    return torch._C._functorch.is_batchedtensor(t) or torch._C._functorch.is_legacy_batchedtensor(t)


def plain_cpu_float32(*tensors: Tensor) -> bool:
    """True for float32 CPU tensors outside anything a kernel called directly would bypass: autocast's lower
    precision, torch.compile (inductor cannot lower the call and fuses on its own), forward-mode AD and torch.func
    transforms."""
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not transforms_active()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )
