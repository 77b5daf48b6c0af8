"""Helpers every task shares: next-token losses under a mask, and turning tensors into a Dataset."""

from __future__ import annotations

from collections.abc import Callable

import datasets
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor


def next_token_nll(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """Per-position loss of predicting tokens[:, t+1] from position t (float32 even under autocast)."""
    return target_nll(logits[:, :-1], tokens[:, 1:])


def target_nll(
    logits: Float[Tensor, "batch pos d_vocab"], targets: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos"]:
    """Per-position loss of `targets` under `logits` (float32 even under autocast)."""
    return -logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)


def masked_mean(values: Float[Tensor, "batch pos"], mask: Tensor) -> float:
    """Mean of `values` where `mask` is set; NaN when nothing is masked in."""
    mask = mask.to(values.dtype)
    total = mask.sum()
    return float((values * mask).sum() / total) if total > 0 else float("nan")


def to_dataset(tokens: Int[Tensor, "batch pos"], loss_mask: Int[Tensor, "batch pos"]) -> datasets.Dataset:
    """A Dataset with columns `tokens` and `loss_mask`, one row per sequence."""
    if tokens.shape != loss_mask.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and loss_mask {tuple(loss_mask.shape)} must have one shape")
    return datasets.Dataset.from_dict(
        {"tokens": tokens.numpy().astype(np.int64), "loss_mask": loss_mask.numpy().astype(np.int8)}
    )


def generated_split(
    generate: Callable[[int, int], tuple[Tensor, Tensor]], split: str, n_train: int, n_test: int, seed: int
) -> datasets.Dataset:
    """The `train` or `test` split of a task whose rows come from `generate(n, seed)`.

    The two splits draw from seeds far apart, so they are independent samples.
    """
    sizes = {"train": (n_train, 0), "test": (n_test, 1)}
    if split not in sizes:
        raise ValueError(f"split must be one of {list(sizes)}, got {split!r}")
    n, offset = sizes[split]
    return to_dataset(*generate(n, 2 * seed + offset + 1_000_003 * offset))


def dataset_tensors(ds: datasets.Dataset) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """The `tokens` and `loss_mask` columns as two [rows, pos] long tensors."""
    missing = {"tokens", "loss_mask"} - set(ds.column_names)
    if missing:
        raise ValueError(f"a task dataset needs columns tokens and loss_mask; missing {sorted(missing)}")
    cols = ds.with_format("numpy")[:]
    tokens = torch.as_tensor(np.stack(cols["tokens"]) if cols["tokens"].dtype == object else cols["tokens"]).long()
    mask = torch.as_tensor(
        np.stack(cols["loss_mask"]) if cols["loss_mask"].dtype == object else cols["loss_mask"]
    ).long()
    return tokens, mask


@torch.no_grad()
def masked_eval(
    model: torch.nn.Module, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"], batch: int = 256
) -> tuple[float, float, float]:
    """(loss, token accuracy, sequence accuracy) over the masked positions, teacher-forced."""
    device = next(model.parameters()).device
    losses, correct, counted, seq_ok, rows = 0.0, 0, 0, 0, 0
    for start in range(0, tokens.shape[0], batch):
        t = tokens[start : start + batch].to(device)
        m = mask[start : start + batch, :-1].to(device).bool()
        logits = model(t)
        nll = next_token_nll(logits, t)
        hit = logits[:, :-1].argmax(-1) == t[:, 1:]
        losses += float(nll[m].sum())
        correct += int(hit[m].sum())
        counted += int(m.sum())
        seq_ok += int((hit | ~m).all(-1).sum())
        rows += t.shape[0]
    counted = max(counted, 1)
    return losses / counted, correct / counted, seq_ok / max(rows, 1)
