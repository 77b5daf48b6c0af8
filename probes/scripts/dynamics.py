"""How induction forms over training (Olsson et al. 2022): head scores, K-composition and the in-context score at every checkpoint.

    python -m probes.dynamics --run runs/induction --out out/dynamics

Evaluated once per checkpoint and cached in the run folder (analysis/), so a second call
reads every step back. Prints each step's measures and the steps where things change: the
first checkpoint with an induction head (score above 0.4), the steepest change of the
in-context score and of K-composition, and the steepest fall of the repeated half's loss
in the logged evaluations.
"""

from __future__ import annotations

import argparse
import time

from blocks.training.runs import Run, run_dynamics
from probes.dynamics import dynamics_figure, induction_measures
from probes.head_scores import THRESHOLD, repeated_tokens
from probes.scripts import cli


def steepest_fall(metrics: list[dict], key: str) -> int | None:
    """The logged step that ends the steepest fall of `key` per step (None with fewer than two values)."""
    points = [(m["step"], m[key]) for m in metrics if key in m]
    if len(points) < 2:
        return None
    falls = [(b[1] - a[1]) / max(b[0] - a[0], 1) for a, b in zip(points, points[1:])]
    return points[falls.index(min(falls)) + 1][0]


def body(args: argparse.Namespace, run: Run) -> None:
    task = run.task
    n = task.eval_n
    repeated = repeated_tokens(n, 32, 1, task.n_symbols + 1, 0, seed=args.seed).to(args.device)
    late = task.generate(64, seed=1_000 + args.seed)[0].to(args.device)
    started = time.perf_counter()
    dynamics = run_dynamics(
        run.path,
        lambda model: induction_measures(model, repeated, n, late),
        "induction_measures",
        {"n": n, "seed": args.seed, "batch": 32, "late_batch": 64},
        device=args.device,
    )
    seconds = time.perf_counter() - started
    print(
        f"{len(dynamics.steps)} checkpoints, {dynamics.computed} evaluated now, the rest read from "
        f"{run.path}/analysis: {seconds:.2f} s"
    )
    names = list(dynamics.values)
    rows = [[step] + [dynamics.values[k][i] for k in names] for i, step in enumerate(dynamics.steps)]
    cli.print_table(rows, ["step", *names])
    formed = dynamics.first_above("induction_later", THRESHOLD)
    marks = {
        "induction head": formed,
        "in-context score": dynamics.steepest_change("in_context_score"),
        "loss on the repeat": steepest_fall(run.metrics, "eval/loss_repeated_half"),
    }
    if "k_composition_max" in dynamics.values:
        marks["K-composition"] = dynamics.steepest_change("k_composition_max")
    print()
    if formed is None:
        print(f"no induction head (score above {THRESHOLD}) at any checkpoint: this run has not formed one")
    for label, step in marks.items():
        print(f"{label}: {'never' if step is None else f'step {step}'}")
    print(
        "the in-context score is the loss at the last predicted position minus at the first: it falls when the "
        "context starts to help, which on this task is when the induction heads form"
    )
    cli.write_json(args.out, "dynamics", {"steps": dynamics.steps, "values": dynamics.values, "marks": marks})
    cli.write_figure(args.out, "dynamics", dynamics_figure(dynamics, names, marks))


def main(argv: list[str] | None = None) -> None:
    cli.main(cli.parser(__doc__.split("\n\n")[0]), body, tasks=("induction",), argv=argv)


if __name__ == "__main__":
    main()
