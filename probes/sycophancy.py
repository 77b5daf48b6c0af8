"""Where a model reads a user's stated preference, and what switching those heads off does.

Pure functions over a model and a task whose prompts carry a user's opinion (`OpinionTask`:
what blocks.tasks.SycophancyTask provides, read through a protocol so this library needs no task):
attention mass from the answer position to the opinion slot, head patching between two
opinions of the same prompt, MLP neurons that respond to a conflict between the facts and
the opinion, the information flowing from the opinion slot into the answer, linear probes
for the opinion and the truth, and the before/after table of ablating the opinion heads.
`sandbox probe sycophancy` strings them together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from blocks.transformer import Transformer
from probes.ablation import Ablation, head_ablation
from probes.information_flow import FlowGraph, information_flow
from probes.patching import Metric, PatchingResult, patch_heads
from probes.probing import IGNORE, LayerProbes, probe_layers

Head = tuple[int, int]  # (layer, head)


@runtime_checkable
class OpinionPrompts(Protocol):
    """Prompts ending at the answer position, with each one's true answer and stated opinion (value indices, -1 for none)."""

    tokens: Int[Tensor, "batch pos"]
    truth: Int[Tensor, " batch"]
    opinion: Int[Tensor, " batch"]


@runtime_checkable
class OpinionTask(Protocol):
    """What these analyses read of a task: where the opinion and the answer sit, the value tokens, its metrics."""

    answer_pos: int  # where the model answers
    opinion_pos: int  # the slot holding the user's opinion
    value_ids: Int[Tensor, " n_values"]  # token id of each value
    none: int  # token id of "no opinion" in the slot
    n_values: int

    def check_prompts(self, tokens: Tensor) -> None: ...

    def answers(self, model: torch.nn.Module, tokens: Tensor) -> Tensor: ...

    def metrics(self, pred: Tensor, truth: Tensor, opinion: Tensor) -> dict[str, float]: ...


def check_task(task: object) -> OpinionTask:
    """The task itself if it has an opinion slot; otherwise a clear error (these analyses need one)."""
    if not isinstance(task, OpinionTask):
        raise ValueError(
            f"this analysis needs a run of the 'sycophancy' task (prompts with a user-opinion slot), "
            f"but the run's task is {getattr(task, 'name', type(task).__name__)!r}; train one with "
            "`sandbox train --task sycophancy --out runs/sycophancy`"
        )
    return task


def _states_an_opinion(task: OpinionTask, prompts: OpinionPrompts) -> bool:
    return not bool((prompts.tokens[:, task.opinion_pos] == task.none).any())


def _device(model: Transformer) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def opinion_attention(
    model: Transformer, task: OpinionTask, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "layer n_heads"]:
    """Mean attention each head pays from the answer position to the opinion slot."""
    task.check_prompts(tokens)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens.to(_device(model)), names=names)
    rows = [cache[n][:, :, task.answer_pos, task.opinion_pos].mean(0) for n in names]
    return torch.stack(rows).cpu()


def swap_opinion(task: OpinionTask, prompts: OpinionPrompts, seed: int = 0) -> OpinionPrompts:
    """The same prompts with a different wrong opinion (neither the truth nor the old opinion)."""
    task.check_prompts(prompts.tokens)
    if not _states_an_opinion(task, prompts):
        raise ValueError("swap_opinion needs prompts that all carry an opinion; got some with '-' in the slot")
    if task.n_values < 3:
        raise ValueError(f"a second wrong opinion needs at least 3 values; this task has n_values={task.n_values}")
    gen = torch.Generator().manual_seed(seed)
    new = prompts.opinion.clone()
    todo = torch.ones_like(new, dtype=torch.bool)
    while todo.any():  # redraw until each new opinion differs from both the truth and the old opinion
        draw = torch.randint(0, task.n_values, new.shape, generator=gen)
        ok = todo & (draw != prompts.truth) & (draw != prompts.opinion)
        new = torch.where(ok, draw, new)
        todo &= ~ok
    tokens = prompts.tokens.clone()
    tokens[:, task.opinion_pos] = task.value_ids[new]
    return dataclasses.replace(prompts, tokens=tokens, opinion=new)


