"""Grokking's progress measures (Nanda et al. 2023) for a modular-addition model `a b = c`.

- Restricted loss: the loss when the logits keep only their components along
  cos(w_k (a + b - c)) and sin(w_k (a + b - c)) for the key frequencies k (w_k = 2 pi k / p),
  each projected over the whole (a, b, c) grid. It falls once the Fourier circuit works,
  before the test loss does.
- Excluded loss: the loss on the training pairs with those components removed. It rises while
  the circuit forms (memorisation is being replaced) and falls during clean-up.
- The Gini coefficient of the embedding's norm per frequency: 0 when every frequency is used
  equally, near 1 when a few carry everything (sparsity in the Fourier basis).
- The total weight norm (sum of squares of every parameter), which weight decay pulls down
  in the clean-up phase.
- The share of the MLP's variance in the key frequencies, against the share that random sets
  of as many frequencies give (the chance baseline).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer
from probes.fourier import embedding_frequency_norms, explained_by

PAPER_PHASES = {"memorisation": (0, 1_400), "circuit formation": (1_400, 9_400), "clean-up": (9_400, 13_300)}
"""Nanda et al. 2023, p = 113, full batch: the phase boundaries in epochs (their figure 7)."""


def all_logits(model: Transformer, p: int) -> Float[Tensor, "p p p"]:
    """The logits over the p answer tokens after `a b =` for every pair: [a, b, c]."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], 1)
    with torch.no_grad():
        logits = model(tokens.to(model.W_E.device))[:, -1, :p]
    return logits.float().cpu().view(p, p, p)


def key_directions(p: int, frequencies: Sequence[int]) -> Float[Tensor, "n p p p"]:
    """Unit-norm cos and sin of w_k (a + b - c) over the grid, two per frequency."""
    if not frequencies or any(not 1 <= k <= p // 2 for k in frequencies):
        raise ValueError(f"key frequencies must lie in [1, {p // 2}], got {list(frequencies)}")
    x = torch.arange(p, dtype=torch.float64)
    phase = x[:, None, None] + x[None, :, None] - x[None, None, :]
    out = []
    for k in frequencies:
        w = 2 * math.pi * k / p
        out += [torch.cos(w * phase), torch.sin(w * phase)]
    stacked = torch.stack(out)
    return (stacked / stacked.flatten(1).norm(dim=1)[:, None, None, None]).float()


def _loss(logits: Float[Tensor, "p p p"], pairs: Int[Tensor, " n"]) -> float:
    p = logits.shape[0]
    flat = logits.reshape(p * p, p)[pairs]
    answers = (pairs // p + pairs % p) % p
    return float(torch.nn.functional.cross_entropy(flat.double(), answers))


def restricted_and_excluded_loss(
    logits: Float[Tensor, "p p p"], frequencies: Sequence[int], pairs: Int[Tensor, " n"]
) -> tuple[float, float]:
    """(loss of the key-frequency part of the logits, loss of the rest), on the pairs `pairs` (row a * p + b)."""
    p = logits.shape[0]
    directions = key_directions(p, frequencies)
    centred = logits - logits.mean(-1, keepdim=True)  # a constant per (a, b) does not change the softmax
    coefficients = (directions * centred).flatten(1).sum(1)
    kept = (coefficients[:, None, None, None] * directions).sum(0)
    return _loss(kept, pairs), _loss(centred - kept, pairs)


def gini(values: Float[Tensor, " n"]) -> float:
    """The Gini coefficient of non-negative values: 0 when all are equal, (n - 1) / n when one holds everything."""
    v = values.double().flatten().sort().values
    if (v < 0).any() or v.sum() == 0:
        raise ValueError("the Gini coefficient needs non-negative values that are not all zero")
    n = len(v)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float((2 * (ranks * v).sum() / (n * v.sum())) - (n + 1) / n)


def weight_norm(model: Transformer) -> float:
    """The sum of squares of every parameter."""
    return float(sum(p.detach().double().pow(2).sum() for p in model.parameters()))


def progress_measures(
    model: Transformer, p: int, frequencies: Sequence[int], train: Int[Tensor, " n"], test: Int[Tensor, " m"]
) -> dict[str, float]:
    """Train and test loss, restricted loss (on all pairs), excluded loss (on the training pairs), Gini, weight norm."""
    logits = all_logits(model, p)
    restricted, _ = restricted_and_excluded_loss(logits, frequencies, torch.arange(p * p))
    _, excluded = restricted_and_excluded_loss(logits, frequencies, train)
    return {
        "train_loss": _loss(logits, train),
        "test_loss": _loss(logits, test),
        "restricted_loss": restricted,
        "excluded_loss": excluded,
        "fourier_gini": gini(embedding_frequency_norms(model.W_E[:p])),
        "weight_norm": weight_norm(model),
    }


def chance_share(
    acts: Float[Tensor, "p p d_mlp"], n_frequencies: int, samples: int = 20, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) of the MLP variance share that `n_frequencies` frequencies drawn at random explain."""
    p = acts.shape[0]
    if not 1 <= n_frequencies <= p // 2:
        raise ValueError(f"n_frequencies must lie in [1, {p // 2}], got {n_frequencies}")
    rng = random.Random(seed)
    shares = torch.tensor([explained_by(acts, rng.sample(range(1, p // 2 + 1), n_frequencies)) for _ in range(samples)])
    return float(shares.mean()), float(shares.std())
