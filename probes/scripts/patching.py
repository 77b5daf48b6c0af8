"""Activation patching of a clean and a corrupted prompt: which activations carry the difference?

    sandbox probe patching --run runs/induction --out out/patching \
        [--clean "BOS 1 2 3 1 2" --corrupted "BOS 1 2 4 1 2"] [--answer 3 --wrong 4]

Prompts are text for the run's tokenizer (default: two examples of the run's task). The
metric is logit[answer] - logit[wrong] at the last position (default: the model's top
prediction on the clean and on the corrupted prompt).
"""

from __future__ import annotations

import argparse

import torch

from blocks.training.runs import Run
from probes.patching import (
    logit_diff_metric,
    patch_by_layer_pos,
    patch_head_patterns,
    patch_heads,
    patch_heads_by_pos,
    patching_figure,
)
from probes.scripts import cli


def prompts(args: argparse.Namespace, run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    if (args.clean is None) != (args.corrupted is None):
        raise ValueError("give both --clean and --corrupted, or neither (then two task examples are used)")
    if args.clean is not None:
        clean, corrupted = run.tokenizer.encode(args.clean), run.tokenizer.encode(args.corrupted)
        for flag, ids in (("--clean", clean), ("--corrupted", corrupted)):
            if not ids:
                raise ValueError(
                    f"{flag} is empty; give a prompt of at least one token, e.g. {run.tokenizer.decode(run.task.example(0))!r}"
                )
    else:
        clean = run.task.example(args.seed)
        corrupted = next(
            c
            for s in range(args.seed + 1, args.seed + 100)
            if len(c := run.task.example(s)) == len(clean) and c != clean
        )
    if len(clean) != len(corrupted):
        raise ValueError(
            f"the clean prompt has {len(clean)} tokens but the corrupted one {len(corrupted)}; "
            "patching compares position by position, so they must be the same length"
        )
    return torch.tensor([clean], device=args.device), torch.tensor([corrupted], device=args.device)


def token_id(run: Run, text: str) -> int:
    ids = run.tokenizer.encode(text)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens; --answer and --wrong must each be one token")
    return ids[0]


def body(args: argparse.Namespace, run: Run) -> None:
    model = run.model
    clean, corrupted = prompts(args, run)
    answer = token_id(run, args.answer) if args.answer else int(model(clean)[0, -1].argmax())
    wrong = token_id(run, args.wrong) if args.wrong else int(model(corrupted)[0, -1].argmax())
    if answer == wrong:
        raise ValueError(
            f"the answer and the wrong token are both {run.tokenizer.decode([answer])!r}; "
            "pick prompts the model answers differently, or give --answer and --wrong"
        )
    metric = logit_diff_metric(answer, wrong)
    labels = run.tokenizer.token_strs(clean[0])
    kinds = ["resid_pre", "attn_out"] + ([] if model.cfg.attn_only else ["mlp_out"])
    results = {kind: patch_by_layer_pos(model, clean, corrupted, metric, kind) for kind in kinds}
    results["heads"] = patch_heads(model, clean, corrupted, metric)
    results["heads_by_pos"] = patch_heads_by_pos(model, clean, corrupted, metric)
    results["head_patterns"] = patch_head_patterns(model, clean, corrupted, metric)

    some = results["resid_pre"]
    print(f"clean:     {run.tokenizer.decode(clean[0])}")
    print(f"corrupted: {run.tokenizer.decode(corrupted[0])}")
    print(
        f"metric: logit[{run.tokenizer.decode([answer])}] - logit[{run.tokenizer.decode([wrong])}] at the last position"
    )
    print(f"clean {some.clean:.3f}, corrupted {some.corrupted:.3f}\n")
    rows = []
    for name, r in results.items():
        norm = r.normalized()
        flat = int(norm.abs().argmax())
        where = [int(i) for i in torch.unravel_index(torch.tensor(flat), norm.shape)]
        rows.append([name, ", ".join(f"{a}={i}" for a, i in zip(r.axes, where)), float(norm.flatten()[flat])])
    cli.print_table(rows, ["patched", "strongest cell", "restored (0 corrupted, 1 clean)"])

    cli.write_json(
        args.out,
        "patching",
        {
            "clean": run.tokenizer.decode(clean[0]),
            "corrupted": run.tokenizer.decode(corrupted[0]),
            "answer": answer,
            "wrong": wrong,
            "clean_metric": some.clean,
            "corrupted_metric": some.corrupted,
            "results": {
                k: {"axes": r.axes, "values": r.values, "normalized": r.normalized()} for k, r in results.items()
            },
        },
    )
    for name, r in results.items():
        cli.write_figure(args.out, f"patching_{name}", patching_figure(r, labels if "pos" in r.axes else None))


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--clean", help="clean prompt, as text for the run's tokenizer")
    p.add_argument("--corrupted", help="corrupted prompt of the same length")
    p.add_argument("--answer", help="the token the clean prompt should predict (default: the model's top choice)")
    p.add_argument("--wrong", help="the competing token (default: the model's top choice on the corrupted prompt)")
    cli.main(p, body, argv=argv)


if __name__ == "__main__":
    main()