def opinion_logit_diff(task: OpinionTask, first: Int[Tensor, " batch"], second: Int[Tensor, " batch"]) -> Metric:
    """A patching metric: mean logit of opinion `first` minus opinion `second` at the answer position."""
    a, b = task.value_ids[first], task.value_ids[second]
    rows = torch.arange(len(first))

    def metric(logits: Tensor) -> Tensor:
        at = logits[:, task.answer_pos]
        return (at[rows, a.to(at.device)] - at[rows, b.to(at.device)]).mean()

    return metric


def opinion_patching(model: Transformer, task: OpinionTask, prompts: OpinionPrompts, seed: int = 0) -> PatchingResult:
    """Patch each head's output from the prompt with one opinion into the same prompt with another.

    Clean: opinion A; corrupted: opinion B; metric: logit(A) - logit(B). A head whose patch
    restores the clean metric (normalised value near 1) carries the opinion to the answer.
    """
    other = swap_opinion(task, prompts, seed)
    device = _device(model)
    metric = opinion_logit_diff(task, prompts.opinion, other.opinion)
    return patch_heads(model, prompts.tokens.to(device), other.tokens.to(device), metric)


def pick_heads(patching: PatchingResult, threshold: float = 0.1, max_heads: int = 3) -> list[Head]:
    """Heads whose patch restores at least `threshold` of the opinion's effect, strongest first.

    When none reaches the threshold (an untrained model) the single strongest head is
    returned, so an analysis always has something to test; its effect says how little it is.
    """
    if max_heads < 1:
        raise ValueError(f"max_heads must be at least 1, got {max_heads}")
    effect = patching.normalized().flatten()
    order = effect.argsort(descending=True).tolist()
    n_heads = patching.values.shape[1]
    picked = [(i // n_heads, i % n_heads) for i in order if float(effect[i]) >= threshold]
    return picked[:max_heads] or [(order[0] // n_heads, order[0] % n_heads)]


def choose_heads(
    model: Transformer,
    task: OpinionTask,
    candidates: Sequence[Head],
    calibration: dict[str, OpinionPrompts],
    max_drop: float = 0.02,
) -> list[Head]:
    """Add candidates one by one (strongest first), keeping each only if accuracy with no opinion stays within `max_drop`.

    A head that carries the opinion may also help answer from the facts; ablating it would
    buy less sycophancy with lost accuracy. Choose on calibration prompts, report on others.
    """
    if "none" not in calibration:
        raise ValueError(f"calibration needs a 'none' set of prompts without an opinion; got {sorted(calibration)}")
    reference = calibration["none"].tokens
    base = behaviour(model, task, calibration)["acc_no_opinion"]
    chosen: list[Head] = []
    for head in candidates:
        trial = [*chosen, head]
        acc = behaviour(model, task, calibration, head_ablations(model, trial, reference))["acc_no_opinion"]
        if base - acc <= max_drop:
            chosen = trial
    return chosen


@dataclass(frozen=True)
class ConflictNeurons:
    """Mean activation at the answer position of every MLP neuron, when the opinion is wrong, right, or absent.

    `score` = (wrong - right) / pooled std: how much more a neuron fires when the opinion
    contradicts the facts than when it agrees with them (same facts, only the opinion changes).
    """

    wrong: Float[Tensor, "layer d_mlp"]
    right: Float[Tensor, "layer d_mlp"]
    none: Float[Tensor, "layer d_mlp"]
    score: Float[Tensor, "layer d_mlp"]

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The k (layer, neuron, score) with the largest |score|."""
        flat = self.score.flatten()
        idx = flat.abs().argsort(descending=True)[:k].tolist()
        d_mlp = self.score.shape[1]
        return [(i // d_mlp, i % d_mlp, float(flat[i])) for i in idx]


@torch.no_grad()
def conflict_neurons(model: Transformer, task: OpinionTask, wrong: OpinionPrompts) -> ConflictNeurons:
    """Compare neurons on prompts with a wrong opinion against the same prompts with the right opinion and none."""
    if model.cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLP neurons to compare")
    task.check_prompts(wrong.tokens)
    right_tokens = wrong.tokens.clone()
    right_tokens[:, task.opinion_pos] = task.value_ids[wrong.truth]
    none_tokens = wrong.tokens.clone()
    none_tokens[:, task.opinion_pos] = task.none
    names = [f"blocks.{i}.mlp.hook_post" for i in range(model.cfg.n_layers)]

    def acts(tokens: Tensor) -> Tensor:  # layer batch d_mlp
        _, cache = model.run_with_cache(tokens.to(_device(model)), names=names)
        return torch.stack([cache[n][:, task.answer_pos] for n in names]).cpu()

    w, r, n = acts(wrong.tokens), acts(right_tokens), acts(none_tokens)
    pooled = ((w.var(1) + r.var(1)) / 2).sqrt().clamp_min(1e-3)
    return ConflictNeurons(w.mean(1), r.mean(1), n.mean(1), (w.mean(1) - r.mean(1)) / pooled)


@dataclass(frozen=True)
class OpinionFlow:
    """Information-flow routes of one conflicting prompt, and how much reaches the answer from the opinion slot.

    `opinion_share[layer]` is the importance of the attention edge opinion -> answer position
    in that layer (0 where the edge was not kept); `opinion_heads[layer]` splits it per head.
    """

    graph: FlowGraph
    opinion_share: Float[Tensor, " layer"]
    opinion_heads: Float[Tensor, "layer n_heads"]


def opinion_flow(
    model: Transformer, task: OpinionTask, tokens: Int[Tensor, "one pos"], tau: float = 0.04
) -> OpinionFlow:
    """The routes into the answer position of one prompt, with the opinion slot's share per layer and head."""
    task.check_prompts(tokens)
    graph = information_flow(model, tokens[:1, : task.answer_pos + 1], target_pos=task.answer_pos, tau=tau)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    share, heads = torch.zeros(L), torch.zeros(L, H)
    into = "resid_post" if model.cfg.attn_only else "resid_mid"
    for e_idx, edge in enumerate(graph.edges):
        src, dst = graph.nodes[edge.src], graph.nodes[edge.dst]
        if edge.kind != "attn" or src.pos != task.opinion_pos or dst.pos != task.answer_pos:
            continue
        layer = src.layer
        if into == "resid_mid" and dst.kind != "resid_mid":
            continue
        share[layer] += edge.importance
        heads[layer] += graph.head_contributions[e_idx]
    return OpinionFlow(graph, share, heads)


@dataclass(frozen=True)
class OpinionProbes:
    """Linear probes at the answer position for the user's opinion and for the true answer, per stream."""

    opinion: LayerProbes
    truth: LayerProbes
    opinion_random: LayerProbes
    truth_random: LayerProbes


def opinion_probes(
    model: Transformer, task: OpinionTask, prompts: OpinionPrompts, random_model: Transformer
) -> OpinionProbes:
    """Probe the answer position's residual stream for the opinion and the truth, with controls and a random model.

    Use prompts whose opinion is wrong, so that the two labels differ and a probe cannot
    read one through the other.
    """
    task.check_prompts(prompts.tokens)
    if not _states_an_opinion(task, prompts):
        raise ValueError("probe the opinion on prompts that all carry one; got some with '-' in the slot")
    tokens = prompts.tokens

    def at_answer(values: Tensor) -> Tensor:
        labels = torch.full(tokens.shape, IGNORE, dtype=torch.long)
        labels[:, task.answer_pos] = values
        return labels

    op, tr = at_answer(prompts.opinion), at_answer(prompts.truth)
    return OpinionProbes(
        probe_layers(model, tokens, op),
        probe_layers(model, tokens, tr),
        probe_layers(random_model, tokens, op),
        probe_layers(random_model, tokens, tr),
    )


def head_ablations(model: Transformer, heads: Sequence[Head], reference: Int[Tensor, "batch pos"]) -> list[Ablation]:
    """Mean-ablate `heads` with their mean output on `reference` (prompts without an opinion).

    The mean over no-opinion prompts is what the head writes when there is nothing to defer
    to, so answers to those prompts barely move while the opinion loses its carrier.
    """
    if not heads:
        raise ValueError("give at least one (layer, head) to ablate")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    ref = reference.to(_device(model))
    return [
        head_ablation(model, layer, hs, method="mean", reference_tokens=ref) for layer, hs in sorted(by_layer.items())
    ]


@torch.no_grad()
def behaviour(
    model: Transformer, task: OpinionTask, sets: dict[str, OpinionPrompts], ablations: Sequence[Ablation] = ()
) -> dict[str, float]:
    """The task's metrics (accuracy with no / right / wrong opinion, sycophancy rate) under `ablations`."""
    preds, truth, opinion = [], [], []
    with model.hooks(fwd=[a.pair() for a in ablations]):
        for p in sets.values():
            preds.append(task.answers(model, p.tokens))
            truth.append(p.truth)
            opinion.append(p.opinion)
    return task.metrics(torch.cat(preds), torch.cat(truth), torch.cat(opinion))


# -- figures ------------------------------------------------------------------------------


def opinion_heads_figure(attention: Float[Tensor, "layer n_heads"], patching: PatchingResult) -> go.Figure:
    """Two heatmaps side by side: attention to the opinion slot, and the normalised patching effect, per head."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("attention answer -> opinion", "patching effect (1 = carries it all)")
    )
    L, H = attention.shape
    x, y = [f"H{h}" for h in range(H)], [f"L{l}" for l in range(L)]
    fig.add_trace(
        go.Heatmap(
            z=attention.tolist(),
            x=x,
            y=y,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate="%{y}%{x}: %{z:.3f}<extra></extra>",
        ),
        1,
        1,
    )
    fig.add_trace(
        go.Heatmap(
            z=patching.normalized().tolist(),
            x=x,
            y=y,
            colorscale="RdBu",
            zmid=0,
            hovertemplate="%{y}%{x}: %{z:.3f}<extra></extra>",
        ),
        1,
        2,
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="which heads read the user's opinion")
    return fig


def conflict_neurons_figure(neurons: ConflictNeurons, k: int = 10) -> go.Figure:
    """Bars of the top-k conflict neurons' mean activation with a wrong, a right and no opinion."""
    top = neurons.top(k)
    names = [f"L{l}N{n}" for l, n, _ in top]
    fig = go.Figure()
    for label, values in (
        ("wrong opinion", neurons.wrong),
        ("right opinion", neurons.right),
        ("no opinion", neurons.none),
    ):
        fig.add_trace(go.Bar(x=names, y=[float(values[l, n]) for l, n, _ in top], name=label))
    fig.update_layout(
        title="neurons that respond to a conflict between facts and opinion",
        barmode="group",
        xaxis_title="neuron",
        yaxis_title="mean activation at the answer",
    )
    return fig


def intervention_figure(before: dict[str, float], after: dict[str, float], title: str) -> go.Figure:
    """Grouped bars of each metric before and after the intervention."""
    keys = list(before)
    fig = go.Figure(
        [
            go.Bar(x=keys, y=[before[k] for k in keys], name="before"),
            go.Bar(x=keys, y=[after[k] for k in keys], name="after"),
        ]
    )
    fig.update_layout(title=title, barmode="group", yaxis_range=[0, 1.05])
    return fig


# `python -m probes.sycophancy` runs this module's probe script, probes/scripts/sycophancy.py
if __name__ == "__main__":
    from probes.scripts.sycophancy import main

    main()
