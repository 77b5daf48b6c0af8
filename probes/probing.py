"""Linear probes on cached activations, with a control task (Hewitt & Liang, 2019) and a random-model baseline.

A probe is logistic regression (our own scratchnn.Linear) trained full-batch with L2 on
standardised activations. Its test accuracy says a feature is linearly readable; the
control task (each token type gets a fixed random label) says how much of that a probe
could reach by memorising token types, and selectivity = task - control accuracy. The same
probe on a randomly initialised model says how much is already in the embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from blocks.transformer import Transformer
from scratchnn import Linear

IGNORE = -1  # label of positions the probe should skip


@dataclass(frozen=True)
class ProbeFit:
    """A trained probe and how well it does on held-out rows."""

    train_accuracy: float
    test_accuracy: float
    chance: float  # accuracy of always guessing the most common training label
    probe: nn.Module


@dataclass(frozen=True)
class LayerProbes:
    """Task and control accuracies of a probe on the residual stream before each block and at the end."""

    labels: list[str]
    task_accuracy: Float[Tensor, " stream"]
    control_accuracy: Float[Tensor, " stream"]
    chance: float

    @property
    def selectivity(self) -> Float[Tensor, " stream"]:
        return self.task_accuracy - self.control_accuracy


def fit_probe(
    features: Float[Tensor, "n d"],
    labels: Int[Tensor, " n_labels"],  # checked against features with a clear error
    n_classes: int | None = None,
    l2: float = 1e-3,
    steps: int = 200,
    lr: float = 1.0,
    test_fraction: float = 0.25,
    seed: int = 0,
    groups: Int[Tensor, " n_groups"] | None = None,  # checked against features with a clear error
) -> ProbeFit:
    """Train logistic regression on a random (1 - test_fraction) of the rows; score on the rest.

    `groups` [n] (e.g. the sequence each row came from) makes the split by group: every row of
    a held-out group is in the test set, so the probe is scored on examples it never saw,
    not on other positions of sequences it was trained on.
    """
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {labels.shape[0]} labels; give one label per row")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if labels.min() < 0:
        raise ValueError("labels must be >= 0 here; drop IGNORE rows first (probe_layers does)")
    n = features.shape[0]
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    if int(labels.max()) >= n_classes:
        raise ValueError(
            f"labels go up to {int(labels.max())} but n_classes is {n_classes}; give n_classes > every label"
        )
    train, test = _split(n, test_fraction, seed, groups)
    x = features.detach().float().cpu()
    mu, sd = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mu) / sd
    y = labels.cpu()
    # Linear's own init draws from the global generator; fork_rng keeps the caller's state as it
    # was (the draw is thrown away: the probe starts from zeros, so the fit is deterministic)
    with torch.random.fork_rng(devices=[]):
        linear = Linear(x.shape[1], n_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=lr, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(linear(x[train]), y[train]) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = linear(x).argmax(-1)
    chance = float((y[test] == y[train].bincount(minlength=n_classes).argmax()).float().mean())
    standardise = _Standardise(mu, sd)
    return ProbeFit(
        float((pred[train] == y[train]).float().mean()),
        float((pred[test] == y[test]).float().mean()),
        chance,
        nn.Sequential(standardise, linear),
    )


def _split(n: int, test_fraction: float, seed: int, groups: Tensor | None) -> tuple[Tensor, Tensor]:
    """Row indices (train, test): a random test_fraction of the rows, or of the groups when given."""
    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        n_test = int(round(n * test_fraction))
        if n_test < 1 or n - n_test < 2:
            raise ValueError(f"{n} rows are too few to split into train and test; give at least 4")
        order = torch.randperm(n, generator=gen)
        return order[n_test:], order[:n_test]
    if groups.shape != (n,):
        raise ValueError(f"groups has shape {tuple(groups.shape)}; give one group id per feature row, shape ({n},)")
    ids, group_of_row = groups.cpu().unique(return_inverse=True)
    n_test = int(round(len(ids) * test_fraction))
    if n_test < 1 or len(ids) - n_test < 1:
        raise ValueError(f"{len(ids)} groups are too few to hold some out for testing; give at least 2")
    held_out = torch.zeros(len(ids), dtype=torch.bool)
    held_out[torch.randperm(len(ids), generator=gen)[:n_test]] = True
    test_rows = held_out[group_of_row]
    train, test = (~test_rows).nonzero().flatten(), test_rows.nonzero().flatten()
    if len(train) < 2:
        raise ValueError(
            f"only {len(train)} training rows after holding out {n_test} of {len(ids)} groups; give more rows"
        )
    return train, test


class _Standardise(nn.Module):
    def __init__(self, mu: Tensor, sd: Tensor) -> None:
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("sd", sd)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mu) / self.sd


def control_labels(
    tokens: Int[Tensor, "batch pos"], labels: Int[Tensor, "batch pos"], seed: int = 0
) -> Int[Tensor, "batch pos"]:
    """Hewitt & Liang's control task: each token type gets one fixed label, drawn from the task's label distribution."""
    if tokens.shape != labels.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and labels {tuple(labels.shape)} must have the same shape")
    keep = labels != IGNORE
    if not keep.any():
        raise ValueError("every label is IGNORE; nothing to build a control task from")
    gen = torch.Generator().manual_seed(seed)
    counts = labels[keep].bincount().float()
    types = int(tokens.max()) + 1
    per_type = torch.multinomial(counts / counts.sum(), types, replacement=True, generator=gen)
    return torch.where(keep, per_type[tokens], torch.full_like(labels, IGNORE))


@torch.no_grad()
def probe_layers(
    model: Transformer,
    tokens: Int[Tensor, "batch pos"],
    labels: Int[Tensor, "batch pos"],
    l2: float = 1e-3,
    seed: int = 0,
) -> LayerProbes:
    """Fit a probe for `labels` (IGNORE = -1 skips a position) and one for its control task on every stream."""
    if tokens.shape != labels.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and labels {tuple(labels.shape)} must have the same shape")
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(tokens.to(device), names=lambda n: n.endswith(("resid_pre", "resid_post")))
    stack = cache.accumulated_resid()
    tokens, labels = tokens.cpu(), labels.cpu()
    keep = labels != IGNORE
    control = control_labels(tokens, labels, seed)
    n_classes = int(labels.max()) + 1
    # split by sequence: positions of one sequence share its tokens, so a probe tested on other
    # positions of its training sequences would be scored partly on what it memorised
    sequence = torch.arange(tokens.shape[0], device=labels.device)[:, None].expand_as(labels)[keep]
    task_acc, control_acc, chance = [], [], 0.0
    for acts in stack.values:
        x = acts[keep.to(acts.device)].cpu()
        fit = fit_probe(x, labels[keep], n_classes, l2=l2, seed=seed, groups=sequence)
        task_acc.append(fit.test_accuracy)
        chance = fit.chance
        control_acc.append(fit_probe(x, control[keep], n_classes, l2=l2, seed=seed, groups=sequence).test_accuracy)
    return LayerProbes(stack.labels, torch.tensor(task_acc), torch.tensor(control_acc), chance)


def random_model_like(model: Transformer, seed: int = 0) -> Transformer:
    """A freshly initialised model of the same shape: the baseline a trained model's probes must beat."""
    # the blocks' initialisers draw from the global generator and take none of their own, so the
    # seeding is confined to a forked RNG state: the caller's random stream is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = Transformer(model.cfg)
    return fresh.to(next(model.parameters()).device).eval()


