"""Our C++ kernels (blocks/fast/kernels/): compiled with this machine's compiler on first use, cached, loaded with ctypes.

`load()` returns the library with every function's C signature declared. The build (g++ -O3
-march=native -fopenmp, about half a second) lands in $BLOCKS_KERNEL_CACHE, else
$XDG_CACHE_HOME/blocks-kernels or ~/.cache/blocks-kernels (or, where that cannot be written,
$TMPDIR/blocks-kernels-<uid>), under a name keyed by the sources, flags, compiler version and
CPU, so an edit, another compiler or another CPU builds anew. The library links to the libgomp
torch has already loaded, so the kernels run on torch's threads (torch.set_num_threads applies).
Raises UnsupportedPlatform where `unsupported()` gives a reason, and RuntimeError (with the
compiler's message), OSError or subprocess.SubprocessError when it cannot build or load;
blocks.fast.attention then uses torch's SDPA.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FOLDER = Path(__file__).with_name("kernels")
SOURCES = sorted(FOLDER.glob("*.cpp"))
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]


VECTOR_FLOATS = 16  # the kernels' vector width: d_head must be a multiple


class UnsupportedPlatform(RuntimeError):
    """The kernels are built and measured on x86-64 Linux CPUs with AVX-512 only."""


def unsupported() -> str | None:
    """Why the kernels are not built on this machine (not x86-64 Linux, or no AVX-512), or None."""
    if not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")):
        return f"built and measured on x86-64 Linux only, not {sys.platform} {platform.machine()}"
    if "avx512f" not in _cpu().split():
        # GCC lowers the kernels' 16-float vectors to pairs of AVX2 registers and spills: built with
        # -march=haswell on this project's machine, they ran far slower than torch's SDPA
        return "built and measured for CPUs with AVX-512 only; this CPU has no avx512f"
    return None


def load() -> ctypes.CDLL:
    """The kernels, built if this source, compiler and CPU have no build in the cache yet."""
    return _declare(ctypes.CDLL(str(build())))


def build() -> Path:
    """The compiled kernels for these sources, compiler and CPU, from the cache or built now."""
    reason = unsupported()
    if reason is not None:
        raise UnsupportedPlatform(reason)
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX to one)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    texts = [f.read_text() for f in sorted(FOLDER.glob("*.h")) + SOURCES]
    key = hashlib.sha256("\0".join([*texts, " ".join(FLAGS), version, _cpu()]).encode()).hexdigest()[:16]
    name = f"blocks-kernels-{key}.so"
    folders = _cache_folders()
    for folder in folders:
        if (folder / name).is_file() and _ours(folder):
            return folder / name
    cache = _writable(folders)
    target = cache / name
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # built aside, then renamed: a reader never sees half a file
        built = Path(tmp) / target.name
        command = [compiler, *FLAGS, "-o", str(built), *map(str, SOURCES)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            raise RuntimeError(f"{compiler} failed to build {FOLDER}: {run.stderr.strip()[-2000:]}")
        os.replace(built, target)
    return target


def _cache_folders() -> list[Path]:
    """$BLOCKS_KERNEL_CACHE alone if set; else the user's cache folder, then one in the temp folder (a read-only home)."""
    if os.environ.get("BLOCKS_KERNEL_CACHE"):
        return [Path(os.environ["BLOCKS_KERNEL_CACHE"])]
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [home_cache / "blocks-kernels", Path(tempfile.gettempdir()) / f"blocks-kernels-{os.getuid()}"]


def _writable(folders: list[Path]) -> Path:
    """The first folder that exists or can be made, is ours and can be written; OSError naming them all if none."""
    for folder in folders:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if _ours(folder) and os.access(folder, os.W_OK):
            return folder
    raise OSError(
        f"no writable folder of this user's for the compiled kernels among {', '.join(map(str, folders))} "
        "(set BLOCKS_KERNEL_CACHE)"
    )


def _ours(folder: Path) -> bool:
    """Owned by this user and writable by nobody else: a library found there is loaded, and so run."""
    info = folder.stat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


@functools.cache
def _cpu() -> str:
    """What -march=native depends on: a build made on one CPU is never loaded on another."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    wanted = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted)))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Argument and return types of every kernel, as the .cpp files declare them (pointers, {batch, head, pos} strides)."""
    p, i64, strides, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64 * 3, ctypes.c_float
    signatures = {
        "causal_attention_forward": [p] * 5 + [strides] * 4 + [i64] * 4 + [f32],
        "causal_attention_backward": [p] * 9 + [strides] * 6 + [i64] * 4 + [f32],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return lib
