"""Loading a GPT-2-small-sized model from a safetensors folder, and its forward against transformers' GPT-2, side by side.

    python benchmarks/bench_interop.py [--repeats 7] [--threads N] [--pos 256]

Targets (issue 20): `blocks.interop.from_hugging_face(folder)` on a 12-layer, d_model 768, 50,257-token
model with random weights (config.json + model.safetensors, 498 MB) in under 5 s; our forward on
1 x 256 tokens at least as fast as transformers' GPT2LMHeadModel on the same weights (its default
attention, SDPA), both under no_grad, timed alternately. Prints medians after a warm-up; exits 1
when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from blocks import Transformer, TransformerConfig
from blocks.fast import keep_freed_memory
from blocks.interop import from_hugging_face, save_hugging_face

TARGET_LOAD_S, TARGET_RATIO = 5.0, 1.0
GPT2_SMALL = TransformerConfig(
    n_layers=12,
    d_model=768,
    n_heads=12,
    d_vocab=50257,
    n_ctx=1024,
    act_fn="gelu_new",
    init_range=0.02,
    tie_unembed=True,
)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--pos", type=int, default=256)
    args = p.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        sys.exit("this benchmark compares with transformers' GPT-2: pip install transformers (the dev extra has it)")

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ours_folder = save_hugging_face(Transformer(GPT2_SMALL), Path(tmp) / "ours")
        theirs = GPT2LMHeadModel.from_pretrained(ours_folder).eval()
        folder = Path(tmp) / "gpt2-small-random"
        theirs.save_pretrained(folder)  # the folder a person has: written by transformers, no checksum of ours
        size_mb = (folder / "model.safetensors").stat().st_size / 1e6
        load_times = []
        for _ in range(3):
            started = time.perf_counter()
            ours = from_hugging_face(folder)
            load_times.append(time.perf_counter() - started)
        load_s = statistics.median(load_times)
        checked_s = timed(lambda: from_hugging_face(ours_folder))  # our own file: its SHA-256 is verified
        hf_load_s = timed(lambda: GPT2LMHeadModel.from_pretrained(folder))

    tokens = torch.randint(0, GPT2_SMALL.d_vocab, (1, args.pos), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(tokens), theirs(tokens).logits, atol=1e-3, rtol=1e-3)  # same model, or no race
    for _ in range(2):  # warm-up
        ours(tokens), theirs(tokens)
    ours_t, theirs_t = [], []
    for _ in range(args.repeats):
        ours_t.append(timed(lambda: ours(tokens)))
        theirs_t.append(timed(lambda: theirs(tokens)))
    ours_s, theirs_s = statistics.median(ours_t), statistics.median(theirs_t)
    ratio = theirs_s / ours_s

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model.safetensors {size_mb:.0f} MB")
    print(f"load from folder: ours {load_s:.2f} s (median of 3; target < {TARGET_LOAD_S} s), "
          f"transformers' from_pretrained {hf_load_s:.2f} s; a folder we wrote, checksum verified: {checked_s:.2f} s")  # fmt: skip
    print(f"forward 1 x {args.pos}: ours {ours_s * 1e3:.1f} ms, transformers {theirs_s * 1e3:.1f} ms "
          f"(median of {args.repeats}); ours is {ratio:.2f}x as fast (target >= {TARGET_RATIO})")  # fmt: skip
    missed = load_s >= TARGET_LOAD_S or ratio < TARGET_RATIO
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
