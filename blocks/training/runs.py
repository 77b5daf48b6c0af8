"""Run directories: set one up for `python -m blocks.train`, and read back what it wrote.

Layout of `runs/NAME/`:
`config.json` = {"model": TransformerConfig dict, "task": {"name", "options"}, "train": {...},
"tokenizer": Tokenizer dict}; `checkpoints/step_000123.safetensors` (weights; optimizer state
beside it, see blocks.training.checkpoints); `metrics.jsonl` (one JSON object per line, each with "step").
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from blocks.config import TransformerConfig
from blocks.files import confined
from blocks.interop import checked_state_dict
from blocks.tasks import get_task
from blocks.tasks.base import Task, Tokenizer
from blocks.training.checkpoints import CHECKPOINTS, checkpoint_files, checkpoint_steps, is_unfinished_save
from blocks.training.config import TrainConfig
from blocks.transformer import Transformer
from blocks.weights import atomic_write_bytes, load_tensors, read_json
from probes.dynamics import Dynamics, cache_key, over_checkpoints

CONFIG = "config.json"
METRICS = "metrics.jsonl"
ANALYSIS = "analysis"  # cached analyses over checkpoints (probes.dynamics), one folder per analysis

# Trainer settings that change neither the weights so far nor what a step does: a resumed run may
# change them. `steps` moves the end of the run (and so the lr schedule from here on): a finished run
# can be extended by resuming with a larger --steps.
RESUME_MAY_CHANGE = ("device", "steps", "eval_every", "log_every", "n_checkpoints")


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
    # metrics.jsonl lines that could not be read and were left out of `metrics`
    metrics_skipped: list[str] = field(default_factory=list)


def read_config(path: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """The run's config.json, with an error naming the folder when it is not a run.

    The file must lie inside `root` (default: the run folder itself) once links are followed.
    """
    path = Path(path)
    file = path / CONFIG
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} is not a run directory: it has no {CONFIG} (train one with python -m blocks.train)"
        )
    config = read_json(confined(file, path if root is None else root), "run config")
    missing = {"model", "task", "train", "tokenizer"} - set(config)
    if missing:
        raise ValueError(
            f"{file} lacks the section(s) {sorted(missing)}; a run config has model, task, train, tokenizer"
        )
    # the model section in today's form, so that comparing it (on resume) compares models, not spellings:
    # attention-only runs written before d_mlp became None for them stored the derived 4 * d_model
    config["model"] = TransformerConfig.from_dict(config["model"]).to_dict()
    return config


def run_config(task: Task, model_cfg: TransformerConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """The config.json of a run, checking that its parts agree with each other."""
    if model_cfg.d_vocab != task.tokenizer.d_vocab:
        raise ValueError(
            f"d_vocab={model_cfg.d_vocab} but task {task.name!r} has {task.tokenizer.d_vocab} tokens; leave d_vocab unset"
        )
    if model_cfg.n_ctx < task.seq_len:
        raise ValueError(
            f"n_ctx={model_cfg.n_ctx} is shorter than task {task.name!r}'s sequences ({task.seq_len}); use n_ctx >= {task.seq_len}"
        )
    return {
        "model": model_cfg.to_dict(),
        "task": {"name": task.name, "options": task.options()},
        "train": train_cfg.to_dict(),
        "tokenizer": task.tokenizer.to_dict(),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for section in ("model", "task", "tokenizer", "train"):
        a, b = dict(old.get(section, {})), dict(new.get(section, {}))
        if section == "train":
            for key in RESUME_MAY_CHANGE:
                a.pop(key, None), b.pop(key, None)
        if section == "tokenizer":
            if a != b:
                kinds = (a.get("kind", "listed"), b.get("kind", "listed"))
                if kinds == ("bpe", "bpe") and _n_tokens(a) == _n_tokens(b):
                    out.append(
                        f"tokenizer: the run's BPE tokenizer and this one both have {_n_tokens(a)} tokens but "
                        "different merges or vocabulary (another tokenizer_dir, corpus or tokenizers version); "
                        "give the tokenizer_dir the run was trained with"
                    )
                else:
                    out.append(
                        f"tokenizer: the run's has {_n_tokens(a)} tokens, this one {_n_tokens(b)}"
                        + (f" (the run's is {kinds[0]}, this one {kinds[1]})" if "bpe" in kinds else "")
                    )
            continue
        if section == "task":  # compare the task's options one by one, so the message names the option
            a = {"name": a.get("name"), **a.get("options", {})}
            b = {"name": b.get("name"), **b.get("options", {})}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{section}.{key}: run has {a.get(key)!r}, now {b.get(key)!r}")
    return out


def _n_tokens(tokenizer: dict[str, Any]) -> int:
    return Tokenizer.from_dict(tokenizer).d_vocab if tokenizer else 0


def check_out(out: Path, config: dict[str, Any], resume: bool, overwrite: bool) -> bool:
    """Refuse an --out holding another run (unless overwrite); on resume, refuse a config that differs.

    Writes nothing. Returns True when the run starts at step 0: the folder is new, is to be
    overwritten, or holds a start that never saved a checkpoint (a failed or interrupted start, which
    a plain retry or --resume simply starts again); False when it continues from a checkpoint.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run, or start it over")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run (it is created if missing)")
    has_config = (out / CONFIG).is_file()
    started = bool(checkpoint_steps(out))  # a run is something once it has saved a checkpoint
    if resume:
        if not has_config:
            raise FileNotFoundError(f"nothing to resume: {out} holds no run (no {CONFIG})")
        if not started:
            _check_failed_start(out)
            return True
        diffs = _differences(read_config(out), config)
        if diffs:
            raise ValueError(f"cannot resume {out} with a different config: " + "; ".join(diffs))
        return False
    if overwrite:
        return True
    # checkpoints or metrics without a config of ours: not our files to replace unasked
    foreign = not has_config and (os.path.lexists(out / CHECKPOINTS) or os.path.lexists(out / METRICS))
    if started or foreign:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or --overwrite to start over")
    _check_failed_start(out)
    return True


