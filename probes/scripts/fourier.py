"""Key Fourier frequencies of a modular-addition run, the share of MLP variance they explain, and its curves.

sandbox probe fourier --run runs/modular_addition --out out/fourier
"""

from __future__ import annotations

import argparse

import plotly.graph_objects as go
import torch

from blocks.training.runs import Run
from probes.fourier import fourier_figure, fourier_verdict, neuron_grid, summarise
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
    print(f"share of MLP variance in the key frequencies: {summary.explained:.3f}")
    print(fourier_verdict(summary, last.get("eval/test_acc"), run.step))
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
        },
    )
    cli.write_figure(args.out, "fourier", fourier_figure(summary))
    cli.write_figure(args.out, "curves", curves_figure(run.metrics))


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=5, help="how many key frequencies to name (default 5)")
    cli.main(p, body, tasks=("modular_addition",), argv=argv)


if __name__ == "__main__":
    main()
