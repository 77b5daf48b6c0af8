"""What every task provides: a tokenizer with readable tokens, seeded datasets, a loss mask, an evaluation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch
from torch import Tensor

from blocks.config import TransformerConfig
from probes.circuit.contrast import Contrast
from probes.head_scores import head_scores, score_batch

# torch's generators take any 64-bit seed; tasks derive others by adding small numbers, so stay below 2**63.
# Runs saved before the range was checked used negative seeds too, and must still load.
SEED_MIN, SEED_MAX = -(2**63), 2**63


class UnknownTokenError(ValueError):
    """Text held characters or tokens the tokenizer does not know. `unknown` lists them in order."""

    def __init__(self, unknown: list[str], vocab_hint: str) -> None:
        self.unknown = unknown
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        super().__init__(f"{len(unknown)} unknown token(s): {shown}; the vocabulary is {vocab_hint}")


class Tokenizer:
    """Maps between text and ids; token `i`'s readable string is `vocab[i]`.

    `separator=""` makes a character tokenizer; `separator=" "` splits on whitespace, for
    tasks whose tokens are words or numbers ("BOS 12 7 12").
    """

    def __init__(self, vocab: Sequence[str], separator: str = "") -> None:
        vocab = list(vocab)
        if len(set(vocab)) != len(vocab):
            dupes = sorted({v for v in vocab if vocab.count(v) > 1})
            raise ValueError(f"a vocabulary lists each token once; repeated: {dupes}")
        if separator not in ("", " "):
            raise ValueError(f"separator must be '' (characters) or ' ' (whitespace), got {separator!r}")
        self.vocab = vocab
        self.separator = separator
        self._ids = {t: i for i, t in enumerate(vocab)}

    @property
    def d_vocab(self) -> int:
        return len(self.vocab)

    def split(self, text: str) -> list[str]:
        return list(text) if self.separator == "" else text.split()

    def encode(self, text: str) -> list[int]:
        """Ids for `text`; raises UnknownTokenError naming every unknown piece (nothing is dropped)."""
        pieces = self.split(text)
        unknown = [p for p in pieces if p not in self._ids]
        if unknown:
            hint = (
                repr("".join(self.vocab))
                if self.separator == "" and len(self.vocab) <= 100
                else f"{self.d_vocab} tokens"
            )
            raise UnknownTokenError(unknown, hint)
        return [self._ids[p] for p in pieces]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.d_vocab]
        if bad:
            raise ValueError(f"ids {bad[:10]} are outside the vocabulary [0, {self.d_vocab})")
        return self.separator.join(self.vocab[i] for i in ids)

    def token_strs(self, ids: Sequence[int] | Tensor) -> list[str]:
        """One readable label per id, for axes and tables."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return [self.vocab[i] for i in ids]

    def id(self, token: str) -> int:
        if token not in self._ids:
            raise UnknownTokenError([token], f"{self.d_vocab} tokens")
        return self._ids[token]

    def to_dict(self) -> dict[str, Any]:
        return {"vocab": self.vocab, "separator": self.separator}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        if data.get("kind") == "bpe":  # a text run's byte-level BPE (blocks.tasks.bpe)
            from blocks.tasks.bpe import BPETokenizer

            return BPETokenizer.from_dict(data)
        return cls(data["vocab"], data.get("separator", ""))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()


