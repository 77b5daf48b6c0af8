"""How much memory a model of a given config needs, checked before anything is allocated.

A config comes from a file a person may not have written: `"n_layers": 1000000` or an n_ctx of
a billion would otherwise keep a process allocating until the machine gives out. Every
Transformer checks what building it takes (parameters, attention masks, module objects), and the
trainer checks the training footprint (weights, gradients, AdamW's two moments, a batch of the
task's sequence length). The limit is half this machine's memory (a CUDA device's own memory
when training there) unless SANDBOX_MAX_MEMORY_GB says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from blocks.config import TransformerConfig

LIMIT_ENV = "SANDBOX_MAX_MEMORY_GB"
LAYERS_ENV = "SANDBOX_MAX_LAYERS"
MAX_LAYERS = 4096  # each layer is ~20 Python modules, built at a few ms apiece: 4096 take a few seconds to a minute
_FLOAT = 4  # bytes of a float32
_LAYER_OBJECTS = 96 * 2**10  # measured ~84 KiB of Python and torch objects per layer, whatever its sizes


class ModelTooLargeError(ValueError):
    """A config whose model (or training) would need more memory than the limit allows."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs: its parameters, its buffers, and the activations of the batch considered."""

    n_params: int
    params_bytes: int
    buffers_bytes: int
    activations_bytes: int

    @property
    def total(self) -> int:
        return self.params_bytes + self.buffers_bytes + self.activations_bytes


def n_params(cfg: TransformerConfig) -> int:
    """The number of parameters of Transformer(cfg), computed from the sizes alone."""
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    attn = 4 * d * h * dh + 3 * h * dh + d  # W_Q, W_K, W_V, W_O and their biases
    norms = 2 * d if cfg.normalization == "LN" else 0  # LNPre has no weights
    mlp = 0 if cfg.attn_only else 2 * d * cfg.d_mlp + cfg.d_mlp + d
    per_layer = attn + mlp + norms * (1 if cfg.attn_only else 2)
    unembed = (0 if cfg.tie_unembed else d * cfg.d_vocab) + cfg.d_vocab
    return cfg.d_vocab * d + cfg.n_ctx * d + cfg.n_layers * per_layer + norms + unembed


def estimate(cfg: TransformerConfig, batch: int = 1, training: bool = False, pos: int | None = None) -> MemoryEstimate:
    """Memory for a forward of `batch` sequences of `pos` tokens (default n_ctx) with every activation kept
    (and, when `training`, the gradients, AdamW's moments and the activations backward reads)."""
    params = n_params(cfg)
    pos = cfg.n_ctx if pos is None else pos
    d, h = cfg.d_model, cfg.n_heads
    mlp = 0 if cfg.attn_only else 2 * cfg.d_mlp
    # per layer and position: residuals and norms, q k v z, each head's result, the MLP, and a
    # row of scores and pattern per head
    per_layer = 6 * d + 4 * h * cfg.d_head + h * d + mlp + 2 * h * pos
    activations = batch * pos * (cfg.n_layers * per_layer + 2 * d + cfg.d_vocab) * _FLOAT
    copies = 4 if training else 1  # weights, gradients and AdamW's two moments
    return MemoryEstimate(
        n_params=params,
        params_bytes=params * _FLOAT * copies,
        # each attention's causal_mask (one bool per pair of positions) and the layer's module objects
        buffers_bytes=cfg.n_layers * (cfg.n_ctx * cfg.n_ctx + _LAYER_OBJECTS),
        activations_bytes=activations * (3 if training else 1),
    )


def memory_limit(device: str | torch.device = "cpu") -> tuple[int, str]:
    """(bytes, where the number comes from): SANDBOX_MAX_MEMORY_GB, else a CUDA device's own memory, else half
    the machine's memory."""
    gb = _positive_env(LIMIT_ENV, None, float, "gigabytes")
    if gb is not None:
        return int(gb * 2**30), f"{LIMIT_ENV}={os.environ[LIMIT_ENV]}"
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory, f"the memory of {device}"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this platform: a limit that fits most machines
        total = 32 * 2**30
    return total // 2, "half this machine's memory"


def check_fits(
    cfg: TransformerConfig,
    batch: int = 1,
    training: bool = False,
    pos: int | None = None,
    device: str | torch.device = "cpu",
) -> MemoryEstimate:
    """The estimate for `cfg` (`batch` sequences of `pos` tokens; batch 0: building the model only);
    ModelTooLargeError with the numbers when it exceeds the limit of `device`."""
    max_layers = _positive_env(LAYERS_ENV, MAX_LAYERS, int, "layers")
    if cfg.n_layers > max_layers:
        raise ModelTooLargeError(
            f"n_layers={cfg.n_layers} is more than the limit of {max_layers} layers: building each takes a few "
            f"milliseconds, so this model would take about {cfg.n_layers * 4e-3 / 60:.3g} minutes to build. "
            f"If the depth is meant, raise the limit with {LAYERS_ENV}=<layers>"
        )
    need = estimate(cfg, batch, training, pos)
    limit, source = memory_limit(device)
    if need.total > limit:
        positions = cfg.n_ctx if pos is None else pos
        if training:
            what = f"training with a batch of {batch} x {positions} positions"
        elif batch:
            what = f"a forward pass over {batch} x {positions} positions"
        else:
            what = "building it"
        raise ModelTooLargeError(
            f"this model needs about {_gb(need.total)} for {what} ({need.n_params:.3g} parameters: "
            f"{_gb(need.params_bytes)}; attention masks {_gb(need.buffers_bytes)}; activations "
            f"{_gb(need.activations_bytes)}), more than the limit of {_gb(limit)} ({source}). Check n_layers "
            f"{cfg.n_layers}, d_model {cfg.d_model}, d_vocab {cfg.d_vocab}, n_ctx {cfg.n_ctx}, d_mlp {cfg.d_mlp}; "
            f"if the size is meant, raise the limit with {LIMIT_ENV}=<gigabytes>"
        )
    return need


def _positive_env(name: str, default: int | float | None, kind: type, what: str) -> int | float | None:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}={raw!r} is not a positive number ({what}); e.g. {name}=64")
    return value


def _gb(n: int) -> str:
    return f"{n / 2**30:.3g} GB"
