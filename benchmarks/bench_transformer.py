"""Our Transformer against TransformerLens 2.18's HookedTransformer, same weights, side by side.

    python benchmarks/bench_transformer.py            # re-runs itself under the TL venv's python
    TL_PYTHON=/path/to/venv/bin/python python benchmarks/bench_transformer.py

TransformerLens lives in its own virtual environment (it pins its own dependencies; version
4 removed HookedTransformer): python3 -m venv .tlvenv && .tlvenv/bin/pip install
torch==2.13.0 transformer-lens==2.18.0 "datasets<3" "pyarrow<18". When this script is not
already running under a python that has transformer_lens, it re-executes itself with
$TL_PYTHON (default .tlvenv/bin/python in the repository) and the repository on sys.path, so both models
run in one process on the same torch build. Without TransformerLens it measures ours alone.

Measured on CPU, float32, under torch.no_grad(), medians of interleaved repeats:
- forward tokens/s without hooks, ours and TL's (targets: ours >= 1.6x TL's with 2 layers, >= 1.45x with 4);
- run_with_cache of every hook point over each model's own plain forward (target <= 1.3x for ours);
- idle hook points: our plain forward over the same model with HookPoint calls bypassed (target < 5%);
- memory of a full cache against one of the residual stream only.
Each model is measured twice: with the fast backend (blocks.fast), and with it off
(scratchnn.backend.reference_only(), as SANDBOX_FAST=0): what a reader who edits the modules'
own code gets. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

try:
    import transformer_lens  # noqa: F401

    HAVE_TL = True
except ImportError:
    HAVE_TL = False
    tl_python = os.environ.get("TL_PYTHON", str(REPO / ".tlvenv" / "bin" / "python"))
    if Path(tl_python).is_file() and not os.environ.get("BENCH_NO_REEXEC"):
        os.environ["BENCH_NO_REEXEC"] = "1"  # never loop if that python lacks it too
        os.execv(tl_python, [tl_python, __file__, *sys.argv[1:]])

import torch  # noqa: E402

from blocks import Transformer, TransformerConfig  # noqa: E402
from blocks.fast import keep_freed_memory  # noqa: E402
from scratchnn import HookPoint  # noqa: E402
from scratchnn.backend import reference_only  # noqa: E402

SIZES = [
    dict(n_layers=2, d_model=128, n_heads=4, d_mlp=512),
    dict(n_layers=4, d_model=256, n_heads=8, d_mlp=1024),
]
N_CTX, BATCH, D_VOCAB = 128, 64, 512


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, interleaved so that load on the machine hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


class bypassed_hook_points:
    """Within this block every HookPoint call is a bare `return x`: the model with hook points removed."""

    def __enter__(self) -> None:
        self.saved = HookPoint.__call__
        HookPoint.__call__ = lambda self, x: x  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        HookPoint.__call__ = self.saved  # type: ignore[method-assign]


def _in_reference(fn: Callable[[], object]) -> object:
    with reference_only():
        return fn()


def build(size: dict) -> tuple[Transformer, object | None]:
    torch.manual_seed(0)
    cfg = TransformerConfig(**size, d_vocab=D_VOCAB, n_ctx=N_CTX, act_fn="gelu", normalization="LN")
    if not HAVE_TL:
        return Transformer(cfg).eval(), None
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from blocks.interop import from_transformer_lens

    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp,
        d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    tl = HookedTransformer(tl_cfg).eval()
    with torch.no_grad():
        for p in tl.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return from_transformer_lens(tl.state_dict(), cfg), tl


def bench(size: dict, repeats: int, reference: bool) -> dict[str, str]:
    ours, tl = build(size)
    tokens = torch.randint(0, D_VOCAB, (BATCH, N_CTX), generator=torch.Generator().manual_seed(0))
    n_tokens = tokens.numel()

    def switched(fn: Callable[[], object]) -> Callable[[], object]:
        return (lambda: _in_reference(fn)) if reference else fn

    fns: dict[str, Callable[[], object]] = {
        "ours": switched(lambda: ours(tokens)),
        "ours_cache": switched(lambda: ours.run_with_cache(tokens)),
    }
    if tl is not None:
        fns["tl"] = lambda: tl(tokens)
        fns["tl_cache"] = lambda: tl.run_with_cache(tokens)
    with torch.no_grad():
        if tl is not None:
            diff = (ours(tokens) - tl(tokens)).abs().max().item()
            assert diff < 1e-3, f"the two models disagree by {diff}; the comparison would mean nothing"
        t = medians(fns, repeats)

        @switched
        def bare() -> None:
            with bypassed_hook_points():
                ours(tokens)

        idle = medians({"hooked": fns["ours"], "bare": bare}, repeats)
        _, full = ours.run_with_cache(tokens)
        _, small = ours.run_with_cache(tokens, names=lambda n: n.endswith("hook_resid_post"))
    row = {
        "model": f"{size['n_layers']}L d{size['d_model']} {size['n_heads']}h mlp{size['d_mlp']}",
        "backend": "off" if reference else "on",
        "ours tok/s": f"{n_tokens / t['ours']:,.0f}",
        "TL tok/s": f"{n_tokens / t['tl']:,.0f}" if tl is not None else "n/a",
        # the two ratios with a target: three decimals, so that a value at the target is decided by the table
        "speed-up (>=1.6 2L, >=1.45 4L)": f"{t['tl'] / t['ours']:.3f}x" if tl is not None else "n/a",
        "ours cache/fwd (<=1.3)": f"{t['ours_cache'] / t['ours']:.3f}x",
        "TL cache/fwd": f"{t['tl_cache'] / t['tl']:.2f}x" if tl is not None else "n/a",
        "idle hooks (<5%)": f"{100 * (idle['hooked'] / idle['bare'] - 1):+.1f}%",
        "full cache MB": f"{full.nbytes() / 2**20:.0f} ({len(full)} names)",
        "resid_post cache MB": f"{small.nbytes() / 2**20:.0f} ({len(small)} names)",
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    keep_freed_memory()  # the process's allocator setting, shared by both models measured here
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU, batch {BATCH} x n_ctx {N_CTX}, "
        f"d_vocab {D_VOCAB}; TransformerLens: "
        + (__import__("importlib.metadata").metadata.version("transformer_lens") if HAVE_TL else "not found")
    )
    rows = [bench(size, args.repeats, reference) for size in SIZES for reference in (False, True)]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(row[k] for k in keys) + " |")


if __name__ == "__main__":
    main()
