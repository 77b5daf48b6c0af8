"""Any analysis over a run's checkpoints, cached on disk, and the measures of how induction forms (Olsson et al. 2022).

`over_checkpoints` evaluates a function of the model at every step it is given, reading each
step's numbers from a JSON file in `cache_dir` when one with the same key and the same
checkpoint file exists, so scripts and the app never compute a step twice. It takes a loader
(step -> model) rather than a run folder: run folders belong to blocks.training, which sits above
this library (`blocks.training.runs.run_dynamics` passes its own loader).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from jaxtyping import Int
from torch import Tensor

from blocks.transformer import Transformer
from blocks.weights import atomic_write_bytes
from probes.circuit.composition import composition_scores
from probes.head_scores import THRESHOLD, head_scores


@dataclass(frozen=True)
class Dynamics:
    """`values[name][i]` is the measure `name` at `steps[i]`; `computed` counts the steps not read from the cache."""

    steps: list[int]
    values: dict[str, list[float]]
    computed: int = 0

    def first_above(self, name: str, threshold: float) -> int | None:
        """The first step at which `name` exceeds `threshold` (None if it never does)."""
        return next((s for s, v in zip(self.steps, self.values[name]) if v > threshold), None)

    def first_at_most_from_then_on(self, name: str, threshold: float) -> int | None:
        """The first step at which `name` is at or below `threshold` and stays there at every later checkpoint."""
        values = self.values[name]
        for i in range(len(values)):
            if all(v <= threshold for v in values[i:]):
                return self.steps[i]
        return None

    def steepest_change(self, name: str) -> int:
        """The step that ends the interval over which `name` changes most per log-step: where a phase change sits."""
        if len(self.steps) < 2:
            raise ValueError("a change needs at least two checkpoints")
        xs = [math.log1p(s) for s in self.steps]
        ys = self.values[name]
        rates = [abs(ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)]
        return self.steps[rates.index(max(rates)) + 1]


def cache_key(name: str, arguments: Mapping[str, Any]) -> str:
    """A folder name for one analysis with its arguments: readable name, then a hash of the arguments."""
    digest = hashlib.sha256(json.dumps(dict(arguments), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def over_checkpoints(
    steps: Sequence[int],
    load: Callable[[int], Transformer],
    measure: Callable[[Transformer], Mapping[str, float]],
    cache_dir: Path | None = None,
    stamp: Callable[[int], str] | None = None,
) -> Dynamics:
    """`measure(model at step)` for every step; cached per step in `cache_dir` as JSON, checked against `stamp(step)`.

    `stamp` names the checkpoint's content (e.g. its file's size and mtime): a cached step whose
    stamp differs, or a cache file that cannot be read, is computed again and rewritten.
    """
    if not steps:
        raise ValueError("no checkpoints to evaluate")
    values: dict[str, list[float]] = {}
    computed = 0
    for step in steps:
        path = None if cache_dir is None else Path(cache_dir) / f"step_{step:06d}.json"
        mark = None if stamp is None else stamp(step)
        found = _read(path, mark)
        if found is None:
            with torch.no_grad():
                found = {k: float(v) for k, v in measure(load(step)).items()}
            computed += 1
            if path is not None:  # a temporary file and a rename: a link at the name is replaced, never followed
                atomic_write_bytes(path, json.dumps({"stamp": mark, "values": found}).encode())
        for k, v in found.items():
            values.setdefault(k, []).append(v)
    lengths = {len(v) for v in values.values()}
    if lengths != {len(steps)}:
        raise ValueError("the measure returned different names at different steps; it must return the same keys")
    return Dynamics(list(steps), values, computed)


def _read(path: Path | None, mark: str | None) -> dict[str, float] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a torn or foreign file: compute again
    if not isinstance(data, dict) or data.get("stamp") != mark or not isinstance(data.get("values"), dict):
        return None
    return {k: float(v) for k, v in data["values"].items()}


@torch.no_grad()
def in_context_score(model: Transformer, tokens: Int[Tensor, "batch pos"], early: int, late: int) -> float:
    """Olsson et al.'s in-context-learning score: mean loss at position `late` minus at position `early` (nats).

    Negative when later tokens are predicted better than early ones, i.e. the context helps.
    """
    if not 0 <= early < late < tokens.shape[1] - 1:
        raise ValueError(
            f"need 0 <= early < late < {tokens.shape[1] - 1} (positions that predict a token), got {early}, {late}"
        )
    logits = model(tokens)
    nll = -logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    return float(nll[:, late].mean() - nll[:, early].mean())


@torch.no_grad()
def induction_measures(
    model: Transformer, repeated: Int[Tensor, "batch pos"], n: int, late_tokens: Int[Tensor, "batch_l pos_l"]
) -> dict[str, float]:
    """What Olsson et al. follow over training, on one model.

    `repeated` is [BOS] + r + r with r of n tokens (head scores); `late_tokens` are the task's own
    sequences (the in-context score between their first and last predicted positions).
    Returns the strongest previous-token head of the first layer, the strongest induction head
    of a later layer, the largest K-composition from a layer-0 head into a later head, and the
    in-context score.
    """
    scores = head_scores(model, repeated, n)
    out = {
        "previous_token_l0": float(scores["previous_token"][0].max()),
        "induction_later": float(scores["induction"][1:].max()) if model.cfg.n_layers > 1 else 0.0,
        "in_context_score": in_context_score(model, late_tokens, 1, late_tokens.shape[1] - 2),
    }
    if model.cfg.n_layers > 1:
        k = composition_scores(model, "k")[0, :, 1:]
        out["k_composition_max"] = float(k.nan_to_num(0.0).max())
    return out


def dynamics_figure(dynamics: Dynamics, names: Sequence[str], marks: Mapping[str, int | None] = ()) -> go.Figure:
    """Each named measure over training steps (log axis), with vertical lines at the marked steps."""
    fig = go.Figure()
    x = [s + 1 for s in dynamics.steps]  # a log axis has no 0: step s is drawn at s + 1
    for name in names:
        fig.add_trace(go.Scatter(x=x, y=dynamics.values[name], mode="lines+markers", name=name))
    for label, step in dict(marks).items():
        if step is not None:
            fig.add_vline(x=step + 1, line_dash="dot", annotation_text=label)
    fig.add_hline(y=THRESHOLD, line_dash="dash", line_color="grey", annotation_text=f"head score {THRESHOLD}")
    fig.update_layout(
        title="Induction over training",
        xaxis={"title": "training step + 1 (log axis)", "type": "log"},
        yaxis={"title": "score (in-context score in nats)"},
    )
    return fig


if __name__ == "__main__":
    from probes.scripts.dynamics import main

    main()
