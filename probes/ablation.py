"""Ablation of heads, neurons and whole attention / MLP layers, as hooks.

Each factory returns an `Ablation` (a hook name and a hook function) to pass to
`run_ablated` or, as a pair, to `model.hooks(fwd=[...])`. Methods:
- "zero": the activation is set to 0;
- "mean": set to its mean over a reference batch, per position;
- "resample": set to its value on a random row of a reference batch (same position).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer
from scratchnn import HookFn, HookPoint

Method = Literal["zero", "mean", "resample"]
METHODS = ("zero", "mean", "resample")


@dataclass(frozen=True)
class Ablation:
    """A hook that overwrites part of one activation: pass it to `run_ablated` or `model.hooks`.

    `drawn_rows`: for resample ablation, the reference rows the latest forward drew (one tensor of
    [batch] row indices; the seed is fixed, so every forward of a batch size draws the same), so a
    result can be traced to the rows behind it.
    """

    name: str
    fn: HookFn
    description: str
    drawn_rows: list[Tensor] = field(default_factory=list, compare=False)

    def pair(self) -> tuple[str, HookFn]:
        return (self.name, self.fn)


def _check_layer(model: Transformer, layer: int) -> None:
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must lie in [0, {model.cfg.n_layers}), got {layer}")


def _check_indices(what: str, idx: Sequence[int], size: int) -> list[int]:
    idx = list(idx)
    if not idx:
        raise ValueError(f"give at least one {what} to ablate")
    bad = [i for i in idx if not 0 <= i < size]
    if bad:
        raise ValueError(f"{what} index {bad[0]} is out of range; valid {what}s are 0..{size - 1}")
    return idx


@torch.no_grad()
def _reference(model: Transformer, name: str, tokens: Tensor | None, method: str) -> Tensor | None:
    if method not in METHODS:
        raise ValueError(f"unknown ablation method {method!r}; use one of {list(METHODS)}")
    if method == "zero":
        return None
    if tokens is None:
        raise ValueError(f"{method!r} ablation needs reference_tokens (a [batch, pos] batch to take activations from)")
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(tokens.to(device), names=name, stop_early=True)
    return cache[name]


def _ablation(name: str, method: str, ref: Tensor | None, mask: Tensor, seed: int, description: str) -> Ablation:
    drawn: list[Tensor] = []
    return Ablation(name, _ablation_fn(method, ref, mask, seed, drawn), description, drawn)


def _ablation_fn(method: str, ref: Tensor | None, mask: Tensor, seed: int, drawn: list[Tensor]) -> HookFn:
    """A hook that replaces act where `mask` (broadcast over act without its batch axis) is True."""
    mean = None if ref is None else ref.mean(0)

    def fn(act: Tensor, hook: HookPoint) -> Tensor:
        m = mask.to(act.device)
        if m.dim() == act.dim() - 1 and m.shape[0] > 1:  # a per-position mask: cut to this input's length
            m = m[: act.shape[1]]
        if method == "zero":
            return act.masked_fill(m, 0.0)
        assert ref is not None and mean is not None
        pos = act.shape[1]
        if pos > ref.shape[1]:
            raise ValueError(
                f"{hook.name}: the input has {pos} positions but the reference batch only {ref.shape[1]}; "
                "give reference_tokens at least as long as the tokens you ablate"
            )
        if method == "mean":
            replacement = mean[:pos].expand_as(act)
        else:
            gen = torch.Generator().manual_seed(seed)
            rows = torch.randint(0, ref.shape[0], (act.shape[0],), generator=gen)
            drawn[:] = [rows]  # the rows of the latest forward (each forward draws the same rows: the seed is fixed)
            replacement = ref[rows.to(ref.device), :pos]
        return torch.where(m, replacement, act)

    return fn


def head_ablation(
    model: Transformer,
    layer: int,
    heads: Sequence[int],
    method: str = "zero",  # one of METHODS; checked with a clear error
    reference_tokens: Int[Tensor, "batch pos"] | None = None,
    positions: Sequence[int] | None = None,
    seed: int = 0,
) -> Ablation:
    """Ablate heads of one layer at their output `hook_z` (all positions, or only `positions`)."""
    _check_layer(model, layer)
    heads = _check_indices("head", heads, model.cfg.n_heads)
    name = f"blocks.{layer}.attn.hook_z"
    ref = _reference(model, name, reference_tokens, method)
    if positions is None:
        mask = torch.zeros(1, model.cfg.n_heads, 1, dtype=torch.bool)
        mask[0, heads] = True
    else:
        positions = _check_indices("position", positions, model.cfg.n_ctx)
        mask = torch.zeros(model.cfg.n_ctx, model.cfg.n_heads, 1, dtype=torch.bool)
        mask[torch.tensor(positions)[:, None], torch.tensor(heads)[None, :]] = True
    where = "" if positions is None else f" at positions {positions}"
    return _ablation(name, method, ref, mask, seed, f"{method} L{layer} heads {heads}{where}")


def neuron_ablation(
    model: Transformer,
    layer: int,
    neurons: Sequence[int],
    method: str = "zero",  # one of METHODS; checked with a clear error
    reference_tokens: Int[Tensor, "batch pos"] | None = None,
    seed: int = 0,
) -> Ablation:
    """Ablate MLP neurons of one layer at `mlp.hook_post` (all positions)."""
    if model.cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLP neurons to ablate")
    _check_layer(model, layer)
    neurons = _check_indices("neuron", neurons, model.cfg.d_mlp)
    name = f"blocks.{layer}.mlp.hook_post"
    ref = _reference(model, name, reference_tokens, method)
    mask = torch.zeros(1, model.cfg.d_mlp, dtype=torch.bool)
    mask[0, neurons] = True
    return _ablation(name, method, ref, mask, seed, f"{method} L{layer} neurons {neurons}")


def layer_ablation(
    model: Transformer,
    layer: int,
    part: str = "attn",  # "attn" or "mlp"
    method: str = "zero",  # one of METHODS; checked with a clear error
    reference_tokens: Int[Tensor, "batch pos"] | None = None,
    seed: int = 0,
) -> Ablation:
    """Ablate a whole attention layer (`hook_attn_out`) or MLP layer (`hook_mlp_out`)."""
    _check_layer(model, layer)
    if part not in ("attn", "mlp"):
        raise ValueError(f"part must be 'attn' or 'mlp', got {part!r}")
    if part == "mlp" and model.cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLP layer to ablate")
    name = f"blocks.{layer}.hook_{part}_out"
    ref = _reference(model, name, reference_tokens, method)
    mask = torch.ones(1, 1, dtype=torch.bool)
    return _ablation(name, method, ref, mask, seed, f"{method} L{layer} {part}")


@torch.no_grad()
def run_ablated(
    model: Transformer, tokens: Int[Tensor, "batch pos"], ablations: Sequence[Ablation]
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of the model on `tokens` with every ablation applied at once."""
    for a in ablations:
        if not isinstance(a, Ablation):
            raise TypeError(f"ablations must be Ablation objects (from head_ablation, ...), got {type(a).__name__}")
    with model.hooks(fwd=[a.pair() for a in ablations]):
        return model(tokens)


@dataclass(frozen=True)
class AblatedRun:
    """Logits under ablation and each position's next-token loss (`loss[b, p]` predicts tokens[b, p + 1])."""

    logits: Float[Tensor, "batch pos d_vocab"]
    loss: Float[Tensor, "batch next_pos"]


@torch.no_grad()
def run_ablated_with_loss(
    model: Transformer, tokens: Int[Tensor, "batch pos"], ablations: Sequence[Ablation]
) -> AblatedRun:
    """`run_ablated`'s logits and the next-token cross-entropy at every position but the last (mean it for one number)."""
    if tokens.shape[-1] < 2:
        raise ValueError(f"a next-token loss needs at least 2 positions, got tokens of shape {tuple(tokens.shape)}")
    logits = run_ablated(model, tokens, ablations)
    targets = tokens[:, 1:].to(logits.device)
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
    return AblatedRun(logits, loss)
