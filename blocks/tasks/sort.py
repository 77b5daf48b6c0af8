"""Sorting: `BOS x1 .. xn SEP y1 .. yn` where y is x sorted; only the y predictions count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import torch

from blocks.config import TransformerConfig
from blocks.tasks.base import Task, Tokenizer
from blocks.tasks.common import dataset_tensors, generated_split, masked_eval
from probes.circuit.contrast import Contrast


class SortTask(Task):
    """Lists of `list_len` numbers from [0, n_values), then their sorted copy.

    `distinct=True` (the default) draws without replacement, the classic set-up: each output
    is "the smallest input larger than the last output", which one attention layer can do.
    With repeats the model must also count duplicates, which one layer does less well.
    """

    name = "sort"
    prompt_format = '"BOS", the list of values, then "SEP" (e.g. BOS 5 2 8 SEP); after SEP the model writes the list sorted, one value per position.'

    def __init__(
        self,
        seed: int = 0,
        list_len: int = 10,
        n_values: int = 50,
        n_train: int = 50_000,
        n_test: int = 2_000,
        distinct: bool = True,
    ) -> None:
        super().__init__(seed)
        if list_len < 2 or n_values < 2:
            raise ValueError(f"need list_len >= 2 and n_values >= 2, got {list_len}, {n_values}")
        if n_train <= 0 or n_test <= 0:
            raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
        if distinct and list_len > n_values:
            raise ValueError(
                f"{list_len} distinct numbers cannot come from only n_values={n_values}; raise n_values or set distinct=False"
            )
        self.list_len, self.n_values, self.n_train, self.n_test = list_len, n_values, n_train, n_test
        self.distinct = distinct
        self._tokenizer = Tokenizer([str(i) for i in range(n_values)] + ["BOS", "SEP"], separator=" ")
        self.bos, self.sep = n_values, n_values + 1

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def seq_len(self) -> int:
        return 2 * self.list_len + 2

    def options(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "list_len": self.list_len,
            "n_values": self.n_values,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "distinct": self.distinct,
        }

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        if self.distinct:
            x = torch.rand(n, self.n_values, generator=gen).argsort(-1)[:, : self.list_len]
        else:
            x = torch.randint(0, self.n_values, (n, self.list_len), generator=gen)
        tokens = torch.cat([torch.full((n, 1), self.bos), x, torch.full((n, 1), self.sep), x.sort(-1).values], dim=1)
        mask = torch.zeros_like(tokens)
        mask[:, self.list_len + 1 : -1] = 1  # from SEP on, each position predicts the next sorted value
        return tokens, mask

    def dataset(self, split: str) -> datasets.Dataset:
        return generated_split(self.generate, split, self.n_train, self.n_test, self.seed)

    def example(self, seed: int) -> list[int]:
        return self.generate(1, seed=seed + 7_919)[0][0, : self.list_len + 2].tolist()

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        tokens, mask = dataset_tensors(self.dataset("test"))
        loss, token_acc, seq_acc = masked_eval(model, tokens, mask, batch=1024)
        return {"test_loss": loss, "token_acc": token_acc, "seq_acc": seq_acc, "solved": float(token_acc > 0.99)}

    def scored_positions(self, ids: Sequence[int]) -> list[int]:
        """From SEP on, each position predicts the next sorted value; the list before it is random."""
        return list(range(self.list_len + 1, len(ids) - 1))

    def circuit_contrast(self, n: int = 64, seed: int = 0) -> Contrast:
        """A list and its sorted copy against another list and its sorted copy; the metric is the
        mean log-probability of each next sorted value of the clean list."""
        clean, mask = self.generate(n, seed=40_013 + seed)
        corrupted, _ = self.generate(n, seed=50_021 + seed)
        shift = lambda t: torch.cat([t[:, 1:], t[:, :1]], dim=1)  # noqa: E731  position t predicts t + 1
        return Contrast.of_answers(
            clean, corrupted, shift(clean), shift(corrupted), mask.bool(), "log_prob", "log p(next sorted value)"
        )

    def milestone(self) -> str | None:
        return "solved"

    def milestone_meaning(self) -> str:
        return "the model sorts: token accuracy above 0.99 on the sorted half of the test lists"

    def default_model_config(self) -> TransformerConfig:
        return TransformerConfig(
            n_layers=1, d_model=128, n_heads=2, d_vocab=self._tokenizer.d_vocab, n_ctx=self.seq_len, attn_only=True
        )

    def default_train_config(self) -> dict[str, Any]:
        return {
            "steps": 4000,
            "batch_size": 64,
            "lr": 1e-3,
            "warmup_steps": 100,
            "schedule": "cosine",
            "weight_decay": 0.01,
            "eval_every": 200,
        }
