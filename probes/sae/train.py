"""Training an SAE or transcoder: each kind's loss, dead-feature handling, and a stop that keeps the last good state.

Losses, on activations scaled so that their mean norm is sqrt(d_in) (so one set of coefficients
fits any hook point; the scale is folded back into the weights at the end):

- relu:      ||x - x_hat||^2 + l1_coeff * sum_i |f_i| ||W_dec_i||          (Bricken et al. 2023)
- topk:      ||x - x_hat||^2 + aux_coeff * AuxK                               (Gao et al. 2024)
- batchtopk: as topk, keeping the batch's k * batch largest codes             (Bussmann et al. 2024)
- jumprelu:  ||x - x_hat||^2 + l0_coeff * sum_i H(pre_i - theta_i)            (Rajamanoharan et al. 2024)

JumpReLU's step has zero gradient almost everywhere, so the threshold learns through the paper's
pseudo-derivative: a rectangle kernel of width `bandwidth` around the threshold (straight-through
for the jump, a kernel density estimate for the L0). Dead features are revived by the AuxK loss
(top-k kinds: they learn to explain what the live ones miss) or resampled toward badly
reconstructed inputs (relu, jumprelu).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from probes.sae.sae import SparseAutoencoder


@dataclass(frozen=True)
class SAETrainConfig:
    """How to train: steps, batch, learning rate, each kind's coefficients, and dead-feature handling."""

    steps: int = 2000
    batch_size: int = 1024
    lr: float = 3e-3
    l1_coeff: float = 5.0
    l0_coeff: float = 1.0
    bandwidth: float = 0.1
    threshold_lr_scale: float = 20.0
    aux_coeff: float = 1 / 32
    dead_steps: int = 200  # a feature that has not fired for this many steps counts as dead
    resample_every: int = 500  # relu and jumprelu: resample dead features this often (0: never)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "dead_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "bandwidth", "threshold_lr_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("l1_coeff", "l0_coeff", "aux_coeff", "resample_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class SAETraining:
    """What training returns: the SAE (weights in the activations' own scale), its losses, and why it stopped early."""

    sae: SparseAutoencoder
    steps_done: int
    losses: list[float] = field(default_factory=list)
    diverged: str | None = None  # set when a loss or weight went NaN/inf: training stopped, last good state kept
    scale: float = 1.0  # the factor the activations were scaled by during training (folded into the weights)
    resampled: int = 0


class JumpReLUFunction(torch.autograd.Function):
    """z * H(z - theta); d/dz = H(z - theta), d/dtheta = -(theta / eps) K((z - theta) / eps) (rectangle K)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # noqa: ANN001
        z, theta = ctx.saved_tensors
        near = ((z - theta).abs() < ctx.eps / 2).to(grad.dtype)
        grad_theta = (-(theta / ctx.eps) * near * grad).sum(0)
        return grad * (z > theta), grad_theta, None


class StepFunction(torch.autograd.Function):
    """H(z - theta); d/dz = 0, d/dtheta = -(1 / eps) K((z - theta) / eps)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:  # noqa: ANN001
        z, theta = ctx.saved_tensors
        near = ((z - theta).abs() < ctx.eps / 2).to(grad.dtype)
        return None, (-(1.0 / ctx.eps) * near * grad).sum(0), None


def batch_topk(pre: Float[Tensor, "batch width"], k: int) -> Float[Tensor, "batch width"]:
    flat = pre.relu().flatten()
    top = flat.topk(min(k * pre.shape[0], flat.numel()))
    return torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)


