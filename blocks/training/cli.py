"""Train a task: `python -m blocks.train --task NAME --out runs/NAME [--config FILE.json] [--key value ...]`.

Any model, trainer or task option can be given as `--key value` (values are read as JSON
when they parse, else as strings) or in a JSON file (flat, or sectioned like a run's
config.json). Under `torchrun` the same command trains with DistributedDataParallel.

With --resume, every option not given comes from the run's own config.json; a given option that
differs from the run is refused, except the trainer options in RESUME_MAY_CHANGE (steps, eval_every,
log_every, n_checkpoints, device): a larger --steps extends a finished run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from blocks.config import TransformerConfig
from blocks.fast import keep_freed_memory
from blocks.tasks import TASKS, get_task, task_options
from blocks.tasks.base import Task
from blocks.training.config import TrainConfig
from blocks.training.runs import CONFIG, RESUME_MAY_CHANGE, read_config
from blocks.training.trainer import Trainer, TrainingDiverged, TrainResult
from blocks.weights import read_json
from scratchnn.errors import describe

MODEL_KEYS = [f.name for f in dataclasses.fields(TransformerConfig)]
# a given key drops these from the task's defaults, so they are derived again from what was given
_DERIVED = {"d_model": ("d_head", "d_mlp", "init_range"), "n_heads": ("d_head",), "attn_only": ("d_mlp",)}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["--lr", "3e-3", "--attn_only", "true"]` -> {"lr": 0.003, "attn_only": True}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(pairs):
        key = pairs[i]
        if not key.startswith("--") or len(key) == 2:
            raise ValueError(f"expected --key value pairs, got {key!r}")
        key = key[2:].replace("-", "_")
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(pairs):
            raw = pairs[i + 1]
            i += 2
        else:
            raise ValueError(f"--{key} needs a value")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = {"True": True, "False": False, "None": None}.get(raw, raw)
    return out


def read_config_file(path: str) -> dict[str, Any]:
    """A flat {key: value} dict from a JSON file (a sectioned run config.json is flattened)."""
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"--config {file} is a folder; give a JSON file of options")
    if not file.is_file():
        raise FileNotFoundError(f"no config file at {file}")
    data = read_json(file, "config file")
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object of options, got {type(data).__name__}")
    if {"model", "train"} & set(data) and all(isinstance(v, dict) for v in data.values()):
        return flatten_run_config(data)
    return data


def flatten_run_config(data: dict[str, Any]) -> dict[str, Any]:
    """A sectioned run config.json as flat options: model, task options, trainer, and "task" (the name)."""
    flat: dict[str, Any] = {}
    flat.update(data.get("model", {}))
    flat.update(data.get("task", {}).get("options", {}))
    flat.update(data.get("train", {}))
    if "name" in data.get("task", {}):
        flat["task"] = data["task"]["name"]
    return flat


def resume_options(out: Path, task_name: str | None, given: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(task, options) to resume the run in `out`: its own config.json, overridden by the `given` options.

    The device is left out (it says where the run ran, not what it is), so it is "auto" unless given,
    and so is d_vocab, which the task derives.
    """
    if not (out / CONFIG).is_file():
        raise FileNotFoundError(f"nothing to resume: {out} holds no run (no {CONFIG}); drop --resume to start one")
    options = flatten_run_config(read_config(out))
    run_task = options.pop("task")
    if task_name is not None and task_name != run_task:
        raise ValueError(
            f"cannot resume {out}: it is a run of task {run_task!r}, not {task_name!r}; drop --task or pick another --out"
        )
    options.pop("device", None)
    # d_vocab follows from the task: re-derived, so a changed task option or text is reported as
    # itself (task.n_symbols, tokenizer) rather than as a d_vocab the person never gave
    options.pop("d_vocab", None)
    return run_task, {**options, **given}


