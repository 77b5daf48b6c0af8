"""Keep freed activation memory in the process: a setting for entry points (scripts, the app), never for libraries.

A forward pass at batch 64 x 128 positions allocates tensors of 4 to 64 MB (patterns, per-head
results, MLP activations). glibc hands blocks that large back to the kernel on free() and maps
fresh pages for the next pass, so every pass pays a page fault per 4 KB touched. Its mmap
threshold cannot rise above 32 MB, exactly the size of a 4-layer d_model 256 model's MLP
activations at that batch, so the threshold alone does not help there: malloc is told never to
mmap (its heap still falls back to mmap when it cannot grow) and never to trim.
`python benchmarks/bench_backend.py --malloc` measures the difference.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from scratchnn import backend

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed large blocks instead of unmapping them. True if it applied.

    It stops malloc serving blocks from fresh mmaps (M_MMAP_MAX 0, so no threshold applies)
    and from trimming the heap. Memory the process has used stays reserved for it until it
    exits, which is the trade: a notebook that once held a 2 GB cache keeps that much mapped.
    A no-op (False) off Linux/glibc, and with the fast backend switched off (SANDBOX_FAST=0).
    """
    if not backend.is_on() or not sys.platform.startswith("linux"):
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
