"""Linear probes for a named feature on every residual stream, with a control task and a random-model baseline.

    sandbox probe probing --run runs/text --out out/probe [--feature vowel]

Features by task: text: "vowel" (this character is a vowel), "position_in_word" (0, 1, 2,
3+ characters into the word); sort: "smaller_than_previous" (this number of the unsorted
list is smaller than the one before it); induction: "seen_before" (this token already
occurred earlier in the sequence: what an induction head's query matches on, so it is
readable after the induction layer and not from the embedding), "previous_token_low" (the
token before this one is in the lower half of the symbols, which only a previous-token head
can tell).

Selectivity is task minus control accuracy (Hewitt & Liang, 2019). The control task labels
the *current* token's type, which every stream still carries, so it is high wherever the
token identity is linearly readable (1.0 on the embedding): a feature of the context has
positive selectivity only on the streams where the model has computed it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor

from blocks.tasks.common import dataset_tensors
from blocks.training.runs import Run
from probes.probing import IGNORE, probe_figure, probe_layers, probe_verdict, random_model_like
from probes.scripts import cli


def _vowel(run: Run, tokens: Tensor) -> Tensor:
    vowels = torch.tensor([s.lower() in "aeiou" for s in run.tokenizer.token_strs(range(run.tokenizer.d_vocab))])
    return vowels[tokens].long()


def _position_in_word(run: Run, tokens: Tensor) -> Tensor:
    letters = torch.tensor([s.isalpha() for s in run.tokenizer.token_strs(range(run.tokenizer.d_vocab))])[tokens]
    labels = torch.full_like(tokens, IGNORE)
    count = torch.zeros(tokens.shape[0], dtype=torch.long)
    for t in range(tokens.shape[1]):
        count = torch.where(letters[:, t], count + 1, torch.zeros_like(count))
        labels[:, t] = torch.where(letters[:, t], (count - 1).clamp(max=3), torch.full_like(count, IGNORE))
    labels[:, 0] = IGNORE  # the first character's word may have started before the chunk
    return labels


def _smaller_than_previous(run: Run, tokens: Tensor) -> Tensor:
    n = run.task.list_len
    labels = torch.full_like(tokens, IGNORE)
    labels[:, 2 : n + 1] = (tokens[:, 2 : n + 1] < tokens[:, 1:n]).long()  # x_2 .. x_n against x_1 .. x_{n-1}
    return labels


def _seen_before(run: Run, tokens: Tensor) -> Tensor:
    pos = torch.arange(tokens.shape[1])
    earlier = (pos[None, :] < pos[:, None]) & (pos[None, :] > 0)  # [i, j]: j before i, BOS excluded
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, i, j]
    labels = (same & earlier).any(-1).long()
    labels[:, 0] = IGNORE  # BOS is not a symbol
    return labels


def _previous_token_low(run: Run, tokens: Tensor) -> Tensor:
    labels = torch.full_like(tokens, IGNORE)
    labels[:, 2:] = (tokens[:, 1:-1] <= run.task.n_symbols // 2).long()
    return labels


FEATURES: dict[str, dict[str, Callable[[Run, Tensor], Tensor]]] = {
    "text": {"vowel": _vowel, "position_in_word": _position_in_word},
    "sort": {"smaller_than_previous": _smaller_than_previous},
    "induction": {"seen_before": _seen_before, "previous_token_low": _previous_token_low},
}


def body(args: argparse.Namespace, run: Run) -> None:
    task_name = run.config["task"]["name"]
    features = FEATURES[task_name]
    feature = args.feature or next(iter(features))
    if feature not in features:
        raise ValueError(f"a {task_name!r} run has the features {sorted(features)}, not {feature!r}")
    tokens, _ = dataset_tensors(run.task.dataset("test"))
    tokens = tokens[: args.rows]
    labels = features[feature](run, tokens)
    trained = probe_layers(run.model, tokens.to(args.device), labels, seed=args.seed)
    random = probe_layers(
        random_model_like(run.model, seed=args.seed + 1), tokens.to(args.device), labels, seed=args.seed
    )
    print(
        f"feature {feature!r} on {int((labels != IGNORE).sum())} positions of {tokens.shape[0]} test rows "
        f"(chance {trained.chance:.3f})"
    )
    cli.print_table(
        [
            [lab, float(t), float(c), float(s), float(r)]
            for lab, t, c, s, r in zip(
                trained.labels,
                trained.task_accuracy,
                trained.control_accuracy,
                trained.selectivity,
                random.task_accuracy,
            )
        ],
        ["stream", "task acc", "control acc", "selectivity", "random-model acc"],
    )
    print(probe_verdict(feature, trained, random))
    cli.write_json(
        args.out,
        f"probe_{feature}",
        {
            "feature": feature,
            "streams": trained.labels,
            "task_accuracy": trained.task_accuracy,
            "control_accuracy": trained.control_accuracy,
            "selectivity": trained.selectivity,
            "random_model_task_accuracy": random.task_accuracy,
            "chance": trained.chance,
        },
    )
    cli.write_figure(args.out, f"probe_{feature}", probe_figure(trained, random, f"linear probe: {feature}"))


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--feature", help="feature to probe (default: the task's first)")
    p.add_argument("--rows", type=int, default=256, help="test sequences to probe on (default 256)")
    cli.main(p, body, tasks=tuple(FEATURES), argv=argv)


if __name__ == "__main__":
    main()
