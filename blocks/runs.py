"""Run directories: read back what `python -m blocks.train` wrote (config, checkpoints, metrics).

Layout of `runs/NAME/`:
`config.json` = {"model": TransformerConfig dict, "task": {"name", "options"}, "train": {...},
"tokenizer": Tokenizer dict}; `checkpoints/step_000123.safetensors` (weights; optimizer state
beside it, see blocks.checkpoints); `metrics.jsonl` (one JSON object per line, each with "step").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from blocks.checkpoints import checkpoint_files, checkpoint_steps
from blocks.config import TransformerConfig
from blocks.saving import check_state_dict, load_tensors, read_json
from blocks.tasks import get_task
from blocks.tasks.base import Task, Tokenizer
from blocks.transformer import Transformer

CONFIG = "config.json"
METRICS = "metrics.jsonl"


@dataclass
class Run:
    """One run at one checkpoint: the model (eval mode), its task and tokenizer, and every logged number."""

    path: Path
    model: Transformer
    task: Task
    tokenizer: Tokenizer
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    # step=None only: why each newer checkpoint was passed over (corrupt, mismatched), newest first
    skipped: list[str] = field(default_factory=list)


def read_config(path: str | Path) -> dict[str, Any]:
    """The run's config.json, with an error naming the folder when it is not a run."""
    path = Path(path)
    file = path / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a run directory: it has no {CONFIG} (train one with python -m blocks.train)")
    config = read_json(file, "run config")
    missing = {"model", "task", "train", "tokenizer"} - set(config)
    if missing:
        raise ValueError(f"{file} lacks the section(s) {sorted(missing)}; a run config has model, task, train, tokenizer")
    return config


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every line of metrics.jsonl; a half-written last line (a killed run) is skipped."""
    file = Path(path) / METRICS
    if not file.is_file():
        return []
    lines = file.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{file} line {i + 1} is not JSON ({err})") from err
    return out


def list_checkpoints(path: str | Path) -> list[int]:
    """Steps that have a checkpoint in the run at `path`, ascending (readable or not: see checkpoint_status)."""
    return checkpoint_steps(Path(path))


def checkpoint_status(path: str | Path) -> list[tuple[int, str | None]]:
    """(step, None) for each readable checkpoint, (step, why not) for each corrupt or mismatched one."""
    path = Path(path)
    model = Transformer(TransformerConfig.from_dict(read_config(path)["model"]))
    out: list[tuple[int, str | None]] = []
    for step in list_checkpoints(path):
        try:
            _read_weights(path, step, model)
            out.append((step, None))
        except (ValueError, FileNotFoundError) as err:
            out.append((step, str(err)))
    return out


def _read_weights(path: Path, step: int, model: Transformer) -> dict[str, torch.Tensor]:
    weights = checkpoint_files(path, step)[0]
    state = load_tensors(weights)
    check_state_dict(model, state, source=str(weights))
    return state


def build_task(config: dict[str, Any]) -> tuple[Task, Tokenizer]:
    """The run's task, using the tokenizer saved with the run (text tasks need not re-read their data)."""
    tokenizer = Tokenizer.from_dict(config["tokenizer"])
    task = get_task(config["task"]["name"], **config["task"].get("options", {}))
    task.use_tokenizer(tokenizer)
    return task, tokenizer


def load_run(path: str | Path, step: int | None = None, device: torch.device | str | None = None) -> Run:
    """Load the run at `path` at checkpoint `step` (None: the latest readable one) onto `device` (default cpu)."""
    path = Path(path)
    config = read_config(path)
    task, tokenizer = build_task(config)
    model = Transformer(TransformerConfig.from_dict(config["model"]))
    steps = list_checkpoints(path)
    if not steps:
        raise FileNotFoundError(f"the run at {path} has no checkpoints yet (looked in {path / 'checkpoints'})")
    errors: list[str] = []
    if step is not None:
        if step not in steps:
            raise ValueError(f"the run at {path} has no checkpoint at step {step}; it has {steps}")
        state = _read_weights(path, step, model)
    else:
        for candidate in reversed(steps):
            try:
                state = _read_weights(path, candidate, model)
                step = candidate
                break
            except (ValueError, FileNotFoundError) as err:
                errors.append(f"checkpoint {candidate}: {err}")
        else:
            raise ValueError(f"no readable checkpoint in {path}: " + "; ".join(errors))
    model.load_state_dict(state)
    model.to(device or "cpu").eval()
    return Run(path=path, model=model, task=task, tokenizer=tokenizer, metrics=read_metrics(path), config=config, step=step,
               skipped=errors)
