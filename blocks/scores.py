"""Attention head scores (ARENA / TransformerLens conventions) on [BOS] + r + r batches.

These live in blocks, not probes, because a task's own evaluation (induction) reports them
during training; probes re-exports them beside its figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer

SCORE_NAMES = ("previous_token", "current_token", "first_token", "induction", "duplicate_token")


def repeated_tokens(
    n: int, batch: int, low: int, high: int, bos: int, seed: int = 0
) -> Int[Tensor, "batch pos"]:
    """[BOS] + r + r for `batch` rows of r: n ids drawn uniformly from [low, high)."""
    if n <= 0 or batch <= 0:
        raise ValueError(f"need n > 0 and batch > 0, got n={n}, batch={batch}")
    if high <= low:
        raise ValueError(f"empty token range [{low}, {high})")
    gen = torch.Generator().manual_seed(seed)
    r = torch.randint(low, high, (batch, n), generator=gen)
    return torch.cat([torch.full((batch, 1), bos), r, r], dim=1)


def score_batch(
    vocab: Sequence[str], n_ctx: int, batch: int = 16, seed: int = 0
) -> tuple[Int[Tensor, "batch pos"], int] | None:
    """The [BOS] + r + r batch a model of this vocabulary and context is scored on, and its n.

    r is as long as the context allows, at most 20; None when that is under 4 tokens. BOS is
    the token named "BOS" if the vocabulary has one, else id 0, and r draws from the other ids.
    """
    n = min(20, (n_ctx - 1) // 2)
    if n < 4:
        return None
    bos = list(vocab).index("BOS") if "BOS" in vocab else 0
    low, high = (1, len(vocab)) if bos == 0 else (0, bos)
    return repeated_tokens(n, batch, low, high, bos, seed), n


def pattern_scores(pattern: Float[Tensor, "batch n_heads query_pos key_pos"], n: int) -> dict[str, Float[Tensor, " n_heads"]]:
    """Each head's scores from its pattern on [BOS] + r + r (length 2n + 1), averaged over the batch.

    previous/current/first token average over every query; induction and duplicate token over
    the queries of the second copy (positions n+1 .. 2n).
    """
    pos = pattern.shape[-1]
    if pos != 2 * n + 1 or pattern.shape[-2] != pos:
        raise ValueError(f"pattern covers {tuple(pattern.shape[-2:])} positions; [BOS] + r + r with n={n} needs {2 * n + 1}")
    p = pattern.mean(0)  # n_heads query_pos key_pos
    return {
        "previous_token": p.diagonal(-1, dim1=-2, dim2=-1).mean(-1),
        "current_token": p.diagonal(0, dim1=-2, dim2=-1).mean(-1),
        "first_token": p[:, :, 0].mean(-1),
        # query at 1+n+i (i-th of copy two) -> key 2+i (token after the i-th of copy one); the
        # diagonal's first two entries are queries in copy one, which DESIGN.md leaves out
        "induction": p.diagonal(1 - n, dim1=-2, dim2=-1)[:, 2:].mean(-1),
        # query at 1+n+i -> key 1+i (the same token in copy one); the first entry is a copy-one query
        "duplicate_token": p.diagonal(-n, dim1=-2, dim2=-1)[:, 1:].mean(-1),
    }


@torch.no_grad()
def head_scores(model: Transformer, tokens: Int[Tensor, "batch pos"], n: int) -> dict[str, Float[Tensor, "layer n_heads"]]:
    """Every head's five scores on `tokens` ([BOS] + r + r, see `repeated_tokens`), as [layer, n_heads] per score."""
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(tokens.to(device), names=names, stop_early=True)
    per_layer = [pattern_scores(cache[name], n) for name in names]
    return {s: torch.stack([layer[s] for layer in per_layer]).cpu() for s in SCORE_NAMES}