def _aux_loss(sae: SparseAutoencoder, pre: Tensor, residual: Tensor, dead: Tensor, k_aux: int) -> Tensor:
    """AuxK: the dead features' top codes reconstruct what the live ones missed (normalized MSE)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    dead_pre = pre.relu().masked_fill(~dead, 0.0)
    top = dead_pre.topk(min(k_aux, n_dead), dim=-1)
    codes = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    guess = codes @ sae.W_dec
    target = residual.detach()
    return (guess - target).pow(2).sum(-1).mean() / (target - target.mean(0)).pow(2).sum(-1).mean().clamp(min=1e-8)


def sae_loss(
    sae: SparseAutoencoder,
    x: Float[Tensor, "batch d_in"],
    y: Float[Tensor, "batch d_out"],
    dead: Tensor,
    cfg: SAETrainConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, codes, per-row reconstruction error) of one batch under the SAE kind's training objective."""
    kind = sae.cfg.kind
    pre = sae.pre_acts(x)
    if kind == "relu":
        acts = pre.relu()
    elif kind == "topk":
        acts = sae.activate(pre)
    elif kind == "batchtopk":
        acts = batch_topk(pre, sae.cfg.k)
    else:
        acts = JumpReLUFunction.apply(pre, sae.log_threshold.exp(), cfg.bandwidth)
    recons = acts @ sae.W_dec + sae.b_dec
    row_err = (recons - y).pow(2).sum(-1)
    loss = row_err.mean()
    if kind == "relu":
        loss = loss + cfg.l1_coeff * (acts * sae.W_dec.norm(dim=-1)).sum(-1).mean()
    elif kind == "jumprelu":
        loss = loss + cfg.l0_coeff * StepFunction.apply(pre, sae.log_threshold.exp(), cfg.bandwidth).sum(-1).mean()
    else:
        k_aux = max(1, sae.cfg.out_features // 2)
        loss = loss + cfg.aux_coeff * _aux_loss(sae, pre, y - recons, dead, k_aux)
    return loss, acts, row_err.detach()


@torch.no_grad()
def activation_scale(x: Float[Tensor, "rows d_in"]) -> float:
    """The factor that brings the rows' mean norm to sqrt(d_in)."""
    norm = float(x.norm(dim=-1).mean())
    if not norm > 0:
        raise ValueError("the activations are all zero (or not finite); there is nothing for an SAE to learn")
    return x.shape[-1] ** 0.5 / norm


@torch.no_grad()
def _resample(
    sae: SparseAutoencoder,
    dead: Tensor,
    x: Tensor,
    y: Tensor,
    row_err: Tensor,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
) -> int:
    """Point dead features at inputs the SAE reconstructs worst (Bricken et al. 2023); reset their Adam state."""
    idx = dead.nonzero().squeeze(-1)
    if idx.numel() == 0:
        return 0
    picks = torch.multinomial(row_err.pow(2) + 1e-12, idx.numel(), replacement=True, generator=gen)
    target = y[picks] - sae.b_dec
    direction = target / target.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    alive = ~dead
    enc_norm = float(sae.W_enc[:, alive].norm(dim=0).mean()) if alive.any() else 1.0
    sae.W_dec[idx] = direction
    if not sae.cfg.is_transcoder:
        sae.W_enc[:, idx] = direction.T * enc_norm * 0.2
    else:
        source = x[picks] / x[picks].norm(dim=-1, keepdim=True).clamp(min=1e-8)
        sae.W_enc[:, idx] = source.T * enc_norm * 0.2
    sae.b_enc[idx] = 0.0
    for p in (sae.W_enc, sae.W_dec, sae.b_enc):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                if p is sae.W_enc:
                    state[key][:, idx] = 0.0
                else:
                    state[key][idx] = 0.0
    return int(idx.numel())


def train_sae(
    sae: SparseAutoencoder,
    batches: Iterator[Tensor] | Iterator[tuple[Tensor, Tensor]],
    cfg: SAETrainConfig,
    scale: float | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> SAETraining:
    """Train `sae` on `batches` ([batch, d_in] rows; (input, target) pairs for a transcoder) for cfg.steps steps.

    `scale`: the factor that brings the activations' mean norm to sqrt(d_in) (None: measured on the
    first batch). A NaN or inf loss or weight stops training and restores the weights of the last
    step whose loss was finite; `SAETraining.diverged` says when.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    sae.train()
    threshold = [p for name, p in sae.named_parameters() if name == "log_threshold"]
    others = [p for name, p in sae.named_parameters() if name != "log_threshold"]
    # Adam moves a log-threshold by about lr a step: too slow to travel from its start to the codes' scale
    groups = [{"params": others}] + (
        [{"params": threshold, "lr": cfg.lr * cfg.threshold_lr_scale}] if threshold else []
    )
    opt = torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999))
    decay_from = int(cfg.steps * 0.8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else max(0.0, (cfg.steps - s) / max(1, cfg.steps - decay_from))
    )
    width = sae.cfg.width
    device = sae.W_enc.device
    since_fired = torch.zeros(width, dtype=torch.long, device=device)
    good = copy.deepcopy(sae.state_dict())
    result = SAETraining(sae=sae, steps_done=0)
    first = True
    for step in range(cfg.steps):
        batch = next(batches)
        x, y = batch if isinstance(batch, tuple) else (batch, batch)
        x, y = x.to(device), y.to(device)
        if first:
            if scale is None:
                scale = activation_scale(x)
            result.scale = scale
            first = False
            if not sae.cfg.is_transcoder:  # start b_dec at the data's mean (the geometric median's cheap cousin)
                with torch.no_grad():
                    sae.b_dec.copy_(y.mean(0) * scale)
        x, y = x * scale, y * scale
        dead = since_fired >= cfg.dead_steps
        loss, acts, row_err = sae_loss(sae, x, y, dead, cfg)
        value = loss.item()
        if not torch.isfinite(loss):
            result.diverged = f"the loss became {value} at step {step}; kept the weights of step {result.steps_done}"
            sae.load_state_dict(good)
            break
        # the state this finite loss came from is the last good one
        for key, tensor in sae.state_dict().items():
            good[key].copy_(tensor)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if sae.cfg.normalize_decoder and sae.W_dec.grad is not None:
            # drop the gradient's part along each row, which the renormalization below would undo anyway
            W = sae.W_dec.detach()
            sae.W_dec.grad -= (sae.W_dec.grad * W).sum(-1, keepdim=True) * W
        opt.step()
        sched.step()
        with torch.no_grad():
            if sae.cfg.normalize_decoder:
                sae.normalize_decoder_()
            if sae.cfg.kind == "batchtopk":
                fired = acts[acts > 0]
                if fired.numel():
                    low = fired.min()
                    sae.threshold.copy_(low if step == 0 else 0.99 * sae.threshold + 0.01 * low)
        fired_now = (acts > 0).any(0)
        since_fired = torch.where(fired_now, torch.zeros_like(since_fired), since_fired + 1)
        if (
            sae.cfg.kind in ("relu", "jumprelu")
            and cfg.resample_every
            and (step + 1) % cfg.resample_every == 0
            and step + 1 < decay_from
        ):
            result.resampled += _resample(sae, since_fired >= cfg.dead_steps, x, y, row_err, opt, gen)
        result.losses.append(value)
        result.steps_done = step + 1
        if progress is not None:
            progress(step + 1, value)
    if not all(torch.isfinite(t).all() for t in sae.state_dict().values()):
        sae.load_state_dict(good)
        result.diverged = result.diverged or f"a weight became NaN/inf; kept the weights of step {result.steps_done}"
    fold_scale_(sae, result.scale)
    sae.eval()
    return result


@torch.no_grad()
def fold_scale_(sae: SparseAutoencoder, scale: float) -> None:
    """Make an SAE trained on activations * scale take and return the activations themselves."""
    sae.W_enc.mul_(scale)
    sae.W_dec.div_(scale)
    sae.b_dec.div_(scale)
