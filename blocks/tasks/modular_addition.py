"""Modular addition `a b = c` with c = (a + b) mod p: the grokking set-up of docs/reference.md (Nanda et al., 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import torch
from torch import Tensor

from blocks.config import TransformerConfig
from blocks.tasks.base import Task, Tokenizer
from blocks.tasks.common import dataset_tensors, masked_eval, to_dataset
from probes.circuit.contrast import Contrast


class ModularAdditionTask(Task):
    """Every pair (a, b) in [0, p)^2 as `a b = c`; a seeded `frac_train` of pairs trains, the rest test.

    The default schedule is long on purpose: train loss reaches ~0 within a few hundred
    full-batch epochs, while test loss only collapses ("grokking") around 10k-15k epochs.
    """

    name = "modular_addition"
    prompt_format = '"a b =" as three space-separated tokens, a and b in 0..p-1 (e.g. 3 5 =); the answer after "=" is (a + b) mod p.'

    def __init__(self, seed: int = 0, p: int = 113, frac_train: float = 0.3) -> None:
        super().__init__(seed)
        if not isinstance(p, int) or p < 2:
            raise ValueError(f"p must be an int >= 2, got {p!r}")
        if not 0 < frac_train < 1:
            raise ValueError(f"frac_train must lie strictly between 0 and 1, got {frac_train}")
        self.p, self.frac_train = p, frac_train
        self._tokenizer = Tokenizer([str(i) for i in range(p)] + ["="], separator=" ")

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def seq_len(self) -> int:
        return 4  # a b = c

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed, "p": self.p, "frac_train": self.frac_train}

    def all_pairs(self) -> tuple[Tensor, Tensor]:
        """(train row ids, test row ids) into the p*p pairs ordered a-major; disjoint, seeded."""
        n = self.p * self.p
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        cut = int(self.frac_train * n)
        return perm[:cut], perm[cut:]

    def dataset(self, split: str) -> datasets.Dataset:
        train, test = self.all_pairs()
        rows = {"train": train, "test": test}
        if split not in rows:
            raise ValueError(f"split must be one of {list(rows)}, got {split!r}")
        idx = rows[split]
        a, b = idx // self.p, idx % self.p
        eq = torch.full_like(a, self.p)
        tokens = torch.stack([a, b, eq, (a + b) % self.p], dim=1)
        mask = torch.zeros_like(tokens)
        mask[:, 2] = 1  # only the answer after "=" counts
        return to_dataset(tokens, mask)

    def example(self, seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        a, b = torch.randint(0, self.p, (2,), generator=gen).tolist()
        return [a, b, self.p]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        out = {}
        for split in ("train", "test"):
            tokens, mask = dataset_tensors(self.dataset(split))
            loss, acc, _ = masked_eval(model, tokens, mask, batch=4096)
            out[f"{split}_loss"], out[f"{split}_acc"] = loss, acc
        out["grokked"] = float(out["test_acc"] > 0.99)
        return out

    def scored_positions(self, ids: Sequence[int]) -> list[int]:
        """None inside a prompt of a b =: the loss scores only the answer after it."""
        return []

    def circuit_contrast(self, n: int = 64, seed: int = 0) -> Contrast:
        """`a b =` against `a' b =` (a' != a, so the answer differs); the metric is logit[c] - logit[c'] after "="."""
        gen = torch.Generator().manual_seed(60_017 + seed)
        a, b = torch.randint(0, self.p, (2, n), generator=gen)
        a2 = (a + torch.randint(1, self.p, (n,), generator=gen)) % self.p
        eq = torch.full_like(a, self.p)
        clean, corrupted = torch.stack([a, b, eq], 1), torch.stack([a2, b, eq], 1)
        mask = torch.zeros_like(clean, dtype=torch.bool)
        mask[:, 2] = True
        at_eq = lambda c: c[:, None].expand_as(clean)  # noqa: E731  (read only where mask is set)
        return Contrast.of_answers(
            clean,
            corrupted,
            at_eq((a + b) % self.p),
            at_eq((a2 + b) % self.p),
            mask,
            "logit_diff",
            "logit[a + b] - logit[a' + b] after '='",
        )

    def milestone(self) -> str | None:
        return "grokked"

    def milestone_meaning(self) -> str:
        return "the model generalised (grokked): accuracy above 0.99 on the held-out pairs, long after it fit the training pairs"

    def default_model_config(self) -> TransformerConfig:
        return TransformerConfig(
            n_layers=1,
            d_model=128,
            n_heads=4,
            d_mlp=512,
            act_fn="relu",
            normalization=None,
            d_vocab=self._tokenizer.d_vocab,
            n_ctx=self.seq_len,
        )

    def default_train_config(self) -> dict[str, Any]:
        # full batch (every training pair each step): one step is one epoch
        return {
            "steps": 20_000,
            "batch_size": int(self.frac_train * self.p * self.p),
            "lr": 1e-3,
            "weight_decay": 1.0,
            "beta1": 0.9,
            "beta2": 0.98,
            "warmup_steps": 10,
            "schedule": "constant",
            "grad_clip": 0.0,
            "eval_every": 100,
            "log_every": 10,
            "n_checkpoints": 40,
        }
