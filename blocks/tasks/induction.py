"""Induction: random tokens with a segment repeated at a random offset, so only copying by content helps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from torch import Tensor

from blocks.config import TransformerConfig
from blocks.tasks.base import Task, Tokenizer
from blocks.tasks.common import generated_split, masked_mean, next_token_nll
from probes.circuit.contrast import Contrast
from probes.head_scores import head_scores, repeated_tokens

BOS = 0


class InductionTask(Task):
    """Sequences `[BOS] x ... r ... r ...`: r (length drawn from [min_repeat, max_repeat]) appears twice.

    Both copies start at random positions, so a head that attends back by a fixed distance
    cannot predict the repeat (a model trained on fixed `[BOS] + r + r` learns exactly that
    shortcut); only a previous-token head feeding an induction head can. Evaluation runs on
    `[BOS] + r + r` with r of length `eval_n`: 2 * eval_n + 1 tokens, a sequence length training never uses.

    `loss_on="all"` trains every next-token prediction (random positions teach the model to
    stay uniform, so the first copy's loss sits at ln(n_symbols)); `"repeats"` only the
    predictable ones inside the second copy.
    """

    name = "induction"
    prompt_format = '"BOS" then space-separated symbols 0..n_symbols-1; a run of them repeated later (e.g. BOS 4 7 2 9 4 7 2 9) is what induction heads complete: after the second 7 the answer is 2.'

    def __init__(
        self,
        seed: int = 0,
        n_symbols: int = 48,
        seq_len: int = 32,
        min_repeat: int = 4,
        max_repeat: int = 15,
        n_train: int = 40_000,
        n_test: int = 512,
        eval_n: int = 12,
        loss_on: str = "all",
        layout: str = "two_copies",
        max_gap: int = 0,
    ) -> None:
        super().__init__(seed)
        if n_symbols < 2:
            raise ValueError(f"n_symbols must be at least 2, got {n_symbols}")
        if not 2 <= min_repeat <= max_repeat:
            raise ValueError(
                f"need 2 <= min_repeat <= max_repeat, got min_repeat={min_repeat}, max_repeat={max_repeat}"
            )
        if 2 * max_repeat + 1 > seq_len:
            raise ValueError(
                f"two copies of max_repeat={max_repeat} plus BOS need seq_len >= {2 * max_repeat + 1}, got {seq_len}"
            )
        if 2 * eval_n + 1 > seq_len or eval_n < 4:
            raise ValueError(
                f"eval_n must lie in [4, {(seq_len - 1) // 2}] so [BOS] + r + r fits seq_len={seq_len}, got {eval_n}"
            )
        if loss_on not in ("all", "repeats"):
            raise ValueError(f"loss_on must be 'all' or 'repeats', got {loss_on!r}")
        for name, n in (("n_train", n_train), ("n_test", n_test)):
            if n <= 0:
                raise ValueError(f"{name} must be positive, got {n}")
        self.n_symbols, self._seq_len = n_symbols, seq_len
        self.min_repeat, self.max_repeat = min_repeat, max_repeat
        self.n_train, self.n_test, self.eval_n, self.loss_on = n_train, n_test, eval_n, loss_on
        if layout not in ("periodic", "two_copies"):
            raise ValueError(f"layout must be 'periodic' or 'two_copies', got {layout!r}")
        self.layout = layout
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        self.max_gap = max_gap
        self._tokenizer = Tokenizer(["BOS"] + [str(i) for i in range(n_symbols)], separator=" ")

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def options(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "n_symbols": self.n_symbols,
            "seq_len": self._seq_len,
            "min_repeat": self.min_repeat,
            "max_repeat": self.max_repeat,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "eval_n": self.eval_n,
            "loss_on": self.loss_on,
            "layout": self.layout,
            "max_gap": self.max_gap,
        }

    def generate(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """`n` sequences and their loss masks, drawn from `seed` alone."""
        gen = torch.Generator().manual_seed(seed)
        s = self._seq_len
        tokens = torch.randint(1, self.n_symbols + 1, (n, s), generator=gen)
        tokens[:, 0] = BOS
        length = torch.randint(self.min_repeat, self.max_repeat + 1, (n, 1), generator=gen)
        if self.layout == "periodic":
            # a random prefix, then r repeated with period L to the end: the copy distance varies per row
            first = 1 + (torch.rand(n, 1, generator=gen) * length).long()
            pos = torch.arange(s)[None]
            later = pos >= first + length
            src = torch.where(later, first + (pos - first) % length, pos)
            tokens = tokens.gather(1, src)
            repeats = (pos >= first + length) & (pos < s - 1)
        else:
            # first copy starts in [1, s - 2L], second in [first + L, s - L]: both offsets vary
            first = 1 + (torch.rand(n, 1, generator=gen) * (s - 2 * length)).long()
            room = (s - length - first - length + 1).clamp(max=self.max_gap + 1)
            second = first + length + (torch.rand(n, 1, generator=gen) * room).long()
            pos = torch.arange(s)[None]
            in_second = (pos >= second) & (pos < second + length)
            tokens = tokens.gather(1, torch.where(in_second, pos - (second - first), pos))
            # position t predicts t+1: the repeat is predictable from its second token on
            repeats = (pos >= second) & (pos < second + length - 1)
        repeats = repeats.long()
        mask = repeats if self.loss_on == "repeats" else torch.ones_like(tokens)
        mask[:, -1] = 0  # the last position has nothing to predict
        return tokens, mask

    def dataset(self, split: str) -> datasets.Dataset:
        return generated_split(self.generate, split, self.n_train, self.n_test, self.seed)

    def example(self, seed: int) -> list[int]:
        return repeated_tokens(self.eval_n, 1, 1, self.n_symbols + 1, BOS, seed)[0].tolist()

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        n = self.eval_n
        device = next(model.parameters()).device
        tokens = repeated_tokens(n, 64, 1, self.n_symbols + 1, BOS, seed=10_007 + self.seed).to(device)
        nll = next_token_nll(model(tokens), tokens).cpu()  # [batch, 2n]: position t predicts t+1
        pos = torch.arange(2 * n)[None].expand_as(nll)
        first_half = (pos >= 1) & (pos < n)  # predicts tokens 2..n of the first copy
        repeated = pos >= n + 1  # predicts copy two from its second token on
        scores = head_scores(model, tokens, n)
        out = {
            "loss_first_half": masked_mean(nll, first_half),
            "loss_repeated_half": masked_mean(nll, repeated),
            "ln_vocab": math.log(self.n_symbols),
            "prev_token_score_l0": float(scores["previous_token"][0].max()),
            "induction_score_max": float(scores["induction"][1:].max()) if scores["induction"].shape[0] > 1 else 0.0,
        }
        out["induction_formed"] = float(
            out["prev_token_score_l0"] > 0.4
            and out["induction_score_max"] > 0.4
            and out["loss_repeated_half"] < 1.0
            and abs(out["loss_first_half"] - out["ln_vocab"]) < 0.5
        )
        return out

    def circuit_contrast(self, n: int = 64, seed: int = 0) -> Contrast:
        """[BOS] + r + r against [BOS] + r' + r: the same second copy, but nothing earlier to copy it from.

        The metric is the mean log-probability of each next token of the second copy (from its
        second token on), which only induction can predict.
        """
        k = self.eval_n
        clean = repeated_tokens(k, n, 1, self.n_symbols + 1, BOS, seed=20_011 + seed)
        other = repeated_tokens(k, n, 1, self.n_symbols + 1, BOS, seed=30_011 + seed)
        corrupted = torch.cat([clean[:, :1], other[:, 1 : k + 1], clean[:, k + 1 :]], dim=1)
        targets = torch.cat([clean[:, 1:], clean[:, :1]], dim=1)  # position t predicts t + 1 (the last: masked)
        mask = torch.zeros_like(clean, dtype=torch.bool)
        mask[:, k + 1 : 2 * k] = True
        return Contrast.of_answers(
            clean, corrupted, targets, None, mask, "log_prob", "log p(next token) on the repeat: r + r against r' + r"
        )

    def scored_positions(self, ids: Sequence[int]) -> list[int]:
        """Where the next token repeats what followed an earlier copy of the current one: only those are
        predictable (the rest of a sequence is random, so its loss stays near log n_symbols whatever the model)."""
        return [
            t for t in range(1, len(ids) - 1) if any(ids[j] == ids[t] and ids[j + 1] == ids[t + 1] for j in range(t))
        ]

    def milestone(self) -> str | None:
        return "induction_formed"

    def milestone_meaning(self) -> str:
        return (
            "induction heads formed: a layer-0 head attends to the previous token and a later head to the token "
            "after the earlier copy (both scores above 0.4), the repeated half's loss is under 1 nat, and the "
            f"random half's stays within 0.5 of ln {self.n_symbols}"
        )

    def training_notes(self) -> list[str]:
        if self.loss_on != "all":
            return []
        tokens, _ = self.generate(64, seed=self.seed)
        rows = tokens.tolist()
        scored = sum(len(self.scored_positions(r)) for r in rows) / sum(len(r) - 1 for r in rows)
        floor = (1 - scored) * math.log(self.n_symbols)
        return [
            f"note: the train loss cannot go much below {floor:.2f} nats: about {1 - scored:.0%} of the predicted "
            f"tokens are random (ln {self.n_symbols} = {math.log(self.n_symbols):.2f} nats each); only the repeat "
            "can be learnt, so watch eval/loss_repeated_half fall, not the train loss"
        ]

    def default_model_config(self) -> TransformerConfig:
        return TransformerConfig(
            n_layers=2,
            d_model=64,
            n_heads=4,
            d_vocab=self._tokenizer.d_vocab,
            n_ctx=self._seq_len,
            attn_only=True,
            normalization="LN",
            positional="shortformer",
        )

    def default_train_config(self) -> dict[str, Any]:
        # tuned on a 2-core CPU: heads form in ~700 steps (~30 s); the rest sharpens them
        return {
            "steps": 1500,
            "batch_size": 64,
            "lr": 5e-3,
            "warmup_steps": 30,
            "schedule": "cosine",
            "weight_decay": 0.01,
            "eval_every": 50,
        }
