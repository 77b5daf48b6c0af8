"""Train a sparse autoencoder (or a transcoder) on one hook point of a run, evaluate it, and save it beside the run.

    python -m probes.sae --run runs/sycophancy --hook blocks.1.hook_resid_post --out out/sae \
        [--kind topk|batchtopk|relu|jumprelu --k 16 --width 512 --steps 2000 --buffer 65536]
    python -m probes.sae --run runs/sycophancy --hook blocks.0.ln2.hook_normalized \
        --hook-out blocks.0.hook_mlp_out --out out/transcoder          # a transcoder of MLP 0

Activations are read from the task's training data a model batch at a time and mixed in a
buffer of --buffer rows; no more are held. The SAE is written as cfg.json and
sae_weights.safetensors (SAELens's layout) to RUN/saes/NAME/; its evaluation (L0, dead and
dense features, explained variance, the model's loss with it spliced in against clean and
zero-ablated) is printed and written with figures to --out. On sycophancy and sort runs it also
reports the best single-feature probe for each of the task's known variables.
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from blocks.tasks.common import dataset_tensors
from blocks.training.runs import Run
from probes.sae.activations import check_hook, hook_width, run_batches
from probes.sae.evaluate import evaluate_sae
from probes.sae.features import feature_codes
from probes.sae.figures import frequency_figure, loss_figure, training_figure, variable_match_figure
from probes.sae.files import sae_dir, save_sae
from probes.sae.known import KNOWN_TASKS, known_variables, match_variables
from probes.sae.sae import KINDS, SAEConfig, SparseAutoencoder
from probes.sae.train import SAETrainConfig, train_sae
from probes.scripts import cli

MAX_WIDTH = 1 << 20


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--hook", required=True, help="hook point to read, e.g. blocks.0.hook_resid_post")
    p.add_argument(
        "--hook-out", default=None, help="train a transcoder predicting this hook (e.g. blocks.0.hook_mlp_out)"
    )
    p.add_argument("--kind", default="topk", choices=KINDS, help="activation (default topk)")
    p.add_argument("--width", type=int, default=None, help="features (default 8 x d_in)")
    p.add_argument("--k", type=int, default=16, help="active features per activation, topk/batchtopk (default 16)")
    p.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=1024, help="activations per step (default 1024)")
    p.add_argument("--lr", type=float, default=SAETrainConfig.lr, help=f"learning rate (default {SAETrainConfig.lr})")
    p.add_argument("--l1-coeff", type=float, default=SAETrainConfig.l1_coeff, help="relu: L1 coefficient")
    p.add_argument("--l0-coeff", type=float, default=SAETrainConfig.l0_coeff, help="jumprelu: L0 coefficient")
    p.add_argument("--buffer", type=int, default=65536, help="most activations held at once (default 65536)")
    p.add_argument(
        "--model-batch", type=int, default=None, help="sequences per model forward (default up to 512, 1/4 of --buffer)"
    )
    p.add_argument("--eval-n", type=int, default=500, help="test sequences to evaluate on (default 500)")
    p.add_argument("--name", default=None, help="folder name under RUN/saes (default from hook, kind, width, step)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_sizes(width: int, k: int, kind: str, d_in: int) -> None:
    """ValueError when the width or k cannot make a sparse code of this hook."""
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(
            f"--width must lie in [1, {MAX_WIDTH}], got {width} (a typical width is 4 to 32 x d_in={d_in})"
        )
    if kind in ("topk", "batchtopk") and not 1 <= k < width:
        raise ValueError(f"--k must lie in [1, width={width}) for a {kind} SAE (k active of width features), got {k}")


def body(args: argparse.Namespace, run: Run) -> None:
    model = run.model.eval()
    check_hook(model, args.hook)
    if args.hook_out is not None:
        check_hook(model, args.hook_out)
    d_in = hook_width(model, args.hook)
    width = args.width if args.width is not None else 8 * d_in
    check_sizes(width, args.k, args.kind, d_in)
    if args.eval_n < 1:
        raise ValueError(f"--eval-n must be at least 1, got {args.eval_n}")
    sae_cfg = SAEConfig(
        d_in=d_in,
        width=width,
        kind=args.kind,
        k=args.k,
        hook_name=args.hook,
        d_out=None if args.hook_out is None else hook_width(model, args.hook_out),
        hook_name_out=args.hook_out,
    )
    train_cfg = SAETrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        l1_coeff=args.l1_coeff,
        l0_coeff=args.l0_coeff,
        seed=args.seed,
    )
    tokens, _ = dataset_tensors(run.task.dataset("train"))
    batches = run_batches(
        model, tokens, args.hook, args.batch_size, args.buffer, args.model_batch, args.hook_out, args.seed
    )
    torch.manual_seed(args.seed)
    sae = SparseAutoencoder(sae_cfg).to(args.device)
    kind = "transcoder" if sae_cfg.is_transcoder else "SAE"
    print(
        f"{kind}: {args.kind}, {d_in} -> {width} features at {args.hook}"
        + (f" -> {args.hook_out}" if args.hook_out else "")
    )
    bar = tqdm(total=args.steps, desc="training", unit="step", disable=args.no_progress)

    def progress(step: int, loss: float) -> None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")

    started = time.perf_counter()
    with torch.enable_grad():
        result = train_sae(sae, batches, train_cfg, progress=progress)
    bar.close()
    seconds = time.perf_counter() - started
    rate = result.steps_done * args.batch_size / max(seconds, 1e-9)
    print(f"trained {result.steps_done} steps in {seconds:.1f} s ({rate:,.0f} activations/s)")
    if result.diverged:
        print(f"warning: training diverged: {result.diverged}")

    test_tokens, test_mask = dataset_tensors(run.task.dataset("test"))
    evaluation = evaluate_sae(model, sae, test_tokens[: args.eval_n], test_mask[: args.eval_n])
    summary = evaluation.summary()
    print()
    cli.print_table([[k, v] for k, v in summary.items()], ["measure", "value"])

    matches = []
    task_name = run.config["task"]["name"]
    if task_name in KNOWN_TASKS and not sae_cfg.is_transcoder:
        prompts, variables = known_variables(run.task, n=min(1000, max(args.eval_n, 8)), seed=args.seed)
        matches = match_variables(feature_codes(model, sae, prompts), variables, seed=args.seed)
        print()
        cli.print_table(
            [[m.name, m.best_feature, m.best_accuracy, m.chance] for m in matches],
            ["known variable", "best feature", "accuracy", "chance"],
        )

    name = args.name or f"{args.hook}{'-' + args.hook_out if args.hook_out else ''}.{args.kind}-{width}.step{run.step}"
    folder = save_sae(
        sae,
        sae_dir(run.path, name),
        {
            "run": run.path.name,
            "step": run.step,
            "task": task_name,
            "n_ctx": model.cfg.n_ctx,
            "train": {**train_cfg.__dict__, "buffer": args.buffer, "model_batch": args.model_batch},
            "steps_done": result.steps_done,
            "diverged": result.diverged,
            "evaluation": summary,
            "frequency": evaluation.frequency.tolist(),
            "known_variables": [m.to_dict() for m in matches],
        },
    )
    cli.write_json(
        args.out,
        "sae",
        {
            "sae_dir": str(folder),
            "config": sae_cfg.to_dict(),
            "steps_done": result.steps_done,
            "seconds": seconds,
            "activations_per_second": rate,
            "diverged": result.diverged,
            "evaluation": summary,
            "known_variables": [m.to_dict() for m in matches],
            "losses": result.losses,
        },
    )
    cli.write_figure(args.out, "training", training_figure(result.losses))
    cli.write_figure(args.out, "frequency", frequency_figure(evaluation))
    cli.write_figure(args.out, "loss", loss_figure(evaluation))
    if matches:
        cli.write_figure(args.out, "known_variables", variable_match_figure(matches))
    print(f"\nwrote {folder} and {args.out}/sae.json with figures")


def main(argv: list[str] | None = None) -> None:
    cli.main(build_parser(), body, tasks=None, argv=argv)


if __name__ == "__main__":
    main()