def _check_failed_start(out: Path) -> None:
    """Refuse to start `out` again unless its checkpoints folder is what a start that saved none leaves.

    That is no `checkpoints` at all, or a real folder holding at most the files of a save killed
    before its weights were written. Anything else (a link, say to a disk that is not mounted now, so
    the run's checkpoints look absent) may be a real run: starting over would rewrite its metrics
    and config, so only --overwrite does that.
    """
    folder = out / CHECKPOINTS
    if not os.path.lexists(folder):
        return
    if folder.is_symlink():
        there = f"a link to {os.readlink(folder)}" + ("" if folder.exists() else ", which cannot be reached now")
    elif not folder.is_dir():
        there = "a file, not a folder"
    else:
        others = sorted(p.name for p in folder.iterdir() if not is_unfinished_save(p.name))
        if not others:
            return
        there = f"a folder holding {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}"
    raise FileExistsError(
        f"{folder} is {there}, not what a start that saved no checkpoint leaves, so the run is not started over "
        "(that would rewrite its metrics and config); pass --overwrite to start over (a link is then removed, "
        "not what it leads to)"
    )


def start_out(out: Path, config: dict[str, Any]) -> None:
    """Clear `out` of an earlier start (checkpoints, metrics) and write config.json: the run begins at step 0.

    A link among them is removed itself, never followed: what it leads to is not this run's to delete.
    """
    for name in (CHECKPOINTS, METRICS, CONFIG):
        if (out / name).is_symlink():
            (out / name).unlink()
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    (out / METRICS).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / CONFIG, json.dumps(config, indent=2).encode())


def read_metrics(path: str | Path, root: str | Path | None = None) -> list[dict[str, Any]]:
    """Every record of metrics.jsonl; unreadable lines are left out (`metrics_problems` names them)."""
    return [record for _, record in metrics_lines(path, root) if record is not None]


def metrics_problems(path: str | Path, root: str | Path | None = None) -> list[str]:
    """One line per unreadable metrics line ("metrics.jsonl line 7 is not ..."), so a reader can warn."""
    file = Path(path) / METRICS
    problems = []
    for number, (line, record) in enumerate(metrics_lines(path, root), start=1):
        if record is None:
            problems.append(f"{file} line {number} is not a JSON object with a step and was skipped: {line[:80]!r}")
    return problems


def metrics_lines(path: str | Path, root: str | Path | None = None) -> list[tuple[str, dict[str, Any] | None]]:
    """(text, record) for each non-empty line of metrics.jsonl; record None where the line is corrupt.

    A corrupt line costs only itself: the run's other numbers and its checkpoints stay usable. A
    half-written last line (a run killed mid-write) is left out, as it will be written again on resume.
    """
    file = Path(path) / METRICS
    if not file.is_file():
        return []
    raw = confined(file, Path(path) if root is None else root).read_bytes()
    lines = [line for line in raw.decode("utf-8", errors="replace").split("\n") if line.strip()]
    torn = not raw.endswith(b"\n")
    out: list[tuple[str, dict[str, Any] | None]] = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if not (isinstance(record, dict) and type(record.get("step")) is int):
            if torn and i == len(lines) - 1:
                break
            record = None
        out.append((line, record))
    return out


