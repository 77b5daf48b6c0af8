"""What each function of the fast backend (blocks.fast) is worth: the measurements behind keeping it.

    python benchmarks/bench_backend.py                  # both models: forward, training step, full cache
    python benchmarks/bench_backend.py --sweep          # our attention kernel against SDPA at several shapes
    python benchmarks/bench_backend.py --malloc         # keep_freed_memory() against glibc's defaults
    python benchmarks/bench_backend.py --linear         # oneDNN against addmm by matmul size, with and without gradients
    python benchmarks/bench_backend.py --mnist          # the MNIST classifier's training step, each function left out

A function is kept only if leaving it out costs at least 5% of a forward or a training step.
Each variant below leaves one thing out: the function unregistered (the module's own code runs
in its place) or replaced by the torch op it falls back to elsewhere; times are medians of
interleaved rounds (batch 64 x 128 positions, d_vocab 512, GELU, LayerNorm, float32 CPU), and
"x" is the variant's time over the whole backend's.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from blocks import Transformer, TransformerConfig, fast  # noqa: E402
from blocks.fast import attention as fast_attention  # noqa: E402
from scratchnn import backend  # noqa: E402

SIZES = {
    "2L": dict(n_layers=2, d_model=128, n_heads=4, d_mlp=512),
    "4L": dict(n_layers=4, d_model=256, n_heads=8, d_mlp=1024),
}
BATCH, N_CTX, D_VOCAB = 64, 128, 512


def addmm_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    out = flat @ weight.T if bias is None else torch.addmm(bias, flat, weight.T)
    return out.view(*x.shape[:-1], weight.shape[0])


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


# variant -> {operation: replacement, or None to unregister it}
VARIANTS: dict[str, dict[str, Callable | None]] = {
    "whole backend": {},
    "linear: addmm instead of oneDNN": {"linear": addmm_linear},
    "linear: module's own code": {"linear": None},
    "causal_attention: SDPA instead of our kernel": {"causal_attention": sdpa},
    "causal_attention: module's own code": {"causal_attention": None},
    "layer_norm: module's own code": {"layer_norm": None},
    "gelu: module's own code": {"gelu": None},
    "nothing (SANDBOX_FAST=0)": dict.fromkeys(fast.FUNCTIONS),
}


def use(variant: dict[str, Callable | None]) -> None:
    fast.register()
    for name, fn in variant.items():
        if fn is None:
            backend.unregister(name)
        else:
            backend.register(name, fn)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def variant_table(rounds: int) -> None:
    for size_name, size in SIZES.items():
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(**size, d_vocab=D_VOCAB, n_ctx=N_CTX, act_fn="gelu"))
        tokens = torch.randint(0, D_VOCAB, (BATCH, N_CTX), generator=torch.Generator().manual_seed(0))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def forward() -> None:
            with torch.no_grad():
                model(tokens)

        def cache() -> None:
            with torch.no_grad():
                model.run_with_cache(tokens)

        def step() -> None:
            loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        print(f"\n{size_name}: {size}, batch {BATCH} x {N_CTX}")
        print("| left out | forward ms | x | training step ms | x | full cache ms | x |")
        print("|---|---|---|---|---|---|---|")
        results = {}
        for what, job in (("forward", forward), ("step", step), ("cache", cache)):
            fns = {name: (lambda v=variant, j=job: (use(v), j())) for name, variant in VARIANTS.items()}
            results[what] = interleaved(fns, rounds if what != "step" else max(3, rounds // 2))
        use({})
        base = {what: results[what]["whole backend"] for what in results}
        for name in VARIANTS:
            cells = []
            for what in ("forward", "step", "cache"):
                t = results[what][name]
                cells += [f"{1e3 * t:.1f}", f"{t / base[what]:.3f}"]
            print(f"| {name} | " + " | ".join(cells) + " |")


def sweep(rounds: int) -> None:
    """Our kernel against SDPA, forward and forward + backward, one attention call at several shapes."""
    print(
        "| batch x heads x pos x d_head | forward: SDPA ms | ours ms | SDPA/ours | fwd+bwd: SDPA ms | ours ms | SDPA/ours |"
    )
    print("|---|---|---|---|---|---|---|")
    shapes = [(64, 8, 128, 32), (64, 4, 128, 32), (16, 8, 256, 32), (8, 8, 512, 64), (4, 4, 1024, 64), (1, 4, 64, 16)]
    for batch, heads, pos, d_head in shapes:
        q, k, v = (torch.randn(batch, pos, heads, d_head) for _ in range(3))
        row = []
        for grad in (False, True):
            qs, ks, vs = (t.clone().requires_grad_(grad) for t in (q, k, v))

            def run(fn: Callable) -> None:
                with torch.set_grad_enabled(grad):
                    out = fn(qs, ks, vs)
                    if grad:
                        out.sum().backward()

            t = interleaved({"sdpa": lambda: run(sdpa), "ours": lambda: run(fast_attention.causal_attention)}, rounds)
            row += [f"{1e3 * t['sdpa']:.2f}", f"{1e3 * t['ours']:.2f}", f"{t['sdpa'] / t['ours']:.2f}x"]
        print(f"| {batch} x {heads} x {pos} x {d_head} | " + " | ".join(row) + " |")


def linear_sizes(rounds: int) -> None:
    """blocks.fast.linear with oneDNN forced on and forced off (MIN_MACS_WITH_GRAD at 0 and at infinity), by matmul size."""
    from blocks.fast import linear as fast_linear

    threshold = fast_linear.MIN_MACS_WITH_GRAD
    print(f"MIN_MACS_WITH_GRAD = {threshold:,}: below it, training takes addmm")
    print("| rows x d_in x d_out | multiply-adds | forward: oneDNN us | addmm us | fwd+bwd: oneDNN us | addmm us |")
    print("|---|---|---|---|---|---|")
    shapes = [(128, 256, 128), (128, 784, 256), (1024, 128, 128), (2048, 128, 128), (8192, 128, 128), (8192, 128, 512),
              (8192, 256, 1024)]  # fmt: skip
    for rows, d_in, d_out in shapes:
        x, w, b = (torch.randn(*shape, requires_grad=True) for shape in ((rows, d_in), (d_out, d_in), (d_out,)))
        upstream = torch.randn(rows, d_out)

        def run(onednn: bool, backward: bool) -> Callable[[], None]:
            def go() -> None:
                fast_linear.MIN_MACS_WITH_GRAD = 0 if onednn else float("inf")
                if backward:
                    fast_linear.linear(x, w, b).backward(upstream)
                elif onednn:
                    with torch.no_grad():
                        fast_linear.linear(x, w, b)
                else:
                    with torch.no_grad():
                        torch.addmm(b, x, w.T)

            return go

        fwd = interleaved({"onednn": run(True, False), "addmm": run(False, False)}, rounds * 10)
        both = interleaved({"onednn": run(True, True), "addmm": run(False, True)}, rounds * 10)
        fast_linear.MIN_MACS_WITH_GRAD = threshold
        cells = [1e6 * fwd["onednn"], 1e6 * fwd["addmm"], 1e6 * both["onednn"], 1e6 * both["addmm"]]
        print(
            f"| {rows} x {d_in} x {d_out} | {rows * d_in * d_out:,} | " + " | ".join(f"{c:.0f}" for c in cells) + " |"
        )


def mnist_step(rounds: int) -> None:
    """MNISTClassifier's Adam step on batches of 128 random images (the time does not depend on the data).

    Each timed round starts a fresh model on 50 fresh batches: one model trained on and on would
    drive Adam's second moments into denormal floats, whose arithmetic is many times slower.
    """
    from blocks.fast import linear as fast_linear
    from scratchnn import MNISTClassifier

    threshold = fast_linear.MIN_MACS_WITH_GRAD
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(128, 28, 28, generator=gen), torch.randint(0, 10, (128,), generator=gen)) for _ in range(50)
    ]

    def steps(macs: float, variant: dict) -> None:
        fast_linear.MIN_MACS_WITH_GRAD = macs
        use(variant)
        torch.manual_seed(0)
        model = MNISTClassifier()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for images, labels in batches:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    variants = {"whole backend": (threshold, {}), "linear: oneDNN at every size": (0, {}),
                "linear: module's own code": (threshold, {"linear": None}),
                "relu: module's own code": (threshold, {"relu": None}),
                "nothing (SANDBOX_FAST=0)": (threshold, dict.fromkeys(fast.FUNCTIONS))}  # fmt: skip
    times = interleaved({name: (lambda v=v: steps(*v)) for name, v in variants.items()}, rounds)
    fast_linear.MIN_MACS_WITH_GRAD = threshold
    use({})
    print("| left out | MNIST training step us | x |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {1e6 * t / 50:.0f} | {t / times['whole backend']:.3f} |")


def malloc(rounds: int) -> None:
    """A plain 4-layer forward in two fresh processes: with keep_freed_memory() and with glibc's defaults."""
    print("| malloc | forward ms | minor page faults a forward |")
    print("|---|---|---|")
    for mode in ("keep", "glibc"):
        done = subprocess.run(
            [sys.executable, __file__, "--malloc-child", mode, "--rounds", str(rounds)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env=os.environ,
        )
        print(done.stdout.strip())


def malloc_child(mode: str, rounds: int) -> None:
    if mode == "keep":
        fast.keep_freed_memory()
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**SIZES["4L"], d_vocab=D_VOCAB, n_ctx=N_CTX, act_fn="gelu"))
    tokens = torch.randint(0, D_VOCAB, (BATCH, N_CTX))
    times, faults = [], []
    with torch.no_grad():
        model(tokens)
        for _ in range(rounds):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            model(tokens)
            times.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(f"| {mode} | {1e3 * statistics.median(times):.1f} | {statistics.median(faults):,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--sweep", action="store_true", help="our attention kernel against SDPA at several shapes")
    parser.add_argument("--malloc", action="store_true", help="keep_freed_memory() against glibc's defaults")
    parser.add_argument("--linear", action="store_true", help="oneDNN against addmm by matmul size")
    parser.add_argument("--mnist", action="store_true", help="the MNIST classifier's training step")
    parser.add_argument("--malloc-child", choices=["keep", "glibc"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.malloc_child:
        malloc_child(args.malloc_child, args.rounds)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fast backend: {fast.status()}")
    if args.sweep:
        sweep(args.rounds)
    elif args.malloc:
        malloc(args.rounds)
    elif args.linear:
        linear_sizes(args.rounds)
    elif args.mnist:
        mnist_step(args.rounds)
    else:
        fast.keep_freed_memory()
        variant_table(args.rounds)


if __name__ == "__main__":
    main()
