"""One feature at a time: where it fires, what it does to the logits, and the model with it ablated or amplified.

Editing goes through the SAE's decoder direction at its hook: ablating feature f subtracts
its contribution `code_f * W_dec[f]` from the activation (the SAE's error term stays, so only
that feature is gone); steering adds `alpha * W_dec[f]` at every position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer
from probes.sae.sae import SparseAutoencoder, flatten_activation
from scratchnn import HookFn, HookPoint


def _check_feature(sae: SparseAutoencoder, feature: int) -> None:
    if not 0 <= feature < sae.cfg.width:
        raise ValueError(f"feature {feature} is outside this SAE's features [0, {sae.cfg.width})")


@torch.no_grad()
def feature_codes(
    model: Transformer, sae: SparseAutoencoder, tokens: Int[Tensor, "n pos"], batch_size: int = 256
) -> Float[Tensor, "n pos width"]:
    """Every feature's code at every position of `tokens`."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        t = tokens[start : start + batch_size].to(device)
        _, cache = model.run_with_cache(t, names=sae.cfg.hook_name, stop_early=True)
        codes = sae.encode(flatten_activation(cache[sae.cfg.hook_name]).float())
        out.append(codes.reshape(*t.shape, -1).cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class TopExamples:
    """The rows and positions where a feature fires most, strongest first."""

    rows: Int[Tensor, " k"]
    positions: Int[Tensor, " k"]
    values: Float[Tensor, " k"]


def top_examples(codes: Float[Tensor, "n pos width"], feature: int, k: int = 10) -> TopExamples:
    """The k (row, position) pairs with the largest code of `feature` (only those where it fires)."""
    if not 0 <= feature < codes.shape[-1]:
        raise ValueError(f"feature {feature} is outside [0, {codes.shape[-1]})")
    flat = codes[..., feature].flatten()
    top = flat.topk(min(k, flat.numel()))
    keep = top.values > 0
    idx = top.indices[keep]
    return TopExamples(rows=idx // codes.shape[1], positions=idx % codes.shape[1], values=top.values[keep])


def _steer_hook(direction: Tensor, alpha: float) -> HookFn:
    def add(act: Tensor, hook: HookPoint) -> Tensor:
        rows = flatten_activation(act)
        return (rows + alpha * direction.to(rows.dtype)).reshape(act.shape)

    return add


def _ablate_hook(sae: SparseAutoencoder, feature: int) -> HookFn:
    def remove(act: Tensor, hook: HookPoint) -> Tensor:
        rows = flatten_activation(act)
        code = sae.encode(rows.float())[:, feature : feature + 1]
        return (rows - (code * sae.W_dec[feature]).to(rows.dtype)).reshape(act.shape)

    return remove


@torch.no_grad()
def steered_logits(
    model: Transformer, sae: SparseAutoencoder, feature: int, alpha: float, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_vocab"]:
    """The model's logits with alpha times the feature's decoder direction added at the SAE's hook."""
    _check_feature(sae, feature)
    if sae.cfg.is_transcoder:
        raise ValueError("steering writes at an SAE's hook; for a transcoder steer through its output hook's SAE")
    with model.hooks(fwd=[(sae.cfg.hook_name, _steer_hook(sae.W_dec[feature], alpha))]):
        return model(tokens)


@torch.no_grad()
def ablated_logits(
    model: Transformer, sae: SparseAutoencoder, feature: int, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_vocab"]:
    """The model's logits with the feature's contribution removed at the SAE's hook."""
    _check_feature(sae, feature)
    if sae.cfg.is_transcoder:
        raise ValueError("ablating a feature edits an SAE's hook; a transcoder's features write at its output hook")
    with model.hooks(fwd=[(sae.cfg.hook_name, _ablate_hook(sae, feature))]):
        return model(tokens)


@torch.no_grad()
def logit_effect(
    model: Transformer, sae: SparseAutoencoder, feature: int, tokens: Int[Tensor, "batch pos"], alpha: float
) -> Float[Tensor, " d_vocab"]:
    """How much each token's log-probability moves, on average over positions, when the feature is added with alpha.

    Measured through the model rather than read off W_dec @ W_U, so it holds for any hook point
    (an MLP's neurons or the heads' outputs as well as the residual stream).
    """
    clean = model(tokens).log_softmax(-1)
    steered = steered_logits(model, sae, feature, alpha, tokens).log_softmax(-1)
    return (steered - clean).mean((0, 1)).cpu()


def prediction_change(
    clean: Float[Tensor, " d_vocab"], edited: Float[Tensor, " d_vocab"], k: int = 5
) -> list[tuple[int, float, float]]:
    """The k tokens most probable after the edit, as (token id, probability before, probability after)."""
    p0, p1 = clean.softmax(-1), edited.softmax(-1)
    top = p1.topk(min(k, p1.numel())).indices
    return [(int(i), float(p0[i]), float(p1[i])) for i in top]


def feature_frequency(codes: Float[Tensor, "n pos width"]) -> Float[Tensor, " width"]:
    """The share of positions each feature fires on."""
    return (codes > 0).float().mean((0, 1))