def list_checkpoints(path: str | Path) -> list[int]:
    """Steps that have a checkpoint in the run at `path`, ascending (readable or not: see checkpoint_status)."""
    return checkpoint_steps(Path(path))


def checkpoint_status(path: str | Path, root: str | Path | None = None) -> list[tuple[int, str | None]]:
    """(step, None) for each readable checkpoint, (step, why not) for each corrupt or mismatched one.

    Every file read must lie inside `root` (default: the run folder itself) once links are followed.
    """
    path = Path(path)
    root = path if root is None else Path(root)
    model = Transformer(TransformerConfig.from_dict(read_config(path, root)["model"]))
    confined(path / CHECKPOINTS, root)
    out: list[tuple[int, str | None]] = []
    for step in list_checkpoints(path):
        try:
            _read_weights(path, step, model, root)
            out.append((step, None))
        except (ValueError, FileNotFoundError) as err:
            out.append((step, str(err)))
    return out


def _read_weights(path: Path, step: int, model: Transformer, root: Path) -> dict[str, torch.Tensor]:
    weights = checkpoint_files(path, step)[0]
    return checked_state_dict(model, load_tensors(confined(weights, root)), source=str(weights))


def build_task(config: dict[str, Any], data_root: Path | None = None) -> tuple[Task, Tokenizer]:
    """The run's task, using the tokenizer saved with the run (text tasks need not re-read their data).

    With `data_root`, the task reads data files only inside that folder (the app passes its runs folder).
    """
    tokenizer = Tokenizer.from_dict(config["tokenizer"])
    task = get_task(config["task"]["name"], **config["task"].get("options", {}))
    task.use_tokenizer(tokenizer)
    task.data_root = data_root
    return task, tokenizer


def load_run(
    path: str | Path,
    step: int | None = None,
    device: torch.device | str | None = None,
    root: str | Path | None = None,
) -> Run:
    """Load the run at `path` at checkpoint `step` (None: the latest readable one) onto `device` (default cpu).

    Every file read must lie inside `root` (default: the run folder itself) once symlinks are followed:
    the app passes its runs folder, so a run's link to a file elsewhere is refused, naming the link.
    """
    path = Path(path)
    data_root = None if root is None else Path(root)  # a run opened directly may read its data where it lies
    root = path if root is None else Path(root)
    confined(path, root)
    config = read_config(path, root)
    task, tokenizer = build_task(config, data_root)
    model = Transformer(TransformerConfig.from_dict(config["model"]))
    confined(path / CHECKPOINTS, root)
    steps = list_checkpoints(path)
    if not steps:
        raise FileNotFoundError(f"the run at {path} has no checkpoints yet (looked in {path / 'checkpoints'})")
    errors: list[str] = []
    if step is not None:
        if step not in steps:
            raise ValueError(f"the run at {path} has no checkpoint at step {step}; it has {steps}")
        state = _read_weights(path, step, model, root)
    else:
        for candidate in reversed(steps):
            try:
                state = _read_weights(path, candidate, model, root)
                step = candidate
                break
            except (ValueError, FileNotFoundError) as err:
                errors.append(f"checkpoint {candidate}: {err}")
        else:
            raise ValueError(f"no readable checkpoint in {path}: " + "; ".join(errors))
    model.load_state_dict(state)
    model.to(device or "cpu").eval()
    return Run(
        path=path,
        model=model,
        task=task,
        tokenizer=tokenizer,
        metrics=read_metrics(path, root),
        metrics_skipped=metrics_problems(path, root),
        config=config,
        step=step,
        skipped=errors,
    )


def run_dynamics(
    path: str | Path,
    measure: Callable[[Transformer], Mapping[str, float]],
    name: str,
    arguments: Mapping[str, Any],
    device: torch.device | str = "cpu",
) -> Dynamics:
    """`measure` at every readable checkpoint of the run, cached in `path/analysis/<name>-<hash of arguments>/`.

    A step is computed again when its weights file changes (size or modification time).
    """
    path = Path(path)
    steps = [step for step, err in checkpoint_status(path) if err is None]
    if not steps:
        raise FileNotFoundError(f"the run at {path} has no readable checkpoint")

    def stamp(step: int) -> str:
        info = checkpoint_files(path, step)[0].stat()
        return f"{info.st_size}:{info.st_mtime_ns}"

    def load(step: int) -> Transformer:
        return load_run(path, step=step, device=device).model

    cache = path / ANALYSIS / cache_key(name, arguments)
    for folder in (path / ANALYSIS, cache):  # never written through a link that leads out of the run
        if folder.exists() or folder.is_symlink():
            confined(folder, path)
    return over_checkpoints(steps, load, measure, cache, stamp)
