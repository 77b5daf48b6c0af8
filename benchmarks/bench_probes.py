"""How fast the probes answer: information-flow routes and a full head x position patching sweep.

    python benchmarks/bench_probes.py [--run runs/induction] [--repeats 5] [--threads N]

Targets (issue 5): routes of a 2-layer model (with MLPs, d_model 128, d_mlp 512) on 64
positions <= 100 ms; the head x position patching sweep of the default induction model
(2 layers x 4 heads x 64 positions = 512 patched copies) <= 2 s. Without --run the
default induction model gets random weights (the time does not depend on the weights).
Prints the median of `repeats` timed calls after one warm-up; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from blocks import Transformer, TransformerConfig
from blocks.fast import keep_freed_memory
from blocks.tasks import get_task
from probes.information_flow import information_flow
from probes.patching import logit_diff_metric, patch_heads_by_pos

TARGET_FLOW_S, TARGET_SWEEP_S = 0.100, 2.0


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocation and lazy initialisation
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="an induction run directory (default: the default model with random weights)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    keep_freed_memory()  # as the probe scripts and the app do
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    torch.manual_seed(0)
    flow_model = Transformer(
        TransformerConfig(n_layers=2, d_model=128, n_heads=4, d_mlp=512, d_vocab=64, n_ctx=64)
    ).eval()
    prompt = torch.randint(0, 64, (64,))
    flow_s = median_time(lambda: information_flow(flow_model, prompt), args.repeats)

    if args.run:
        from blocks.training.runs import load_run

        model = load_run(args.run).model
    else:
        model = Transformer(get_task("induction").default_model_config()).eval()
    n = model.cfg.n_ctx
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(1, model.cfg.d_vocab, (1, n), generator=gen)
    corrupted = torch.randint(1, model.cfg.d_vocab, (1, n), generator=gen)
    metric = logit_diff_metric(int(clean[0, -1]), int(corrupted[0, -1]))
    sweep_s = median_time(lambda: patch_heads_by_pos(model, clean, corrupted, metric), args.repeats)
    cells = model.cfg.n_layers * model.cfg.n_heads * n

    ok = True
    for name, seconds, target in (
        ("information flow, 2 layers x 64 positions", flow_s, TARGET_FLOW_S),
        (f"head x position patching sweep ({cells} cells)", sweep_s, TARGET_SWEEP_S),
    ):
        verdict = "ok" if seconds <= target else "MISSED"
        ok &= seconds <= target
        print(f"{name:50s} {seconds * 1000:9.1f} ms  (target {target * 1000:.0f} ms)  {verdict}")
    print(f"torch threads: {torch.get_num_threads()}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
