"""Find the previous-token and induction heads of an induction run, and test them by ablation.

    sandbox probe head_scores --run runs/induction --out out/head_scores

Claims tested (docs/reference.md, "Published results"): zero-ablating the induction heads (every head above the previous-
token head's layer whose induction score is above 0.4, or the best one if none is) raises the
loss on the repeated half of [BOS] + r + r by at least 1 nat; zero-ablating the previous-token
heads (every head of that layer above 0.4, or the best one) brings the induction heads' mean
score below 0.4. Trained models often grow several heads of each kind that back each other up,
so the best one alone is ablated and reported too.
"""

from __future__ import annotations

import argparse

import plotly.graph_objects as go
import torch

from blocks.tasks.common import masked_mean, next_token_nll
from blocks.training.runs import Run
from probes.ablation import Ablation, head_ablation
from probes.head_scores import THRESHOLD, head_scores, head_scores_figure, repeated_tokens
from probes.scripts import cli

MIN_LOSS_RISE = 1.0  # nats


def repeated_half_loss(run: Run, tokens: torch.Tensor, n: int, ablations: list[Ablation]) -> tuple[float, float]:
    """(first-half loss, repeated-half loss) of [BOS] + r + r with the ablations applied."""
    with run.model.hooks(fwd=[a.pair() for a in ablations]):
        nll = next_token_nll(run.model(tokens), tokens)
    pos = torch.arange(2 * n)[None].expand_as(nll)
    return masked_mean(nll, (pos >= 1) & (pos < n)), masked_mean(nll, pos >= n + 1)


