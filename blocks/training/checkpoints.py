"""One training checkpoint as three files, none of them pickled: weights, optimizer tensors, trainer state.

`checkpoints/step_000123.safetensors` holds the model's weights (what `load_run` reads);
`step_000123.optim.safetensors` the optimizer's tensors and RNG states;
`step_000123.state.json` the step, the optimizer's non-tensor state and param groups.
The weights are written last, so a checkpoint is listed only once all three are on disk.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from blocks.files import confined
from blocks.weights import TEMP_SUFFIX, atomic_write_bytes, load_tensors, read_json, save_tensors

CHECKPOINTS = "checkpoints"
_WEIGHTS = re.compile(r"^step_(\d+)\.safetensors$")
_UNFINISHED = re.compile(r"^step_\d+\.(optim\.safetensors|state\.json)$")  # written before the weights


def checkpoint_files(run_dir: Path, step: int) -> tuple[Path, Path, Path]:
    """(weights, optimizer tensors, trainer state) paths of `step` in `run_dir`."""
    base = Path(run_dir) / CHECKPOINTS / f"step_{step:06d}"
    return Path(f"{base}.safetensors"), Path(f"{base}.optim.safetensors"), Path(f"{base}.state.json")


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps that have a weights file, ascending."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _WEIGHTS.match(p.name)))


def is_unfinished_save(name: str) -> bool:
    """Whether a file named `name` in checkpoints/ can be left by a save killed before its weights were written."""
    return bool(_UNFINISHED.match(name)) or (name.startswith(".") and name.endswith(TEMP_SUFFIX))


def save_checkpoint(
    run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any]
) -> Path:
    """Write the three files of `step` atomically (weights last); return the weights path.

    A checkpoints folder that a symlink leads outside `run_dir` is refused (OutsideFolderError), as on reading.
    """
    weights, optim_path, state_path = checkpoint_files(run_dir, step)
    confined(weights.parent, run_dir).mkdir(parents=True, exist_ok=True)
    tensors, meta = flatten_optimizer(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_tensors(tensors, optim_path)
    atomic_write_bytes(state_path, json.dumps({"step": step, "optimizer": meta, **extra}, indent=1).encode())
    save_tensors(model.state_dict(), weights)
    return weights


def load_training_state(run_dir: Path, step: int) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """(weights, optimizer state_dict, trainer state) of `step`; errors name the unreadable file.

    A file that a symlink leads outside `run_dir` is refused (OutsideFolderError, a ValueError).
    """
    weights, optim_path, state_path = (confined(p, run_dir) for p in checkpoint_files(run_dir, step))
    model_state = load_tensors(weights)
    tensors = load_tensors(optim_path)
    state = read_json(state_path, f"trainer state for checkpoint {step}")
    rng = {k: tensors.pop(k) for k in list(tensors) if k.startswith("rng.")}
    state["rng"] = rng
    return model_state, unflatten_optimizer(tensors, state["optimizer"]), state


def restore_rng(rng: dict[str, Tensor]) -> None:
    torch.set_rng_state(rng["rng.torch"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into named tensors and JSON-ready everything else."""
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, per_param in state_dict["state"].items():
        plain[str(idx)] = {}
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                plain[str(idx)][key] = value
    return tensors, {"state": plain, "param_groups": state_dict["param_groups"]}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild what `optimizer.load_state_dict` takes from `flatten_optimizer`'s two halves."""
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}
