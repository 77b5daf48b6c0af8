"""Activations to train on: read from a model's hook point batch by batch, and mixed in a buffer of bounded size.

Nothing here holds more than `buffer_rows` activations plus the one model batch being read, so an SAE
trains on a dataset whose activations would not fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer
from probes.sae.sae import flatten_activation

Chunks = Callable[[], Iterable[Tensor]]  # a fresh pass over the data, as [rows, d_in] chunks


def check_hook(model: Transformer, hook_name: str) -> None:
    """ValueError naming close hook names when the model has no hook point `hook_name`."""
    try:
        model.resolve(hook_name)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None


def hook_width(model: Transformer, hook_name: str) -> int:
    """d_in of an SAE on `hook_name`: the activation's numbers per position (heads concatenated for hook_z)."""
    check_hook(model, hook_name)
    tokens = torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device)
    _, cache = model.run_with_cache(tokens, names=hook_name, stop_early=True)
    return flatten_activation(cache[hook_name]).shape[-1]


@torch.no_grad()
def model_activations(
    model: Transformer, tokens: Int[Tensor, "n pos"], hook_name: str, batch_size: int = 64
) -> Iterator[Float[Tensor, "rows d_in"]]:
    """`hook_name`'s activation at every position, `batch_size` sequences at a time (the pass ends at that layer)."""
    check_hook(model, hook_name)
    device = next(model.parameters()).device
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start : start + batch_size].to(device), names=hook_name, stop_early=True)
        yield flatten_activation(cache[hook_name]).float()


def tensor_chunks(acts: Float[Tensor, "rows d_in"], chunk: int = 4096) -> Chunks:
    """A plain tensor of activations as a source of chunks."""
    if acts.ndim != 2:
        raise ValueError(f"activations must be a [rows, d_in] tensor, got shape {tuple(acts.shape)}")
    return lambda: acts.split(chunk)


def shuffled_batches(
    chunks: Chunks, batch_size: int, buffer_rows: int, seed: int = 0
) -> Iterator[Float[Tensor, "batch d_in"]]:
    """Endless shuffled batches: fill a buffer of `buffer_rows`, shuffle, hand out half, refill; the data repeats.

    Activations of neighbouring positions are alike, so batches are drawn from a well-mixed buffer,
    as SAELens does, rather than from the model's batches in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if buffer_rows < 2 * batch_size:
        raise ValueError(
            f"the buffer ({buffer_rows} rows) must hold at least two batches of {batch_size}; raise it or lower the batch"
        )
    gen = torch.Generator().manual_seed(seed)
    source = _cycle(chunks)
    buffer = next(source)[:0]
    pending = buffer
    while True:
        parts, held = [buffer], buffer.shape[0]
        while held < buffer_rows:
            if pending.shape[0] == 0:
                pending = next(source)
            take = min(buffer_rows - held, pending.shape[0])
            parts.append(pending[:take])
            pending, held = pending[take:], held + take
        buffer = torch.cat(parts)
        buffer = buffer[torch.randperm(buffer_rows, generator=gen).to(buffer.device)]
        half = buffer_rows // 2
        for start in range(0, half - batch_size + 1, batch_size):
            yield buffer[start : start + batch_size]
        buffer = buffer[half:]


def _cycle(chunks: Chunks) -> Iterator[Tensor]:
    """The chunks of pass after pass over the data; a pass with no rows at all is an error, not a hang."""
    while True:
        rows = 0
        for chunk in chunks():
            if chunk.ndim != 2:
                raise ValueError(f"activation chunks must be [rows, d_in], got shape {tuple(chunk.shape)}")
            rows += chunk.shape[0]
            yield chunk.float()
        if rows == 0:
            raise ValueError("the activation source yielded no activations")


def run_batches(
    model: Transformer,
    tokens: Int[Tensor, "n pos"],
    hook_name: str,
    batch_size: int,
    buffer_rows: int,
    model_batch: int | None = None,
    hook_name_out: str | None = None,
    seed: int = 0,
) -> Iterator[Tensor] | Iterator[tuple[Tensor, Tensor]]:
    """Shuffled training batches of `hook_name`'s activations on `tokens`, read `model_batch` sequences at a time.

    `model_batch` None: up to 512 sequences, a quarter of the buffer at most.

    With `hook_name_out` (a transcoder) each batch is an (input, target) pair from the same
    positions: the two activations travel through the buffer side by side.
    """
    if model_batch is None:  # big enough that the forward's fixed cost is small, small enough to fit the buffer
        model_batch = max(1, min(512, buffer_rows // (4 * tokens.shape[1])))
    if model_batch < 1:
        raise ValueError(f"the model batch must be at least 1 sequence, got {model_batch}")
    if model_batch * tokens.shape[1] > buffer_rows:
        raise ValueError(
            f"one model batch ({model_batch} sequences x {tokens.shape[1]} positions) is larger than the buffer "
            f"({buffer_rows} rows); lower the model batch or raise the buffer"
        )
    names = [hook_name] + ([hook_name_out] if hook_name_out is not None else [])
    for name in names:
        check_hook(model, name)
    device = next(model.parameters()).device

    def chunks() -> Iterator[Tensor]:
        for start in range(0, tokens.shape[0], model_batch):
            t = tokens[start : start + model_batch].to(device)
            with torch.no_grad():  # not a decorator: torch's generator wrapper fails when collected at exit
                _, cache = model.run_with_cache(t, names=names, stop_early=True)
            yield torch.cat([flatten_activation(cache[n]).float() for n in names], dim=-1)

    batches = shuffled_batches(chunks, batch_size, buffer_rows, seed)
    if hook_name_out is None:
        return batches
    d_in = hook_width(model, hook_name)
    return ((b[:, :d_in], b[:, d_in:]) for b in batches)
