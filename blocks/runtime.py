"""Process-wide settings that make CPU work on activations fast. Entry points call them; libraries do not.

A forward pass at batch 64 x 128 positions allocates tensors of 4 to 64 MB (patterns, per-head
results, MLP activations). glibc hands blocks that large back to the kernel on free() and maps
fresh pages for the next pass, so every pass pays a page fault per 4 KB touched: on a 2-core
CPU that was 0.6 to 1.2 million faults for 40 cached forwards, and a full `run_with_cache` took
1.35x the plain forward instead of 1.15x. Keeping freed memory in the process removes that.

glibc's mmap threshold cannot rise above 32 MB, and a 4-layer d_model 256 model's MLP
activations at batch 64 x 128 are exactly 32 MB, so with the threshold alone they were still
mapped afresh on every call: 11,265 page faults and 22.3k tokens/s a plain forward, against 0
and 25.1k once malloc is told never to mmap (`python benchmarks/profile_model.py --malloc
threshold` and `--malloc keep`). Its heap still falls back to mmap when it cannot grow.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed large blocks instead of unmapping them. True if it applied.

    It stops malloc serving blocks from fresh mmaps (M_MMAP_MAX 0, so no threshold applies)
    and from trimming the heap. Memory the process has used stays reserved for it until it
    exits, which is the trade: a notebook that once held a 2 GB cache keeps that much mapped.
    A no-op (False) off Linux/glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
