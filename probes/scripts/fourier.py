"""Key Fourier frequencies of a modular-addition run, the share of MLP variance they explain, and grokking's progress measures over training.

sandbox probe fourier --run runs/modular_addition --out out/fourier [--no-progress]

The share is set against the share random frequency sets of the same size explain (the chance
baseline). The progress measures of Nanda et al. (2023) are evaluated at every checkpoint,
with the final checkpoint's key frequencies, and cached in the run folder (analysis/).
"""

from __future__ import annotations

import argparse

import plotly.graph_objects as go
import torch

from blocks.training.runs import Run, run_dynamics
from probes.dynamics import Dynamics
from probes.fourier import fourier_figure, fourier_verdict, neuron_grid, summarise
from probes.progress_measures import PAPER_PHASES, chance_share, progress_measures
from probes.scripts import cli


def curves_figure(metrics: list[dict]) -> go.Figure:
    """Train and test loss over steps, log scale (grokking shows as the test curve's late collapse)."""
    fig = go.Figure()
    for key, name in (
        ("train_loss", "train loss (batch)"),
        ("eval/train_loss", "train loss"),
        ("eval/test_loss", "test loss"),
    ):
        points = [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
        if points:
            fig.add_trace(go.Scatter(x=[s for s, _ in points], y=[v for _, v in points], name=name, mode="lines"))
    fig.update_layout(title="modular addition: loss", xaxis_title="step", yaxis_title="loss", yaxis_type="log")
    return fig


def phases(progress: Dynamics) -> dict[str, int | None]:
    """Where this run's phases end, by the paper's signs: train loss below 0.1 (memorisation), restricted loss
    below 0.1 (the circuit works on its own), test loss below 0.1 (clean-up done: grokked)."""
    return {
        "memorisation": progress.first_at_most_from_then_on("train_loss", 0.1),
        "circuit formation": progress.first_at_most_from_then_on("restricted_loss", 0.1),
        "clean-up": progress.first_at_most_from_then_on("test_loss", 0.1),
    }


def print_progress(progress: Dynamics) -> None:
    names = list(progress.values)
    print(f"\nprogress measures at {len(progress.steps)} checkpoints ({progress.computed} evaluated now):")
    rows = [[step] + [progress.values[k][i] for k in names] for i, step in enumerate(progress.steps)]
    cli.print_table(rows, ["step", *names])
    print("\nphase ends at   this run (first checkpoint past it)   Nanda et al. 2023 (epochs)")
    for name, step in phases(progress).items():
        print(f"{name:<16}{'never' if step is None else step:<38}{PAPER_PHASES[name][1]:,}")


def body(args: argparse.Namespace, run: Run) -> None:
    p = run.task.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)  # row a * p + b: "a b ="
    acts = neuron_grid(run.model, tokens, p, layer=0, pos=-1)
    summary = summarise(acts, run.model.W_E[:p], n_keys=args.keys)
    last = next((m for m in reversed(run.metrics) if "eval/test_loss" in m), {})
    print(f"run {run.path} at step {run.step}: p={p}, d_mlp={acts.shape[-1]}")
    print(
        f"train loss {last.get('eval/train_loss', float('nan')):.4f}, test loss {last.get('eval/test_loss', float('nan')):.4f}"
    )
    counts = torch.bincount(summary.neuron_frequency[summary.neuron_share >= 0.5], minlength=p // 2 + 1)
    cli.print_table(
        [[k, int(counts[k]), float(summary.embedding_norms[k - 1])] for k in summary.key_frequencies],
        ["key frequency", "neurons it dominates", "embedding norm"],
    )
    chance = chance_share(acts, len(summary.key_frequencies)) if summary.key_frequencies else (float("nan"), 0.0)
    print(
        f"share of MLP variance in the key frequencies: {summary.explained:.3f}; {len(summary.key_frequencies)} random "
        f"frequencies explain {chance[0]:.3f} +- {chance[1]:.3f} (chance)"
    )
    if summary.key_frequencies and summary.explained < chance[0] + 2 * chance[1]:
        print("that is within chance: this model has not organised its neurons by frequency (it has not grokked)")
    print(fourier_verdict(summary, last.get("eval/test_acc"), run.step))
    progress = None
    if args.progress and summary.key_frequencies:
        train, test = run.task.all_pairs()
        progress = run_dynamics(
            run.path,
            lambda model: progress_measures(model, p, summary.key_frequencies, train, test),
            "progress_measures",
            {"keys": summary.key_frequencies},
            device=args.device,
        )
        print_progress(progress)
    cli.write_json(
        args.out,
        "grokking",
        {
            "p": p,
            "step": run.step,
            "key_frequencies": summary.key_frequencies,
            "explained": summary.explained,
            "neuron_frequency": summary.neuron_frequency,
            "neuron_share": summary.neuron_share,
            "embedding_norms": summary.embedding_norms,
            "last_eval": last,
            "chance_share": {"mean": chance[0], "std": chance[1]},
            "progress": None if progress is None else {"steps": progress.steps, "values": progress.values},
            "phases": None if progress is None else phases(progress),
            "paper_phases": PAPER_PHASES,
        },
    )
    cli.write_figure(args.out, "fourier", fourier_figure(summary))
    cli.write_figure(args.out, "curves", curves_figure(run.metrics))


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=5, help="how many key frequencies to name (default 5)")
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="skip the progress measures over checkpoints"
    )
    cli.main(p, body, tasks=("modular_addition",), argv=argv)


if __name__ == "__main__":
    main()
