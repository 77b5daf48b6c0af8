"""Fourier analysis of a modular-addition model: which frequencies its embeddings and neurons use.

For inputs (a, b) in Z_p, the Fourier basis of Z_p has a constant row and, for each
frequency k = 1 .. p // 2, a cosine and a sine row. A grokked model's embeddings and MLP
neurons concentrate on a few "key" frequencies (Nanda et al., 2023).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import einops
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from blocks.transformer import Transformer


def fourier_basis(p: int) -> tuple[Float[Tensor, "p p"], list[str]]:
    """Orthonormal rows: const, cos 1, sin 1, cos 2, sin 2, ... over x = 0 .. p - 1."""
    if p < 3:
        raise ValueError(f"p must be at least 3, got {p}")
    x = torch.arange(p, dtype=torch.float64)
    rows, labels = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, p // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        labels += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows[:p])
    return (basis / basis.norm(dim=1, keepdim=True)).float(), labels[:p]


def _freq_of_row(p: int) -> Tensor:
    """Frequency of each basis row (0 for const)."""
    return torch.tensor([0] + [k for k in range(1, p // 2 + 1) for _ in (0, 1)][: p - 1])


def embedding_frequency_norms(W_E: Float[Tensor, "p d_model"]) -> Float[Tensor, " n_freq"]:
    """Norm of the embedding in each frequency k = 1 .. p // 2 (cos and sin together)."""
    p = W_E.shape[0]
    basis, _ = fourier_basis(p)
    coeffs = basis @ W_E.detach().float().cpu()  # p d_model
    freq = _freq_of_row(p)
    return torch.stack([coeffs[freq == k].pow(2).sum().sqrt() for k in range(1, p // 2 + 1)])


def _coefficients(acts: Float[Tensor, "p p d_mlp"]) -> Tensor:
    basis, _ = fourier_basis(acts.shape[0])
    a = acts.detach().float().cpu()
    return einops.einsum(basis, basis, a, "i a, j b, a b d_mlp -> i j d_mlp")


def neuron_frequency_share(acts: Float[Tensor, "p_a p_b d_mlp"]) -> Float[Tensor, "d_mlp n_freq"]:
    """For each neuron and frequency k, the share of its variance over all (a, b) carried by terms that use
    only k (and constants): cos/sin k of a, of b, and their products."""
    p = acts.shape[0]
    if acts.shape[1] != p:
        raise ValueError(f"activations must be a p x p grid over (a, b), got {tuple(acts.shape)}")
    c2 = _coefficients(acts).pow(2)
    c2[0, 0] = 0.0  # the mean is not variance
    total = c2.sum((0, 1)).clamp_min(1e-12)
    freq = _freq_of_row(p)
    shares = []
    for k in range(1, p // 2 + 1):
        rows = (freq == k) | (freq == 0)
        shares.append(c2[rows][:, rows].sum((0, 1)) / total)
    return torch.stack(shares, dim=1)


@dataclass(frozen=True)
class FourierSummary:
    """Key frequencies and how much of the MLP's variance they explain."""

    key_frequencies: list[int]
    explained: float  # share of all neurons' variance in terms that use only key frequencies
    neuron_frequency: Int[Tensor, " d_mlp"]  # each neuron's dominant frequency
    neuron_share: Float[Tensor, " d_mlp"]  # the share of its variance that frequency explains
    embedding_norms: Float[Tensor, " n_freq"]


def summarise(
    acts: Float[Tensor, "p p d_mlp"], W_E: Float[Tensor, "p d_model"], n_keys: int = 5, min_share: float = 0.5
) -> FourierSummary:
    """Key frequencies = the most common dominant frequencies among neurons that one frequency explains well."""
    p = acts.shape[0]
    share = neuron_frequency_share(acts)
    best_share, best = share.max(1)
    clustered = best[best_share >= min_share] + 1
    counts = torch.bincount(clustered, minlength=p // 2 + 1)[1:].float() if clustered.numel() else torch.zeros(p // 2)
    keys = [int(k) + 1 for k in counts.argsort(descending=True)[:n_keys] if counts[k] > 0]
    return FourierSummary(keys, explained_by(acts, keys), best + 1, best_share, embedding_frequency_norms(W_E))


def explained_by(acts: Float[Tensor, "p p d_mlp"], frequencies: Sequence[int]) -> float:
    """Share of all neurons' variance over (a, b) in the Fourier terms that use only these frequencies."""
    p = acts.shape[0]
    c2 = _coefficients(acts).pow(2)
    c2[0, 0] = 0.0
    freq = _freq_of_row(p)
    rows = (freq == 0) | torch.isin(freq, torch.tensor(list(frequencies), dtype=freq.dtype))
    return float(c2[rows][:, rows].sum() / c2.sum().clamp_min(1e-12))


@torch.no_grad()
def neuron_grid(
    model: Transformer, tokens: Int[Tensor, "pairs pos"], p: int, layer: int = 0, pos: int = -1
) -> Float[Tensor, "p p d_mlp"]:
    """MLP activations at `pos` for the p*p prompts `tokens`, whose row a * p + b holds the pair (a, b)."""
    if model.cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLP neurons to analyse")
    if tokens.shape[0] != p * p:
        raise ValueError(f"need p*p = {p * p} prompts, one per (a, b) in row a * p + b; got {tokens.shape[0]}")
    name = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(tokens.to(next(model.parameters()).device), names=name, stop_early=True)
    return cache[name][:, pos].cpu().view(p, p, -1)


def fourier_verdict(summary: FourierSummary, test_accuracy: float | None, step: int) -> str:
    """What the summary means for this run, in words; a run that has not grokked is expected to look unorganised.

    Grokked means test accuracy above 0.99 (ModularAdditionTask.evaluate). A grokked network of the
    Nanda et al. kind keeps most of its MLP's variance in a few key frequencies.
    """
    share = f"{summary.explained:.0%} of the MLP's variance lies in the key frequencies {summary.key_frequencies}"
    if test_accuracy is None:
        return f"{share}; the run logged no test accuracy, so whether it has grokked is unknown."
    if test_accuracy <= 0.99:
        return (
            f"This run has not grokked (test accuracy {test_accuracy:.3f} at step {step}): {share}. Before grokking "
            "the network memorises the training pairs and is not expected to use a few frequencies, so a low share "
            "here means 'not yet', not that the Fourier algorithm is absent; train longer (weight decay drives it)."
        )
    if summary.explained < 0.5:
        return (
            f"Grokked (test accuracy {test_accuracy:.3f}), yet only {share}: it generalises by some other means than "
            "a few frequencies, or its frequencies are spread; look at the per-neuron table."
        )
    return f"Grokked (test accuracy {test_accuracy:.3f}) and {share}: the sparse Fourier algorithm of Nanda et al."


def fourier_figure(summary: FourierSummary) -> go.Figure:
    """Embedding norm per frequency, and how many neurons each frequency dominates."""
    n_freq = summary.embedding_norms.shape[0]
    freqs = list(range(1, n_freq + 1))
    counts = torch.bincount(summary.neuron_frequency[summary.neuron_share >= 0.5] - 1, minlength=n_freq)
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("embedding norm per frequency", "neurons dominated by each frequency")
    )
    fig.add_trace(go.Bar(x=freqs, y=summary.embedding_norms.tolist(), name="embedding"), row=1, col=1)
    fig.add_trace(go.Bar(x=freqs, y=counts.tolist(), name="neurons"), row=1, col=2)
    fig.update_xaxes(title_text="frequency k")
    fig.update_layout(
        title=f"key frequencies {summary.key_frequencies}: {summary.explained:.0%} of MLP variance", showlegend=False
    )
    return fig


# `python -m probes.fourier` runs this module's probe script, probes/scripts/fourier.py
if __name__ == "__main__":
    from probes.scripts.fourier import main

    main()
