"""Tensors on disk: safetensors files written atomically, JSON read with errors that name the file, state-dict checks.

Nothing here unpickles anything: weights are safetensors, everything else is JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

# the metadata key of a safetensors file's checksum, namespaced so that another tool's "sha256" (over
# other bytes) is never taken for ours
CHECKSUM = "scratchnn.sha256"
TEMP_SUFFIX = ".tmp"  # atomic writes go through ".<name>.<random>.tmp" beside the target
MAX_JSON_BYTES = 256 * 2**20  # far above any config or trainer state; a bigger one is not one of ours


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors atomically (contiguous CPU copies; shared storage is split).

    The file's metadata holds a SHA-256 of every tensor's name, dtype, shape and bytes, which
    load_tensors checks: a flipped bit in the data is an error, not a silently different model.
    """
    path = Path(path)
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        try:
            save_file(plain, tmp, metadata={**(metadata or {}), CHECKSUM: tensors_digest(plain)})
        except SafetensorError as err:  # a full disk, a size limit: the OSError it wraps, naming the file
            code = re.search(r"os error (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from err
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Load a safetensors file, naming the file when it is missing, corrupt or fails its checksum.

    Files without our checksum in their metadata (written before checksums were stored, or by another
    tool) load unchecked.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            expected = (f.metadata() or {}).get(CHECKSUM)
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupt") from err
    if expected is not None and tensors_digest(tensors) != expected:
        raise ValueError(
            f"{path} fails its checksum: its tensor data changed after it was written (a flipped bit, a partial "
            "copy); it is corrupt"
        )
    return {k: v.to(device) for k, v in tensors.items()} if str(device) != "cpu" else tensors


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files that a killed atomic write left in `folder`; return them.

    Only for a folder no other process is writing (the trainer holds the run's lock).
    """
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing or unparsable file raises an error that names it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"the {what} {path} is a folder, where a JSON file was expected")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}") from None
    if size > MAX_JSON_BYTES:
        raise ValueError(f"the {what} {path} is {size / 2**20:.0f} MB; a JSON file of options or state is far smaller")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"the {what} {path} is not text (byte {err.start}: {err.object[err.start : err.start + 1]!r}); give a JSON file"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it may be truncated or corrupt") from err
    except RecursionError:
        raise ValueError(
            f"the {what} {path} is nested too deeply to read; a config is a flat or two-level object"
        ) from None


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str = "state dict") -> None:
    """Raise one error listing missing, unexpected and misshapen keys against `model`'s own state dict."""
    check_tensors(model.state_dict(), state, source)


def check_tensors(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], source: str) -> None:
    """Raise one error listing the names `given` lacks, the names it has too many, and the shapes that differ."""
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    misshapen = [
        f"{k}: {tuple(given[k].shape)} in the {source}, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"unexpected keys {extra}")
    if misshapen:
        problems.append("wrong shapes: " + "; ".join(misshapen))
    if problems:
        raise ValueError(f"the {source} does not match the model's config: " + "; ".join(problems))
