"""MNIST on 2 CPU cores: our MNISTClassifier against the same network built from torch.nn.

    python benchmarks/bench_mnist.py [--epochs 5] [--batch-size B] [--lr LR] [--data-dir DIR]

Prints test accuracy and wall time per epoch side by side: ours with the fast backend
(blocks.fast registered, as `sandbox mnist` runs it), ours on the modules' own code only
(`python -m scratchnn.mnist`, which imports nothing of blocks), and torch.nn's. Then checks
the targets: >= 97.5% after 5 epochs, ours <= 30 s for data loading plus 5 epochs, and ours
(with the backend) within 10% of torch.nn's training time. The two models train epoch by epoch in turn, so a
burst of load on a shared machine slows both alike. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

import blocks.fast  # noqa: F401  (registers the fast backend with scratchnn.backend)
from scratchnn import MNISTClassifier
from scratchnn.backend import reference_only
from scratchnn.mnist import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    accuracy,
    linear_decay,
    mnist_from_idx,
    to_tensors,
    train_epoch,
)

REPO = Path(__file__).resolve().parent.parent
TARGET_ACC, TARGET_TOTAL_S, TARGET_RATIO = 0.975, 30.0, 1.10


def torch_twin() -> nn.Module:
    """MNISTClassifier's architecture from torch.nn modules."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    splits = mnist_from_idx(args.data_dir)
    train, test = to_tensors(splits["train"]), to_tensors(splits["test"])
    load_s = time.perf_counter() - t0
    print(
        f"data: {len(train)} train / {len(test)} test images loaded in {load_s:.1f} s; "
        f"{args.threads} threads, batch {args.batch_size}, Adam lr {args.lr}"
    )

    runs = {}
    for name, build in (("scratchnn", MNISTClassifier), ("own code", MNISTClassifier), ("torch.nn", torch_twin)):
        torch.manual_seed(args.seed)
        model = build()
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        sched = linear_decay(opt, args.epochs * math.ceil(len(train) / args.batch_size))
        runs[name] = dict(
            model=model, opt=opt, sched=sched, gen=torch.Generator().manual_seed(args.seed), times=[], cpu=[], accs=[]
        )

    print(f"{'epoch':>5} | " + " | ".join(f"{name + ' acc':>13} {'time':>7}" for name in runs))
    for epoch in range(1, args.epochs + 1):
        for name, run in runs.items():
            with reference_only() if name == "own code" else contextlib.nullcontext():
                t, c = time.perf_counter(), time.process_time()
                train_epoch(
                    run["model"], run["opt"], train, args.batch_size, run["gen"], progress=False, scheduler=run["sched"]
                )
                run["times"].append(time.perf_counter() - t)
                run["cpu"].append(time.process_time() - c)
                run["accs"].append(accuracy(run["model"], test))
        print(f"{epoch:>5} | " + " | ".join(f"{r['accs'][-1]:>13.2%} {r['times'][-1]:>6.2f}s" for r in runs.values()))

    ours_s, ref_s = sum(runs["scratchnn"]["times"]), sum(runs["torch.nn"]["times"])
    own_s = sum(runs["own code"]["times"])
    print(f"training: scratchnn {ours_s:.1f} s, on its own code only {own_s:.1f} s ({own_s / ref_s:.3f}x torch.nn's)")
    final_acc = runs["scratchnn"]["accs"][-1]
    total = load_s + ours_s
    checks = [
        (f"test accuracy after {args.epochs} epochs {final_acc:.2%} >= {TARGET_ACC:.1%}", final_acc >= TARGET_ACC),
        (f"data loading + {args.epochs} epochs {total:.1f} s <= {TARGET_TOTAL_S:.0f} s", total <= TARGET_TOTAL_S),
        (
            f"scratchnn {ours_s:.1f} s vs torch.nn {ref_s:.1f} s: ratio {ours_s / ref_s:.3f} <= {TARGET_RATIO}",
            ours_s / ref_s <= TARGET_RATIO,
        ),
    ]
    # CPU seconds tell a loaded machine (wall >> cpu / threads) from slow code.
    cpu_ours, cpu_ref = sum(runs["scratchnn"]["cpu"]), sum(runs["torch.nn"]["cpu"])
    print(
        f"CPU time (all threads): scratchnn {cpu_ours:.1f} s, torch.nn {cpu_ref:.1f} s (ratio {cpu_ours / cpu_ref:.3f})"
    )
    for text, ok in checks:
        print(f"{'PASS' if ok else 'MISS'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
