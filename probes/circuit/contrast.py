"""What a circuit is found for: clean and corrupted prompts of the same shape, and a metric of the logits."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from blocks.transformer import Transformer
from probes.patching import Metric

MetricKind = Literal["logit_diff", "log_prob", "prob"]
METRIC_KINDS = ("logit_diff", "log_prob", "prob")


@dataclass(frozen=True)
class Contrast:
    """Clean and corrupted prompts, position by position, and the metric that tells them apart.

    `metric(logits)` takes the logits of a batch shaped like `clean` and returns one number
    (a 0-dim tensor, averaged over the batch), higher where the behaviour is present, e.g. a
    logit difference between the clean answer and the corrupted one.
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch_c pos_c"]  # checked against clean by check(), with a clear error
    metric: Metric
    description: str = ""
    # what the metric reads, when it reads tokens (`answers`): the clean prompt's answer after each
    # position, the corrupted prompt's (`wrong`, None when it has no other answer) and where (`mask`)
    answers: Int[Tensor, "batch pos"] | None = None
    wrong: Int[Tensor, "batch pos"] | None = None
    mask: Bool[Tensor, "batch pos"] | None = None

    @classmethod
    def of_answers(
        cls,
        clean: Int[Tensor, "batch pos"],
        corrupted: Int[Tensor, "batch pos"],
        answers: Int[Tensor, "batch pos"],
        wrong: Int[Tensor, "batch pos"] | None,
        mask: Bool[Tensor, "batch pos"],
        kind: MetricKind = "logit_diff",
        description: str = "",
    ) -> Contrast:
        """A contrast whose metric reads `answers` (against `wrong`) at the positions in `mask`."""
        return cls(clean, corrupted, token_metric(kind, answers, wrong, mask), description, answers, wrong, mask)

    def with_metric(self, kind: MetricKind) -> Contrast:
        """The same prompts and answers under another metric: logit_diff, log_prob or prob (of the answer)."""
        if self.answers is None or self.mask is None:
            raise ValueError(
                "this contrast's metric is a custom function, so it has no answers to change the metric on"
            )
        described = f"{kind} of the answer" + (" against the corrupted answer" if kind == "logit_diff" else "")
        return replace(self, metric=token_metric(kind, self.answers, self.wrong, self.mask), description=described)

    def check(self, model: Transformer) -> None:
        """Raise a clear error unless both prompt sets suit the model and each other."""
        for name, tokens in (("clean", self.clean), ("corrupted", self.corrupted)):
            try:
                model.check_tokens(tokens)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{name} prompts: {err}") from None
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(
                f"clean prompts have shape {tuple(self.clean.shape)} but corrupted {tuple(self.corrupted.shape)}; "
                "an edge is patched position by position, so give the same number of prompts of the same length"
            )

    def to(self, device: torch.device | str) -> Contrast:
        """The same contrast with its prompts on `device` (the metric moves what it reads itself)."""
        return replace(self, clean=self.clean.to(device), corrupted=self.corrupted.to(device))

    def value(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        """The metric of one batch, checked to be a single number."""
        out = self.metric(logits)
        if not isinstance(out, Tensor) or out.dim() != 0:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the metric must return a 0-dim tensor (the mean over the batch), got {got}")
        return out

    def values(self, logits: Float[Tensor, "rows pos d_vocab"]) -> Float[Tensor, " copies"]:
        """The metric of each copy of the batch in logits that hold several copies, copy-major."""
        batch = self.clean.shape[0]
        return torch.stack([self.value(chunk) for chunk in logits.split(batch)])


def token_metric(
    kind: MetricKind,
    answers: Int[Tensor, "batch pos"],
    wrong: Int[Tensor, "batch pos"] | None,
    mask: Bool[Tensor, "batch pos"],
) -> Metric:
    """Mean over the masked positions of logit[answer] - logit[wrong], log p(answer) or p(answer)."""
    if kind not in METRIC_KINDS:
        raise ValueError(f"the metric must be one of {list(METRIC_KINDS)}, got {kind!r}")
    if answers.shape != mask.shape or (wrong is not None and wrong.shape != mask.shape):
        raise ValueError(f"answers, wrong and mask must all have shape {tuple(mask.shape)}")
    if not mask.any():
        raise ValueError("the mask selects no position, so the metric would be empty")
    if kind == "logit_diff" and wrong is None:
        raise ValueError(
            "a logit difference needs the corrupted prompt's own answers, and this contrast has none (its "
            "corrupted prompt has the same answers); use log_prob or prob"
        )
    weight = mask.float() / mask.float().sum()

    def metric(logits: Tensor) -> Tensor:
        pick = lambda ids: logits.gather(-1, ids[..., None].to(logits.device))[..., 0]  # noqa: E731
        if kind == "logit_diff":
            assert wrong is not None
            value = pick(answers) - pick(wrong)
        elif kind == "log_prob":
            value = logits.log_softmax(-1).gather(-1, answers[..., None].to(logits.device))[..., 0]
        else:
            value = logits.softmax(-1).gather(-1, answers[..., None].to(logits.device))[..., 0]
        return (value * weight.to(logits.device)).sum()

    return metric