class Task(ABC):
    """A toy task: its data as a `datasets.Dataset`, its tokenizer, which positions count, and its evaluation.

    Datasets have the columns `tokens` (list of ids, all rows of one length) and
    `loss_mask` (list of 0/1, same length as tokens: 1 where predicting the *next* token
    counts in the loss). Everything is generated deterministically from the seed.
    """

    name: ClassVar[str]
    # when set, data files are read only inside this folder (the app sets its runs folder: a run's
    # config must not make it read, or fetch, anything else)
    data_root: Path | None = None
    # how a prompt of this task is written, for a person typing one (the app's prompt box shows it)
    prompt_format: ClassVar[str] = "text in the run's vocabulary"

    def __init__(self, seed: int = 0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not SEED_MIN <= seed < SEED_MAX:
            raise ValueError(f"seed must be an int in [-2**63, 2**63) (what torch's generators take), got {seed!r}")
        self.seed = seed

    @property
    @abstractmethod
    def tokenizer(self) -> Tokenizer: ...

    @property
    @abstractmethod
    def seq_len(self) -> int:
        """Length of every training sequence."""

    @abstractmethod
    def dataset(self, split: str) -> datasets.Dataset:
        """The `train` or `test` split, with columns `tokens` and `loss_mask`."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """The task's own numbers (losses, accuracies, head scores), computed without gradients."""

    @abstractmethod
    def example(self, seed: int) -> list[int]:
        """One fresh prompt from the task's distribution (for the app and the probes)."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this task (saved in the run's config.json)."""

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Adopt a run's saved tokenizer; tasks with a fixed vocabulary only check that it matches."""
        if tokenizer != self.tokenizer:
            raise ValueError(
                f"the saved tokenizer ({tokenizer.d_vocab} tokens) differs from task {self.name!r}'s own "
                f"({self.tokenizer.d_vocab} tokens); the run was made with other task options or code"
            )

    def head_scores(self, model: torch.nn.Module) -> dict[str, list[list[float]]] | None:
        """Every head's scores ([layer][head] per score name) on a [BOS] + r + r batch of this task's tokens.

        What the trainer logs beside `evaluate`'s numbers, so that heads can be watched forming;
        None when the context is too short for such a batch.
        """
        scored = score_batch(self.tokenizer.vocab, model.cfg.n_ctx, seed=self.seed + 99)
        if scored is None:
            return None
        return {name: value.tolist() for name, value in head_scores(model, *scored).items()}

    def circuit_contrast(self, n: int = 64, seed: int = 0) -> Contrast | None:
        """n clean prompts, n corrupted ones that differ where the behaviour lives, and a metric (None: no default)."""
        return None

    def corrupted_prompt(self, ids: Sequence[int]) -> list[int] | None:
        """A minimal pair for the prompt `ids`: the same prompt with the positions the task's own corruption
        changes (`circuit_contrast`) rewritten as in the first corrupted prompt that differs from `ids` at each.

        None when the task has no contrast, or its prompts are shorter than `ids`.
        """
        contrast = self.circuit_contrast(64)
        n = len(ids)
        if contrast is None or contrast.clean.shape[1] < n:
            return None
        clean, corrupted, mine = contrast.clean[:, :n], contrast.corrupted[:, :n], torch.tensor(list(ids))
        for row in range(len(clean)):
            changed = clean[row] != corrupted[row]
            if changed.any() and (corrupted[row][changed] != mine[changed]).all():
                return torch.where(changed, corrupted[row], mine).tolist()
        return None

    def scored_positions(self, ids: Sequence[int]) -> list[int] | None:
        """The positions t of the prompt `ids` whose next token ids[t + 1] the task's loss scores (None: all)."""
        return None

    def milestone(self) -> str | None:
        """An evaluate() key that turns 1.0 when the task's published result is reached (or None)."""
        return None

    def milestone_meaning(self) -> str | None:
        """What reaching the milestone means, in words, for the training log (None: no milestone)."""
        return None

    def training_notes(self) -> list[str]:
        """Lines the training log prints first, on what its numbers can and cannot reach."""
        return []

    def default_model_config(self) -> TransformerConfig:
        """The model a plain `python -m blocks.train --task NAME` trains."""
        return TransformerConfig(d_vocab=self.tokenizer.d_vocab, n_ctx=self.seq_len)

    def default_train_config(self) -> dict[str, Any]:
        """Trainer settings (steps, batch size, lr, ...) that reach the task's published result."""
        return {}
