"""Which SAE features line up with a task's known variables: the best single-feature probe per variable.

A single-feature probe predicts the variable's class from one feature's code alone, by the
nearest class mean (fitted on half the examples, scored on the other half). A feature that is
"the opinion is present" scores near 1 on that variable; chance is the commonest class's share.

Known variables (read off the prompts, so no task import is needed; the task is duck-typed by name):
sycophancy at the answer position: opinion present, opinion value, queried key, true value;
sort at every position after BOS: position, token rank (the value's place in the sorted list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

KNOWN_TASKS = ("sycophancy", "sort")


@dataclass(frozen=True)
class KnownVariable:
    """A variable's class at chosen (row, position) pairs of `tokens`."""

    name: str
    rows: Int[Tensor, " m"]
    positions: Int[Tensor, " m"]
    labels: Int[Tensor, " m"]


@dataclass(frozen=True)
class VariableMatch:
    """Every feature's single-feature probe accuracy on one variable, and the best."""

    name: str
    accuracy: Float[Tensor, " width"]
    chance: float

    @property
    def best_feature(self) -> int:
        return int(self.accuracy.argmax())

    @property
    def best_accuracy(self) -> float:
        return float(self.accuracy.max())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "best_feature": self.best_feature,
            "best_accuracy": self.best_accuracy,
            "chance": self.chance,
            "accuracy": self.accuracy.tolist(),
        }


def known_variables(task: Any, n: int = 1000, seed: int = 0) -> tuple[Int[Tensor, "n pos"], list[KnownVariable]]:
    """Prompts of `task` and its known variables on them; ValueError for a task without any."""
    name = getattr(task, "name", None)
    if name == "sycophancy":
        return _sycophancy(task, n, seed)
    if name == "sort":
        return _sort(task, n, seed)
    raise ValueError(f"task {name!r} has no known variables here; tasks with them: {list(KNOWN_TASKS)}")


def _sycophancy(task: Any, n: int, seed: int) -> tuple[Tensor, list[KnownVariable]]:
    prompts = task.prompts(n, "mixed", split="test", seed=seed)
    tokens = prompts.tokens
    rows = torch.arange(n)
    pos = torch.full((n,), task.answer_pos)
    queried = (tokens[:, task.answer_pos, None] == task.key_ids[None]).long().argmax(-1)
    variables = {
        "opinion present": (prompts.opinion >= 0).long(),
        "opinion value": prompts.opinion + 1,  # 0: no opinion
        "queried key": queried,
        "true value": prompts.truth,
    }
    return tokens, [KnownVariable(k, rows, pos, v) for k, v in variables.items()]


def _sort(task: Any, n: int, seed: int) -> tuple[Tensor, list[KnownVariable]]:
    tokens, _ = task.generate(n, seed=seed + 31_337)
    length = task.list_len
    inputs = tokens[:, 1 : length + 1]
    # a value's rank in its list (ties broken by order, as a stable sort would)
    rank = inputs.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True)
    positions = torch.cat([torch.arange(1, length + 1), torch.arange(length + 2, 2 * length + 2)])
    rows = torch.arange(n).repeat_interleave(positions.numel())
    pos = positions.repeat(n)
    ranks = torch.cat([rank, torch.arange(length).expand(n, length)], dim=1).flatten()
    return tokens, [
        KnownVariable("position", rows, pos, pos.clone()),
        KnownVariable("token rank", rows, pos, ranks),
    ]


def single_feature_accuracy(
    codes: Float[Tensor, "m width"], labels: Int[Tensor, " m"], seed: int = 0, chunk: int = 256
) -> tuple[Float[Tensor, " width"], float]:
    """(each feature's held-out accuracy at predicting `labels` by the nearest class mean, chance accuracy)."""
    if codes.shape[0] != labels.shape[0] or codes.shape[0] < 4:
        raise ValueError(
            f"need one label per row and at least 4 rows, got {codes.shape[0]} rows, {labels.shape[0]} labels"
        )
    order = torch.randperm(codes.shape[0], generator=torch.Generator().manual_seed(seed))
    half = codes.shape[0] // 2
    fit, test = order[:half], order[half:]
    classes, y_fit = labels[fit].unique(return_inverse=True)
    n_classes = classes.numel()
    sums = torch.zeros(n_classes, codes.shape[1]).index_add_(0, y_fit, codes[fit].float())
    counts = torch.bincount(y_fit, minlength=n_classes).clamp(min=1)
    means = sums / counts[:, None]  # [class, width]
    y_test = labels[test]
    accuracy = torch.empty(codes.shape[1])
    for start in range(0, codes.shape[1], chunk):
        c = codes[test, start : start + chunk].float()  # [m, w]
        m = means[:, start : start + chunk]  # [class, w]
        guess = classes[(c[:, None, :] - m[None]).abs().argmin(1)]  # [m, w]
        accuracy[start : start + chunk] = (guess == y_test[:, None]).float().mean(0)
    chance = float(torch.bincount(y_test - y_test.min()).max()) / y_test.numel()
    return accuracy, chance


def match_variables(
    codes: Float[Tensor, "n pos width"], variables: list[KnownVariable], seed: int = 0
) -> list[VariableMatch]:
    """The single-feature probe accuracy of every feature on every known variable."""
    out = []
    for var in variables:
        accuracy, chance = single_feature_accuracy(codes[var.rows, var.positions], var.labels, seed)
        out.append(VariableMatch(var.name, accuracy, chance))
    return out
