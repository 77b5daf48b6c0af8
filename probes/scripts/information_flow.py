"""Information-flow routes (Ferrando & Voita) of one prompt, as an HTML figure and JSON.

sandbox probe information_flow --run runs/induction --out out/flow [--prompt "..."] [--target-pos -1] [--tau 0.04]
"""

from __future__ import annotations

import argparse

import torch

from blocks.training.runs import Run
from probes.information_flow import TAU, flow_figure, information_flow
from probes.scripts import cli


def body(args: argparse.Namespace, run: Run) -> None:
    # only an absent --prompt means "use the task's example"; an empty one is a mistake
    ids = run.tokenizer.encode(args.prompt) if args.prompt is not None else run.task.example(args.seed)
    if not ids:
        raise ValueError(
            f"--prompt is empty; give at least one token, e.g. {run.tokenizer.decode(run.task.example(args.seed))!r}, "
            "or leave --prompt out to use an example of the run's task"
        )
    tokens = torch.tensor(ids, device=args.device)
    graph = information_flow(run.model, tokens, target_pos=args.target_pos, tau=args.tau)
    labels = run.tokenizer.token_strs(ids)
    print(f"prompt: {run.tokenizer.decode(ids)}")
    print(
        f"routes into position {graph.target_pos} ({labels[graph.target_pos]!r}) at tau={graph.tau}: "
        f"{len(graph.nodes)} nodes, {len(graph.edges)} edges\n"
    )
    attn = sorted((e for e in graph.edges if e.kind == "attn"), key=lambda e: -e.importance)[:10]
    rows = []
    for e in attn:
        src, dst = graph.nodes[e.src], graph.nodes[e.dst]
        heads = graph.head_contributions[graph.edges.index(e)]
        rows.append(
            [
                f"L{src.layer}",
                f"{src.pos} {labels[src.pos]!r}",
                f"{dst.pos} {labels[dst.pos]!r}",
                e.importance,
                f"H{int(heads.argmax())}",
            ]
        )
    cli.print_table(rows, ["layer", "from", "to", "importance", "top head"])
    cli.write_json(
        args.out,
        "flow",
        {
            "prompt": ids,
            "tokens": labels,
            "target_pos": graph.target_pos,
            "tau": graph.tau,
            "nodes": [{"layer": v.layer, "pos": v.pos, "kind": v.kind} for v in graph.nodes],
            "edges": [{"src": e.src, "dst": e.dst, "importance": e.importance, "kind": e.kind} for e in graph.edges],
            "head_contributions": {str(k): v for k, v in graph.head_contributions.items()},
            "neuron_contributions_top": {
                str(k): v.topk(min(5, v.numel())).indices for k, v in graph.neuron_contributions.items()
            },
        },
    )
    cli.write_figure(args.out, "flow", flow_figure(graph, labels))


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--prompt", help="prompt text for the run's tokenizer (default: an example of the run's task)")
    p.add_argument("--target-pos", type=int, default=-1, help="position whose routes to trace (default: the last)")
    p.add_argument("--tau", type=float, default=TAU, help=f"edge threshold (default {TAU})")
    cli.main(p, body, argv=argv)


if __name__ == "__main__":
    main()
