"""Find the circuit behind a task: score every edge, keep the fewest that carry the behaviour, check them exactly.

    python -m probes.circuit --run runs/induction --out out/circuit \
        [--method eap|eap-ig|exact|acdc] [--metric default|logit_diff|log_prob|prob] [--edges N]

The clean and corrupted prompts and the metric are the task's own (`Task.circuit_contrast`):
induction r + r against r' + r, sycophancy a wrong opinion against none, sort and modular
addition another input with another answer. Prints the top edges, the circuit with its
faithfulness and completeness, how the estimate ranks edges against exact edge patching
(Spearman), and the heads that compose; writes circuit.json and the figures.
"""

from __future__ import annotations

import argparse
import time

import torch

from blocks.training.runs import Run
from probes.circuit.attribution import edge_attribution
from probes.circuit.composition import composition_baseline, composition_scores
from probes.circuit.contrast import METRIC_KINDS
from probes.circuit.discovery import acdc, circuit_from_scores
from probes.circuit.exact import EXACT_AUTO_LIMIT, exact_cost, exact_edge_patching
from probes.circuit.figures import agreement_figure, circuit_figure, composition_figure, faithfulness_figure
from probes.circuit.scores import EdgeScores, rank_agreement
from probes.scripts import cli


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--method", default="eap-ig", choices=("eap", "eap-ig", "exact", "acdc"), help="how edges are scored"
    )
    p.add_argument("--steps", type=int, default=5, help="interpolation points of EAP-IG (default 5)")
    p.add_argument("--metric", default="default", choices=("default", *METRIC_KINDS), help="default: the task's own")
    p.add_argument("--n", type=int, default=64, help="clean/corrupted prompt pairs (default 64)")
    p.add_argument("--edges", type=int, default=None, help="circuit size (default: the fewest reaching --target)")
    p.add_argument("--target", type=float, default=0.8, help="faithfulness the circuit must reach (default 0.8)")
    p.add_argument("--threshold", type=float, default=0.01, help="acdc: share of the metric gap an edge may move")
    p.add_argument("--ablation", default="corrupted", choices=("corrupted", "mean"), help="what edges outside it carry")
    p.add_argument(
        "--compare",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also run exact edge patching and rank-correlate (auto: when edges x prompts x positions is at most "
        f"{EXACT_AUTO_LIMIT:,})",
    )
    return p


def body(args: argparse.Namespace, run: Run) -> None:
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    contrast = run.task.circuit_contrast(args.n, seed=args.seed)
    if contrast is None:
        raise ValueError(
            f"task {run.config['task']['name']!r} has no default clean/corrupted prompts; use the library "
            "(probes.circuit) with a Contrast of your own"
        )
    if args.ablation == "mean" and args.method in ("eap", "eap-ig"):
        raise ValueError(
            f"--method {args.method} estimates patching to the corrupted prompts; with --ablation mean use "
            "--method exact or acdc (or leave --ablation at corrupted)"
        )
    if args.metric != "default":
        contrast = contrast.with_metric(args.metric)
    contrast = contrast.to(args.device)
    model = run.model.eval()
    print(f"prompts: {args.n} pairs; metric: {contrast.description}")

    started = time.perf_counter()
    exact: EdgeScores | None = None
    if args.method in ("eap", "eap-ig"):
        scores = edge_attribution(model, contrast, args.method, steps=args.steps)
    else:
        scores = exact = exact_edge_patching(model, contrast, args.ablation)
    seconds = time.perf_counter() - started
    graph = scores.graph
    graph_edges = graph.n_edges
    print(
        f"graph: {len(graph.senders)} senders, {len(graph.receivers)} receivers, {graph_edges} edges; "
        f"{scores.method} scored them in {seconds:.2f} s"
    )
    print(f"metric: clean {scores.clean:.4f}, corrupted {scores.corrupted:.4f}")
    if args.compare == "yes" or (args.compare == "auto" and exact_cost(graph, contrast) <= EXACT_AUTO_LIMIT):
        if exact is None:
            started = time.perf_counter()
            exact = exact_edge_patching(model, contrast, args.ablation)
            print(f"exact edge patching of every edge: {time.perf_counter() - started:.2f} s")

    top = scores.ranked(15)
    rows = [
        [name, value] + ([float(exact.scores[graph.edge(name)])] if exact is not None else []) for name, value in top
    ]
    print()
    cli.print_table(rows, ["edge", f"{scores.method} effect"] + (["exact effect"] if exact is not None else []))

    if args.method == "acdc":
        circuit = acdc(model, contrast, args.threshold, args.ablation)
    else:
        circuit = circuit_from_scores(model, contrast, scores, args.edges, args.target, args.ablation)
    print()
    print(
        f"circuit ({circuit.method}): {circuit.size} of {graph_edges} edges; faithfulness {circuit.faithfulness:.3f} "
        f"(the share of the clean-to-{args.ablation} metric gap it keeps alone), completeness "
        f"{circuit.completeness:.3f} (the share lost when only its edges are patched)"
    )
    if not circuit.has_path:
        print("warning: no path of the circuit's edges leads from the embeddings to the logits")
    for name in circuit.edge_names():
        print(f"  {name}")

    agreement = None
    if exact is not None and scores is not exact:
        agreement = rank_agreement(scores, exact)
        print(f"\nSpearman rank correlation of {scores.method} with exact edge patching: {agreement:.3f}")

    composition = {}
    if model.cfg.n_layers > 1:
        print("\nstrongest composition between heads (random heads give the baseline):")
        rows = []
        for kind in ("q", "k", "v"):
            values = composition_scores(model, kind)
            mean, std = composition_baseline(model, kind)
            flat = values.nan_to_num(-1.0).flatten()
            best = int(flat.argmax())
            la, ha, lb, hb = (int(i) for i in torch.unravel_index(torch.tensor(best), values.shape))
            rows.append([kind.upper(), f"L{la}H{ha} -> L{lb}H{hb}", float(flat[best]), mean, std])
            composition[kind] = {"scores": values, "baseline_mean": mean, "baseline_std": std}
            cli.write_figure(args.out, f"composition_{kind}", composition_figure(values, kind, mean))
        cli.print_table(rows, ["kind", "pair", "score", "baseline", "baseline std"])

    cli.write_json(
        args.out,
        "circuit",
        {
            "contrast": contrast.description,
            "n_prompts": args.n,
            "scores": scores.to_dict(),
            "exact": None if exact is None else exact.to_dict(),
            "spearman_vs_exact": agreement,
            "circuit": circuit.to_dict(),
            "composition": composition,
        },
    )
    cli.write_figure(args.out, "circuit", circuit_figure(circuit.edges, scores, exact))
    if circuit.curve:
        cli.write_figure(args.out, "faithfulness", faithfulness_figure({scores.method: circuit.curve}, args.target))
    if agreement is not None and exact is not None:
        cli.write_figure(args.out, "agreement", agreement_figure(scores, exact))
    print(f"\nwrote {args.out}/circuit.json and figures")


def main(argv: list[str] | None = None) -> None:
    cli.main(build_parser(), body, tasks=None, argv=argv)


if __name__ == "__main__":
    main()
