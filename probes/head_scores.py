"""Head scores (ARENA / TransformerLens conventions) on [BOS] + r + r batches, and their heatmaps.

On a batch of [BOS] + r + r, r uniform random tokens of length n, with `pattern[q, k]`:
- previous-token: mean of pattern.diagonal(-1);
- current-token: mean of pattern.diagonal(0);
- first-token: mean of pattern[:, 0];
- induction: mean of pattern.diagonal(1 - n) over the second copy (a query at the i-th token
  of the second copy attends to the token after the i-th of the first);
- duplicate-token: mean of pattern.diagonal(-n) over the second copy.
A head "is" one of these above THRESHOLD (0.4). Tasks report them at every evaluation
(`blocks.tasks.Task.head_scores`), so the app can show them over training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer

SCORE_NAMES = ("previous_token", "current_token", "first_token", "induction", "duplicate_token")


def repeated_tokens(n: int, batch: int, low: int, high: int, bos: int, seed: int = 0) -> Int[Tensor, "batch pos"]:
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


def pattern_scores(
    pattern: Float[Tensor, "batch n_heads query_pos key_pos"], n: int
) -> dict[str, Float[Tensor, " n_heads"]]:
    """Each head's scores from its pattern on [BOS] + r + r (length 2n + 1), averaged over the batch.

    previous/current/first token average over every query; induction and duplicate token over
    the queries of the second copy (positions n+1 .. 2n).
    """
    pos = pattern.shape[-1]
    if pos != 2 * n + 1 or pattern.shape[-2] != pos:
        raise ValueError(
            f"pattern covers {tuple(pattern.shape[-2:])} positions; [BOS] + r + r with n={n} needs {2 * n + 1}"
        )
    p = pattern.mean(0)  # n_heads query_pos key_pos
    return {
        "previous_token": p.diagonal(-1, dim1=-2, dim2=-1).mean(-1),
        "current_token": p.diagonal(0, dim1=-2, dim2=-1).mean(-1),
        "first_token": p[:, :, 0].mean(-1),
        # query at 1+n+i (i-th of copy two) -> key 2+i (token after the i-th of copy one); the
        # diagonal's first two entries are queries in copy one, which the definition leaves out (docs/reference.md)
        "induction": p.diagonal(1 - n, dim1=-2, dim2=-1)[:, 2:].mean(-1),
        # query at 1+n+i -> key 1+i (the same token in copy one); the first entry is a copy-one query
        "duplicate_token": p.diagonal(-n, dim1=-2, dim2=-1)[:, 1:].mean(-1),
    }


@torch.no_grad()
def head_scores(
    model: Transformer, tokens: Int[Tensor, "batch pos"], n: int
) -> dict[str, Float[Tensor, "layer n_heads"]]:
    """Every head's five scores on `tokens` ([BOS] + r + r, see `repeated_tokens`), as [layer, n_heads] per score."""
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(tokens.to(device), names=names, stop_early=True)
    per_layer = [pattern_scores(cache[name], n) for name in names]
    return {s: torch.stack([layer[s] for layer in per_layer]).cpu() for s in SCORE_NAMES}


THRESHOLD = 0.4  # a head "is" a previous-token/induction/... head above this score (docs/reference.md)


def top_heads(scores: Float[Tensor, "layer n_heads"], k: int = 1) -> list[tuple[int, int, float]]:
    """The k highest-scoring heads as (layer, head, score), best first."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    flat = scores.flatten()
    values, idx = flat.topk(min(k, flat.numel()))
    n_heads = scores.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values, idx)]


def head_scores_figure(scores: Float[Tensor, "layer n_heads"], title: str = "head score") -> go.Figure:
    """A layer x head heatmap of one score, on a fixed 0..1 colour scale so runs compare by eye."""
    z = scores.detach().cpu().tolist()
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"H{h}" for h in range(scores.shape[1])],
            y=[f"L{l}" for l in range(scores.shape[0])],
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            text=[[f"{v:.2f}" for v in row] for row in z],
            texttemplate="%{text}",
            hovertemplate="layer %{y} head %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="head",
        yaxis_title="layer",
        yaxis_autorange="reversed",
        height=160 + 50 * scores.shape[0],  # a one-layer model gets a row of cells, not a collapsed strip
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def head_scores_over_steps_figure(
    steps: Sequence[int], per_step: Sequence[Mapping[str, Sequence[Sequence[float]]]], score: str = "induction"
) -> go.Figure:
    """One score of every head (rows L0H0, L0H1, ...) across training steps (columns).

    `per_step[i]` is the "head_scores" entry of a metrics.jsonl line: {score: [[float] * n_heads] * n_layers}.
    """
    if len(steps) != len(per_step):
        raise ValueError(f"got {len(steps)} steps but {len(per_step)} score dicts; give one dict per step")
    if not per_step:
        raise ValueError("no head scores to draw; the run's metrics have no 'head_scores' entries")
    if score not in per_step[0]:
        raise KeyError(f"no score {score!r}; the scores logged are {sorted(per_step[0])}")
    grid = torch.tensor([d[score] for d in per_step], dtype=torch.float32)  # step layer n_heads
    n_layers, n_heads = grid.shape[1], grid.shape[2]
    z = grid.flatten(1).T.tolist()  # (layer n_heads) step
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(s) for s in steps],
            y=[f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)],
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            hovertemplate="step %{x}, %{y}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{score} score over training", xaxis_title="step", yaxis_title="head", yaxis_autorange="reversed"
    )
    return fig


# `python -m probes.head_scores` runs this module's probe script, probes/scripts/head_scores.py
if __name__ == "__main__":
    from probes.scripts.head_scores import main

    main()
