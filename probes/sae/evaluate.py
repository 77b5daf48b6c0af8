"""How good an SAE is: sparsity (L0, dead and dense features), explained variance, and the model's loss with it spliced in.

The fraction of loss recovered compares three runs of the model on the same tokens: clean, with
the hook's activation replaced by the SAE's reconstruction, and with it zeroed:
(loss_zero - loss_spliced) / (loss_zero - loss_clean). 1 means the SAE loses nothing the model uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer
from probes.sae.activations import check_hook, hook_width
from probes.sae.sae import SparseAutoencoder, flatten_activation
from scratchnn import HookFn, HookPoint

DENSE_ABOVE = 0.1  # a feature firing on more than this share of activations counts as dense


@dataclass(frozen=True)
class SAEEvaluation:
    """An SAE's numbers on a set of activations (and, when a model was given, on its loss)."""

    l0: float  # mean number of active features per activation
    dead: int  # features that never fired
    dense: int  # features firing on more than DENSE_ABOVE of activations
    explained_variance: float
    frequency: Float[Tensor, " width"]  # share of activations each feature fires on
    n_activations: int
    loss_clean: float | None = None
    loss_spliced: float | None = None
    loss_zero: float | None = None

    @property
    def loss_recovered(self) -> float | None:
        if self.loss_clean is None or self.loss_spliced is None or self.loss_zero is None:
            return None
        gap = self.loss_zero - self.loss_clean
        return float("nan") if abs(gap) < 1e-12 else (self.loss_zero - self.loss_spliced) / gap

    def summary(self) -> dict[str, Any]:
        """The scalar numbers, for JSON and tables."""
        out = {
            "l0": self.l0,
            "dead": self.dead,
            "dense": self.dense,
            "explained_variance": self.explained_variance,
            "n_activations": self.n_activations,
        }
        if self.loss_clean is not None:
            out.update(
                loss_clean=self.loss_clean,
                loss_spliced=self.loss_spliced,
                loss_zero=self.loss_zero,
                loss_recovered=self.loss_recovered,
            )
        return out


@torch.no_grad()
def evaluate_activations(
    sae: SparseAutoencoder,
    x: Float[Tensor, "rows d_in"],
    y: Float[Tensor, "rows d_out"] | None = None,
    batch_size: int = 4096,
) -> SAEEvaluation:
    """L0, dead and dense features and explained variance of `sae` on rows `x` (target `y`, default x)."""
    y = x if y is None else y
    if x.ndim != 2 or x.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"activations must be [rows, {sae.cfg.d_in}] for this SAE, got {tuple(x.shape)}")
    fired = torch.zeros(sae.cfg.width)
    l0, err = 0.0, 0.0
    for start in range(0, x.shape[0], batch_size):
        acts = sae.encode(x[start : start + batch_size])
        active = acts > 0
        fired += active.sum(0).float().cpu()
        l0 += float(active.sum())
        err += float((sae.decode(acts) - y[start : start + batch_size]).pow(2).sum())
    total = float((y - y.mean(0)).pow(2).sum())
    rows = x.shape[0]
    frequency = fired / rows
    return SAEEvaluation(
        l0=l0 / rows,
        dead=int((fired == 0).sum()),
        dense=int((frequency > DENSE_ABOVE).sum()),
        explained_variance=1.0 - err / total if total > 0 else float("nan"),
        frequency=frequency,
        n_activations=rows,
    )


def splice_hooks(sae: SparseAutoencoder) -> list[tuple[str, HookFn]]:
    """Hooks that run the model with the SAE's output in place of the activation it reads.

    An SAE replaces its hook's activation by the reconstruction; a transcoder reads its input hook
    and writes its prediction over its output hook (the MLP's output), so the MLP's own output is unused.
    """
    if not sae.cfg.is_transcoder:

        def replace(act: Tensor, hook: HookPoint) -> Tensor:
            return sae(flatten_activation(act).float()).reshape(act.shape).to(act.dtype)

        return [(sae.cfg.hook_name, replace)]
    seen: dict[str, Tensor] = {}

    def read(act: Tensor, hook: HookPoint) -> None:
        seen["x"] = flatten_activation(act).float()

    def write(act: Tensor, hook: HookPoint) -> Tensor:
        return sae(seen.pop("x")).reshape(act.shape).to(act.dtype)

    return [(sae.cfg.hook_name, read), (sae.cfg.hook_name_out, write)]


def _zero(act: Tensor, hook: HookPoint) -> Tensor:
    return torch.zeros_like(act)


@torch.no_grad()
def masked_loss(
    model: Transformer,
    tokens: Int[Tensor, "n pos"],
    loss_mask: Int[Tensor, "n pos"],
    hooks: list[tuple[str, HookFn]] = (),
    batch_size: int = 256,
) -> float:
    """The model's next-token loss where loss_mask is set (the task's own loss), under `hooks`."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with model.hooks(fwd=hooks):
        for start in range(0, tokens.shape[0], batch_size):
            t = tokens[start : start + batch_size].to(device)
            m = loss_mask[start : start + batch_size, :-1].to(device).bool()
            logp = model(t)[:, :-1].float().log_softmax(-1)
            nll = -logp.gather(-1, t[:, 1:, None]).squeeze(-1)
            total += float(nll[m].sum())
            count += int(m.sum())
    if count == 0:
        raise ValueError("loss_mask selects no position; give at least one position to score")
    return total / count


@torch.no_grad()
def evaluate_sae(
    model: Transformer,
    sae: SparseAutoencoder,
    tokens: Int[Tensor, "n pos"],
    loss_mask: Int[Tensor, "n pos"],
    batch_size: int = 256,
) -> SAEEvaluation:
    """Every number of `evaluate_activations` on the model's activations of `tokens`, and the three losses."""
    check_fits(model, sae)
    names = [sae.cfg.hook_name] + ([sae.cfg.hook_name_out] if sae.cfg.is_transcoder else [])
    xs, ys = [], []
    device = next(model.parameters()).device
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start : start + batch_size].to(device), names=names, stop_early=True)
        xs.append(flatten_activation(cache[names[0]]).float())
        ys.append(flatten_activation(cache[names[-1]]).float())
    stats = evaluate_activations(sae, torch.cat(xs), torch.cat(ys))
    out_hook = names[-1]
    return SAEEvaluation(
        **{k: getattr(stats, k) for k in ("l0", "dead", "dense", "explained_variance", "frequency", "n_activations")},
        loss_clean=masked_loss(model, tokens, loss_mask, batch_size=batch_size),
        loss_spliced=masked_loss(model, tokens, loss_mask, splice_hooks(sae), batch_size),
        loss_zero=masked_loss(model, tokens, loss_mask, [(out_hook, _zero)], batch_size),
    )


def check_fits(model: Transformer, sae: SparseAutoencoder) -> None:
    """ValueError naming both sides when the SAE's hook or d_in is not the model's."""
    cfg = sae.cfg
    for name in [cfg.hook_name] + ([cfg.hook_name_out] if cfg.is_transcoder else []):
        check_hook(model, name)
    pairs = [(cfg.hook_name, cfg.d_in, "d_in")]
    if cfg.is_transcoder:
        pairs.append((cfg.hook_name_out, cfg.d_out, "d_out"))
    for name, size, what in pairs:
        width = hook_width(model, name)
        if width != size:
            raise ValueError(
                f"the SAE's {what} is {size} but the model's {name} has {width} numbers per position; "
                "this SAE was trained on another model"
            )
