"""The trainer's settings: one frozen dataclass, validated once, saved in the run's config.json."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from blocks.tasks.base import SEED_MAX, SEED_MIN

Schedule = Literal["cosine", "linear", "constant"]
# torch seeds generators with 64-bit ints, and the trainer derives per-epoch seeds from this one
# AdamW's first step is lr / (1 - beta1): past this it overflows float32 and torch raises mid-step
MAX_LR = 1e30


@dataclass(frozen=True)
class TrainConfig:
    """How to train: steps, batch, AdamW, the learning-rate schedule, evaluation and checkpoints.

    `batch_size` is the global batch (split across processes under torchrun). Checkpoints
    fall on a geometric schedule of about `n_checkpoints` steps (dense early, where heads
    form, sparse late), plus the final step. `device` is "auto" (cuda, then mps, then cpu)
    or any torch device string; it is not part of a run's identity, so a run may resume elsewhere.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 50
    schedule: str = "cosine"  # one of Schedule; checked in __post_init__ so a bad value gets our message
    min_lr_frac: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    log_every: int = 10
    n_checkpoints: int = 20
    seed: int = 0
    device: str = "auto"
    bf16: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "log_every", "n_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"train option {name} must be a positive int, got {value!r}")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be an int in [0, steps={self.steps}], got {self.warmup_steps!r}")
        for name in ("lr", "beta1", "beta2", "grad_clip", "min_lr_frac", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"train option {name} must be a finite number, got {value!r}")
        if not 0 < self.lr <= MAX_LR:
            raise ValueError(
                f"lr must be positive and at most 1e30 (AdamW's steps overflow float32 beyond), got {self.lr}"
            )
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if self.weight_decay < 0 or self.grad_clip < 0 or not 0 <= self.min_lr_frac <= 1:
            raise ValueError("weight_decay and grad_clip must be >= 0 (0 turns clipping off) and min_lr_frac in [0, 1]")
        if self.schedule not in get_args(Schedule):
            raise ValueError(f"schedule must be one of {list(get_args(Schedule))}, got {self.schedule!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not SEED_MIN <= self.seed < SEED_MAX:
            raise ValueError(
                f"seed must be an int in [-2**63, 2**63) (what torch's generators take), got {self.seed!r}"
            )
        if not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be true or false, got {self.bf16!r}")

    def identity(self) -> dict[str, Any]:
        """The settings that define the run (everything but where it runs)."""
        d = dataclasses.asdict(self)
        d.pop("device")
        return d

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - set(cls.fields()))
        if unknown:
            raise ValueError(f"unknown train option(s) {unknown}; valid ones are {cls.fields()}")
        return cls(**data)
