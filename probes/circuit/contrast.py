"""What a circuit is found for: clean and corrupted prompts of the same shape, and a metric of the logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer
from probes.patching import Metric


@dataclass(frozen=True)
class Contrast:
    """Clean and corrupted prompts, position by position, and the metric that tells them apart.

    `metric(logits)` takes the logits of a batch shaped like `clean` and returns one number
    (a 0-dim tensor, averaged over the batch), higher where the behaviour is present, e.g. a
    logit difference between the clean answer and the corrupted one.
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    metric: Metric
    description: str = ""

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


def _at(logits: Tensor, pos: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_vocab"]:
    return logits[torch.arange(logits.shape[0], device=logits.device), pos.to(logits.device)]


def logit_difference(
    answer: Int[Tensor, " batch"], wrong: Int[Tensor, " batch"], pos: Int[Tensor, " batch"] | int = -1
) -> Metric:
    """Mean over the batch of logit[answer] - logit[wrong] at position `pos` (one per prompt, or one for all)."""
    answer, wrong = answer.long(), wrong.long()
    where = torch.full_like(answer, pos) if isinstance(pos, int) else pos.long()

    def metric(logits: Tensor) -> Tensor:
        at = _at(logits, where)
        rows = torch.arange(len(answer), device=logits.device)
        return (at[rows, answer.to(logits.device)] - at[rows, wrong.to(logits.device)]).mean()

    return metric


def answer_log_prob(targets: Int[Tensor, "batch pos"], mask: Tensor) -> Metric:
    """Mean log-probability of `targets[b, t]` (the token after position t) over the positions where `mask` is set."""
    if targets.shape != mask.shape:
        raise ValueError(f"targets {tuple(targets.shape)} and mask {tuple(mask.shape)} must have the same shape")
    if not mask.any():
        raise ValueError("the mask selects no position, so the metric would be empty")
    weight = mask.float() / mask.float().sum()

    def metric(logits: Tensor) -> Tensor:
        logp = logits.log_softmax(-1).gather(-1, targets[..., None].to(logits.device))[..., 0]
        return (logp * weight.to(logits.device)).sum()

    return metric


def answer_probability(answer: Int[Tensor, " batch"], pos: Int[Tensor, " batch"] | int = -1) -> Metric:
    """Mean over the batch of p(answer) at position `pos`."""
    answer = answer.long()
    where = torch.full_like(answer, pos) if isinstance(pos, int) else pos.long()

    def metric(logits: Tensor) -> Tensor:
        probs = _at(logits, where).softmax(-1)
        return probs[torch.arange(len(answer), device=logits.device), answer.to(logits.device)].mean()

    return metric
