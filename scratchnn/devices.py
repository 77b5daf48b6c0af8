"""Which torch devices this machine has, and turning a user's device name into one of them."""

import os

import torch


def available_devices() -> list[str]:
    """The device names this machine can run on: cpu, then cuda and each cuda:i, then mps, where present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def pick_device(name: str | None = None) -> torch.device:
    """`name` as a device of this machine; None or "auto" picks cuda, else mps, else cpu.

    Under torchrun, "auto" takes this process's GPU (LOCAL_RANK). Anything unavailable or
    misspelt raises a ValueError that lists what is available.
    """
    available = available_devices()
    if name is None or name == "auto":
        if "cuda" in available:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("mps" if "mps" in available else "cpu")
    if name not in available:
        raise ValueError(f"device {name!r} is not available here; choose one of auto, {', '.join(available)}")
    return torch.device(name)