def probe_verdict(feature: str, trained: LayerProbes, random: LayerProbes, margin: float = 0.05) -> str:
    """What the best stream's numbers mean, in words: a positive result, or why a null or negative one is one.

    Three checks on the stream where the probe reads `feature` best: above chance at all; above the
    control task (Hewitt & Liang: each token type gets one fixed random label, so a probe can pass it
    only by memorising token identities); above a randomly initialised model of the same shape
    (which can only pass on what the embeddings carry).
    """
    best = int(trained.task_accuracy.argmax())
    name = trained.labels[best]
    acc, control = float(trained.task_accuracy[best]), float(trained.control_accuracy[best])
    rand = float(random.task_accuracy[best])
    if acc <= trained.chance + margin:
        return (
            f"Null result: no stream encodes {feature!r} linearly; the best, {name}, reaches {acc:.3f} against "
            f"chance {trained.chance:.3f}. The model may not compute it, or not in a linear direction."
        )
    lines = []
    if acc <= control + margin:
        lines.append(
            f"Negative result: at {name} the probe reaches {acc:.3f}, but on the control task it reaches {control:.3f}: "
            "a probe that can only memorise token identities does as well, so the accuracy says nothing about a "
            f"{feature!r} representation."
        )
    if acc <= rand + margin:
        lines.append(
            f"A randomly initialised model of the same shape gives {rand:.3f} at {name}: the feature can be read from "
            "the token embeddings alone, so this is not something training taught the model."
        )
    if lines:
        return " ".join(lines)
    return (
        f"Positive result: {name} encodes {feature!r} linearly ({acc:.3f}, against {control:.3f} on the control task "
        f"and {rand:.3f} for a random model)."
    )


def probe_figure(trained: LayerProbes, random: LayerProbes | None = None, title: str = "linear probe") -> go.Figure:
    """Task accuracy, control accuracy and selectivity per stream (and the random model's task accuracy)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=trained.labels, y=trained.task_accuracy.tolist(), name="task", mode="lines+markers"))
    fig.add_trace(
        go.Scatter(x=trained.labels, y=trained.control_accuracy.tolist(), name="control", mode="lines+markers")
    )
    fig.add_trace(go.Bar(x=trained.labels, y=trained.selectivity.tolist(), name="selectivity", opacity=0.4))
    if random is not None:
        fig.add_trace(
            go.Scatter(
                x=random.labels,
                y=random.task_accuracy.tolist(),
                name="task (random model)",
                mode="lines+markers",
                line={"dash": "dot"},
            )
        )
    fig.add_hline(y=trained.chance, line_dash="dash", annotation_text="chance")
    fig.update_layout(
        title=title, xaxis_title="residual stream", yaxis_title="test accuracy", yaxis_range=[-0.05, 1.05]
    )
    return fig


# `python -m probes.probing` runs this module's probe script, probes/scripts/probing.py
if __name__ == "__main__":
    from probes.scripts.probing import main

    main()