def body(args: argparse.Namespace, run: Run) -> None:
    model, task = run.model, run.task
    if model.cfg.n_layers < 2:
        raise ValueError(f"an induction circuit needs at least 2 layers; this model has {model.cfg.n_layers}")
    n = task.eval_n
    tokens = repeated_tokens(n, 64, 1, task.n_symbols + 1, 0, seed=args.seed).to(args.device)
    scores = head_scores(model, tokens, n)
    prev = scores["previous_token"][:-1]  # a previous-token head must sit below the induction head
    prev_layer, prev_head = divmod(int(prev.argmax()), model.cfg.n_heads)
    ind = scores["induction"][prev_layer + 1 :]
    ind_layer, ind_head = divmod(int(ind.argmax()), model.cfg.n_heads)
    ind_layer += prev_layer + 1

    all_ind = [
        (layer, h)
        for layer in range(prev_layer + 1, model.cfg.n_layers)
        for h in range(model.cfg.n_heads)
        if scores["induction"][layer, h] > THRESHOLD
    ] or [(ind_layer, ind_head)]
    clean = repeated_half_loss(run, tokens, n, [])
    ablate_ind = head_ablation(model, ind_layer, [ind_head])
    ablate_all = [
        head_ablation(model, layer, [h for l2, h in all_ind if l2 == layer])
        for layer in sorted({layer for layer, _ in all_ind})
    ]
    all_prev = [h for h in range(model.cfg.n_heads) if scores["previous_token"][prev_layer, h] > THRESHOLD] or [
        prev_head
    ]
    ablate_prev = head_ablation(model, prev_layer, all_prev)
    no_ind = repeated_half_loss(run, tokens, n, [ablate_ind])
    no_all = repeated_half_loss(run, tokens, n, ablate_all)
    no_prev = repeated_half_loss(run, tokens, n, [ablate_prev])
    ind_without = {}
    for label, ablation in (("best", head_ablation(model, prev_layer, [prev_head])), ("all", ablate_prev)):
        with model.hooks(fwd=[ablation.pair()]):
            without = head_scores(model, tokens, n)["induction"]
        ind_without[label] = (
            float(without[ind_layer, ind_head]),
            float(torch.stack([without[layer, h] for layer, h in all_ind]).mean()),
        )
    ind_score_without_prev = ind_without["all"][1]
    prev_names = " ".join(f"L{prev_layer}H{h}" for h in all_prev)

    found = {
        "previous_token_head": {
            "layer": prev_layer,
            "head": prev_head,
            "score": float(scores["previous_token"][prev_layer, prev_head]),
        },
        "induction_head": {
            "layer": ind_layer,
            "head": ind_head,
            "score": float(scores["induction"][ind_layer, ind_head]),
        },
        "induction_heads": [
            {"layer": layer, "head": h, "score": float(scores["induction"][layer, h])} for layer, h in all_ind
        ],
        "loss": {
            "clean": {"first_half": clean[0], "repeated_half": clean[1]},
            "induction_head_ablated": {"first_half": no_ind[0], "repeated_half": no_ind[1]},
            "induction_heads_ablated": {"first_half": no_all[0], "repeated_half": no_all[1]},
            "previous_token_head_ablated": {"first_half": no_prev[0], "repeated_half": no_prev[1]},
        },
        "previous_token_heads": [
            {"layer": prev_layer, "head": h, "score": float(scores["previous_token"][prev_layer, h])} for h in all_prev
        ],
        # (best induction head's score, mean over the induction heads) with the best / all previous-token heads ablated
        "induction_score_with_previous_token_head_ablated": {
            "best_head": ind_without["best"][0],
            "mean": ind_without["best"][1],
        },
        "induction_score_with_previous_token_heads_ablated": {
            "best_head": ind_without["all"][0],
            "mean": ind_without["all"][1],
        },
    }
    found["checks"] = {
        "previous_token_head_above_threshold": found["previous_token_head"]["score"] > THRESHOLD,
        "induction_head_above_threshold": found["induction_head"]["score"] > THRESHOLD,
        "ablating_induction_heads_raises_loss_by_1_nat": no_all[1] - clean[1] >= MIN_LOSS_RISE,
        "ablating_previous_token_heads_destroys_induction_score": ind_score_without_prev < THRESHOLD,
    }
    found["scores"] = {k: v for k, v in scores.items()}
    found["run"], found["step"] = str(run.path), run.step

    print(f"run {run.path} at step {run.step}: [BOS] + r + r, n={n}, 64 prompts")
    cli.print_table(
        [
            ["previous-token head", f"L{prev_layer}H{prev_head}", found["previous_token_head"]["score"]],
            ["induction head", f"L{ind_layer}H{ind_head}", found["induction_head"]["score"]],
            [f"induction score, L{prev_layer}H{prev_head} ablated", f"L{ind_layer}H{ind_head}", ind_without["best"][0]],
            [f"induction score, {prev_names} ablated", f"L{ind_layer}H{ind_head}", ind_without["all"][0]],
            [f"mean induction score, {prev_names} ablated", "all induction heads", ind_without["all"][1]],
        ],
        ["", "head", "score"],
    )
    print()
    cli.print_table(
        [
            ["clean", clean[0], clean[1]],
            [f"ablate L{ind_layer}H{ind_head}", no_ind[0], no_ind[1]],
            ["ablate " + " ".join(f"L{layer}H{h}" for layer, h in all_ind), no_all[0], no_all[1]],
            [f"ablate {prev_names}", no_prev[0], no_prev[1]],
        ],
        ["loss", "first half", "repeated half"],
    )
    print()
    for check, ok in found["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {check.replace('_', ' ')}")

    cli.write_json(args.out, "induction", found)
    cli.write_figure(
        args.out, "previous_token_scores", head_scores_figure(scores["previous_token"], "previous-token score")
    )
    cli.write_figure(args.out, "induction_scores", head_scores_figure(scores["induction"], "induction score"))
    bars = go.Figure(
        go.Bar(
            x=["clean", f"ablate L{ind_layer}H{ind_head}", "ablate all induction heads", f"ablate {prev_names}"],
            y=[clean[1], no_ind[1], no_all[1], no_prev[1]],
        )
    )
    bars.update_layout(title="loss on the repeated half", yaxis_title="nats")
    cli.write_figure(args.out, "ablation_loss", bars)


def main(argv: list[str] | None = None) -> None:
    cli.main(cli.parser(__doc__.splitlines()[0]), body, tasks=("induction",), argv=argv)


if __name__ == "__main__":
    main()