def build(task_name: str, options: dict[str, Any]) -> tuple[Task, TransformerConfig, TrainConfig]:
    """Split `options` into task, model and trainer settings over the task's defaults; unknown keys raise."""
    valid_task = set(task_options(task_name))
    valid = set(MODEL_KEYS) | set(TrainConfig.fields()) | valid_task
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for task {task_name!r}; valid ones are model {MODEL_KEYS}, "
            f"trainer {TrainConfig.fields()}, task {sorted(valid_task)}"
        )
    task = get_task(task_name, **{k: v for k, v in options.items() if k in valid_task})
    model = task.default_model_config().to_dict()
    given = {k: v for k, v in options.items() if k in MODEL_KEYS}
    for key, derived in _DERIVED.items():
        if key in given:
            for d in derived:
                if d not in given:
                    model.pop(d, None)
    model_cfg = TransformerConfig.from_dict({**model, **given})
    train = {**task.default_train_config(), **{k: v for k, v in options.items() if k in TrainConfig.fields()}}
    if "warmup_steps" not in options and isinstance(train.get("steps"), int):
        # a shorter run than the task's default keeps a default warm-up that fits inside it
        train["warmup_steps"] = min(train.get("warmup_steps", 0), train["steps"] // 10)
    return task, model_cfg, TrainConfig.from_dict(train)


def main(argv: list[str] | None = None, prog: str = "python -m blocks.train") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n")[0],
        epilog="any other --key value sets a model, trainer or task option",
    )
    parser.add_argument("--task", default=None, help=f"one of {sorted(TASKS)} (default induction)")
    parser.add_argument("--out", default=None, help="run directory (default runs/<task>)")
    parser.add_argument("--config", default=None, help="JSON file of options")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last good checkpoint; options not given come from the run's "
        "config.json, given ones must match it except " + ", ".join(RESUME_MAY_CHANGE) + " (a larger --steps "
        "extends a finished run, with the lr schedule recomputed over the new total)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a different run already in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, rest = parser.parse_known_args(argv)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    out: Path | None = None
    try:
        keep_freed_memory()
        options = read_config_file(args.config) if args.config else {}
        options.update(parse_overrides(rest))
        task_name = args.task or options.pop("task", None)
        options.pop("task", None)
        if args.out is not None and not args.out.strip():
            raise ValueError("--out is empty; give a folder for the run, or leave --out out for runs/<task>")
        out = Path(args.out or f"runs/{task_name or 'induction'}")
        if args.resume and not args.overwrite:
            task_name, options = resume_options(out, task_name, options)
        task_name = task_name or "induction"
        if task_name not in TASKS:
            raise ValueError(f"unknown task {task_name!r}; valid tasks are {sorted(TASKS)}")
        torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
        task, model_cfg, train_cfg = build(task_name, options)
        trainer = Trainer(
            task, model_cfg, train_cfg, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
        )
        if rank0:
            if trainer.restarted:
                print(f"note: {out} held a start that saved no checkpoint; starting it again", file=sys.stderr)
            for why in trainer.skipped:
                print(f"warning: unusable {why}", file=sys.stderr)
            print(
                f"training {task_name} on {trainer.device} into {out} ({trainer.step}/{train_cfg.steps} steps done)",
                file=sys.stderr,
            )
            for line in task.training_notes():
                print(line, file=sys.stderr)
        result = trainer.run()
    except TrainingDiverged as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted before the first checkpoint, so nothing was trained yet; the same command starts "
            f"the run in {out or 'its folder'} again",
            file=sys.stderr,
        )
        return 130
    except Exception as err:  # noqa: BLE001 - bad input, unreadable files, a full disk, out of memory: one line
        line = describe(err)
        if line is None:  # a bug: its traceback is what finds it
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank0:
        report(result, train_cfg.steps, task)
    return 130 if result.interrupted else 0


def report(result: TrainResult, steps: int, task: Task | None = None) -> None:
    if result.interrupted:
        print(f"interrupted: saved step {result.step} in {result.out}; continue with --resume", file=sys.stderr)
    elif result.step == result.start_step:  # no step ran, so there is no loss to report
        print(
            f"nothing to do: the run in {result.out} already has {result.step} steps (steps={steps}); "
            f"pass a larger --steps to extend it",
            file=sys.stderr,
        )
    else:
        print(
            f"done: {result.step} steps, final train loss {result.final_loss:.4f}, run in {result.out}", file=sys.stderr
        )
    meaning = task.milestone_meaning() if task is not None else None
    if result.milestone_step is not None:
        print(
            f"milestone {task.milestone() if task else ''} reached at step {result.milestone_step}"
            + (f": {meaning}" if meaning else ""),
            file=sys.stderr,
        )
    elif meaning and not result.interrupted:
        print(f"milestone {task.milestone()} not reached in {result.step} steps (it means {meaning})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
