"""Toy tasks as seeded `datasets.Dataset`s: `TASKS` maps each name to its class; `get_task` builds one."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from blocks.tasks.base import Task, Tokenizer, UnknownTokenError
from blocks.tasks.induction import InductionTask
from blocks.tasks.modular_addition import ModularAdditionTask
from blocks.tasks.sort import SortTask
from blocks.tasks.sycophancy import SycophancyTask
from blocks.tasks.text import TextTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (InductionTask, ModularAdditionTask, SortTask, SycophancyTask, TextTask)
}


def task_options(name: str) -> dict[str, Any]:
    """The options task `name` takes, with their defaults (a required option maps to None)."""
    cls = _task_class(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: (None if p.default is inspect.Parameter.empty else p.default) for k, p in params.items() if k != "self"}


def get_task(name: str, **options: Any) -> Task:
    """Build task `name` with `options`; unknown names and options raise, listing the valid ones."""
    cls = _task_class(name)
    valid = task_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"task {name!r} has no option(s) {unknown}; valid options are {sorted(valid)}")
    hints = typing.get_type_hints(cls.__init__)
    for key, value in options.items():
        _check_option_type(name, key, value, hints.get(key))
    return cls(**options)


def _check_option_type(task: str, key: str, value: Any, hint: Any) -> None:
    """A ValueError naming the option when `value` is not of the annotated type (`--seq_len abc`)."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return
        if kind is bool and isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if kind is str and isinstance(value, str):
            return
        if kind not in (type(None), bool, int, float, str):  # a type this check does not know: the task checks it
            return
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise ValueError(f"task {task!r} option {key} must be {names}, got {value!r}")


def _task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks are {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "Tokenizer", "UnknownTokenError", "get_task", "task_options"]
