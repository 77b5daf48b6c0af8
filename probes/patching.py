"""Activation patching: run the corrupted prompt with clean activations patched in, and score it.

Every sweep is batched: the corrupted prompt is copied once per cell (layer x position, head,
head x position, ...), each copy gets its own cell patched, and all copies go through one
forward pass (in chunks of `max_copies`), instead of one forward per cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer
from scratchnn import HookPoint

# metric(logits of one copy of the corrupted batch) -> 0-dim tensor (e.g. a logit difference)
Metric = Callable[[Tensor], Tensor]
LayerPosKind = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
LAYER_POS_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_ACTIVATIONS = ("z", "q", "k", "v")


@dataclass(frozen=True)
class PatchingResult:
    """Metric of the corrupted run with each cell patched from the clean run.

    `values` has one axis per name in `axes` (e.g. ("layer", "pos")); `clean` and `corrupted`
    are the unpatched metrics, so `normalized()` is 1 where a cell restores the clean metric.
    """

    values: Float[Tensor, ...]
    axes: tuple[str, ...]
    clean: float
    corrupted: float
    title: str

    def normalized(self) -> Float[Tensor, ...]:
        """(patched - corrupted) / (clean - corrupted): 0 = no effect, 1 = fully restored."""
        gap = self.clean - self.corrupted
        if gap == 0:
            raise ValueError("clean and corrupted metrics are equal, so there is nothing to normalise by")
        return (self.values - self.corrupted) / gap


def _metric_value(metric: Metric, logits: Tensor) -> Tensor:
    out = metric(logits)
    if not isinstance(out, Tensor) or out.dim() != 0:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the metric must return a 0-dim tensor (one number per run, e.g. logits[:, -1, a].mean() - ...), got {got}"
        )
    return out


def _check_prompts(model: Transformer, clean: Tensor, corrupted: Tensor) -> None:
    model.check_tokens(clean)
    model.check_tokens(corrupted)
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"clean tokens have shape {tuple(clean.shape)} but corrupted {tuple(corrupted.shape)}; patching "
            "compares position by position, so give prompts of the same length (and batch size)"
        )


@torch.no_grad()
def patch_activations(
    model: Transformer,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch_c pos_c"],  # checked against clean with a clear error
    metric: Metric,
    names: Sequence[str],
) -> float:
    """The metric of the corrupted run with the named activations replaced entirely by their clean values."""
    _check_prompts(model, clean, corrupted)
    names = model.resolve(list(names))  # unknown names raise here, with suggestions
    _, cache = model.run_with_cache(clean, names=names)

    def put(act: Tensor, hook: HookPoint) -> Tensor:
        return cache[hook.name]

    with model.hooks(fwd=[(n, put) for n in names]):
        return float(_metric_value(metric, model(corrupted)))


@dataclass(frozen=True)
class _Cell:
    name: str
    mask: Tensor  # bool, broadcastable to the activation without its batch axis


@torch.no_grad()
def _sweep(
    model: Transformer,
    clean: Tensor,
    corrupted: Tensor,
    metric: Metric,
    cells: list[_Cell],
    max_copies: int,
) -> tuple[Tensor, float, float]:
    _check_prompts(model, clean, corrupted)
    names = sorted({c.name for c in cells})
    clean_logits, cache = model.run_with_cache(clean, names=names)
    clean_value = float(_metric_value(metric, clean_logits))
    corrupted_value = float(_metric_value(metric, model(corrupted)))
    batch = corrupted.shape[0]
    copies = max(1, max_copies // batch)
    out = torch.empty(len(cells))
    for start in range(0, len(cells), copies):
        chunk = cells[start : start + copies]
        n = len(chunk)
        masks: dict[str, Tensor] = {}
        for name in {c.name for c in chunk}:
            act_shape = cache[name].shape[1:]
            m = torch.zeros(n, *act_shape, dtype=torch.bool, device=corrupted.device)
            for i, c in enumerate(chunk):
                if c.name == name:
                    m[i] = c.mask.to(m.device).expand(act_shape)
            masks[name] = m

        def patch(act: Tensor, hook: HookPoint) -> Tensor:
            m = masks[hook.name][:, None]  # copy 1 ...
            stacked = act.view(n, batch, *act.shape[1:])
            return torch.where(m, cache[hook.name][None], stacked).view(act.shape)

        tokens = corrupted.repeat(n, 1)  # copy-major: row c * batch + b
        with model.hooks(fwd=[(name, patch) for name in masks]):
            logits = model(tokens).view(n, batch, *corrupted.shape[1:], -1)
        for i in range(n):
            out[start + i] = _metric_value(metric, logits[i])
    return out, clean_value, corrupted_value


def _layer_name(model: Transformer, layer: int, kind: str) -> str:
    if kind not in LAYER_POS_KINDS:
        raise ValueError(f"unknown activation kind {kind!r}; use one of {list(LAYER_POS_KINDS)}")
    if model.cfg.attn_only and kind in ("resid_mid", "mlp_out"):
        raise ValueError(f"this model is attention-only: it has no {kind}; use resid_pre, resid_post or attn_out")
    return f"blocks.{layer}.hook_{kind}"


def _one_hot(shape: tuple[int, ...], index: tuple[int, ...]) -> Tensor:
    """A boolean mask of `shape` (broadcast against one example's activation) set at `index` only."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[index] = True
    return mask


def patch_by_layer_pos(
    model: Transformer,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch_c pos_c"],  # checked against clean with a clear error
    metric: Metric,
    kind: str = "resid_pre",  # one of LAYER_POS_KINDS
    max_copies: int = 1024,
) -> PatchingResult:
    """Patch one activation (residual stream, attention output or MLP output) at one layer and position per cell."""
    L, pos = model.cfg.n_layers, clean.shape[1]
    cells = []
    for layer in range(L):
        name = _layer_name(model, layer, kind)
        cells += [_Cell(name, _one_hot((pos, 1), (p,))) for p in range(pos)]
    values, c, k = _sweep(model, clean, corrupted, metric, cells, max_copies)
    return PatchingResult(values.view(L, pos), ("layer", "pos"), c, k, f"patching {kind}")


def patch_heads(
    model: Transformer,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch_c pos_c"],  # checked against clean with a clear error
    metric: Metric,
    max_copies: int = 1024,
) -> PatchingResult:
    """Patch each head's output (`hook_z`) at every position at once: one cell per (layer, head)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    cells = []
    for layer in range(L):
        cells += [_Cell(f"blocks.{layer}.attn.hook_z", _one_hot((1, H, 1), (0, h))) for h in range(H)]
    values, c, k = _sweep(model, clean, corrupted, metric, cells, max_copies)
    return PatchingResult(values.view(L, H), ("layer", "head"), c, k, "patching head outputs (all positions)")


def patch_heads_by_pos(
    model: Transformer,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch_c pos_c"],  # checked against clean with a clear error
    metric: Metric,
    max_copies: int = 1024,
    activation: str = "z",  # one of HEAD_ACTIVATIONS
) -> PatchingResult:
    """Patch one head's `activation` (its output z, or its queries, keys or values) at one position per cell: [layer, head, pos]."""
    if activation not in HEAD_ACTIVATIONS:
        raise ValueError(f"unknown head activation {activation!r}; use one of {list(HEAD_ACTIVATIONS)}")
    L, H, pos = model.cfg.n_layers, model.cfg.n_heads, clean.shape[1]
    cells = []
    for layer in range(L):
        name = f"blocks.{layer}.attn.hook_{activation}"
        cells += [_Cell(name, _one_hot((pos, H, 1), (p, h))) for h in range(H) for p in range(pos)]
    values, c, k = _sweep(model, clean, corrupted, metric, cells, max_copies)
    what = {"z": "head outputs", "q": "queries", "k": "keys", "v": "values"}[activation]
    return PatchingResult(values.view(L, H, pos), ("layer", "head", "pos"), c, k, f"patching {what} by position")


def patch_head_patterns(
    model: Transformer,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch_c pos_c"],  # checked against clean with a clear error
    metric: Metric,
    max_copies: int = 1024,
    by_dest_pos: bool = False,
) -> PatchingResult:
    """Patch each head's attention pattern (`hook_pattern`): whole, one cell per (layer, head), or with
    `by_dest_pos` one destination (query) row per cell: values [layer, head, dest_pos]."""
    L, H, pos = model.cfg.n_layers, model.cfg.n_heads, clean.shape[1]
    cells = []
    for layer in range(L):
        name = f"blocks.{layer}.attn.hook_pattern"
        if by_dest_pos:
            cells += [_Cell(name, _one_hot((H, pos, 1), (h, p))) for h in range(H) for p in range(pos)]
        else:
            cells += [_Cell(name, _one_hot((H, 1, 1), (h,))) for h in range(H)]
    values, c, k = _sweep(model, clean, corrupted, metric, cells, max_copies)
    if by_dest_pos:
        return PatchingResult(
            values.view(L, H, pos), ("layer", "head", "dest_pos"), c, k, "patching head patterns by destination"
        )
    return PatchingResult(values.view(L, H), ("layer", "head"), c, k, "patching head patterns")


def logit_diff_metric(answer: int, wrong: int, pos: int = -1) -> Metric:
    """A metric: mean over the batch of logit[answer] - logit[wrong] at position `pos`."""

    def metric(logits: Tensor) -> Tensor:
        return (logits[:, pos, answer] - logits[:, pos, wrong]).mean()

    return metric


def answer_prob_metric(answer: int, pos: int = -1) -> Metric:
    """A metric: mean over the batch of p(answer) at position `pos` (softmax over the vocabulary)."""

    def metric(logits: Tensor) -> Tensor:
        return logits[:, pos].softmax(-1)[:, answer].mean()

    return metric


def patching_figure(
    result: PatchingResult, token_labels: Sequence[str] | None = None, normalize: bool = True
) -> go.Figure:
    """Heatmap of a patching result (normalised to 0 = corrupted, 1 = clean by default).

    [layer, head, pos] results are drawn as rows L0H0, L0H1, ... against positions.
    """
    values = result.normalized() if normalize else result.values
    axes = result.axes
    if values.dim() == 3:  # layer head pos -> (layer head) pos
        y = [f"L{l}H{h}" for l in range(values.shape[0]) for h in range(values.shape[1])]
        values = values.flatten(0, 1)
        xaxis = "pos"
    else:
        prefix = "L" if axes[0] == "layer" else ""
        y = [f"{prefix}{i}" for i in range(values.shape[0])]
        xaxis = axes[1]
    if xaxis == "pos":
        labels = list(token_labels) if token_labels is not None else [str(i) for i in range(values.shape[1])]
        if len(labels) != values.shape[1]:
            raise ValueError(f"got {len(labels)} token labels for {values.shape[1]} positions")
        x = [f"{i}: {t}" for i, t in enumerate(labels)]
    else:
        x = [f"H{h}" for h in range(values.shape[1])]
    z = values.detach().cpu().tolist()
    raw = result.values.flatten(0, 1) if result.values.dim() == 3 else result.values
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=y,
            colorscale="RdBu",
            zmid=0.0,
            text=[[f"{v:.2f}" for v in row] for row in z],
            texttemplate="%{text}",  # every cell carries its value
            customdata=raw.detach().cpu().tolist(),
            hovertemplate="%{y}, %{x}: %{z:.3f} (metric %{customdata:.4f})<extra></extra>",
            colorbar=dict(title="restored" if normalize else "metric"),
        )
    )
    fig.update_layout(
        title=result.title + (" (normalised: 1 = clean)" if normalize else ""),
        xaxis_title="position" if xaxis == "pos" else xaxis,
        yaxis_title="layer" if values.dim() == 2 and axes[0] == "layer" else "head",
        yaxis_autorange="reversed",
        height=max(320, 28 * len(y) + 160),
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


# `python -m probes.patching` runs this module's probe script, probes/scripts/patching.py
if __name__ == "__main__":
    from probes.scripts.patching import main

    main()
