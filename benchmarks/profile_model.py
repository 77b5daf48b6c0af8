"""Where the time of one forward (or training step) goes: the numbers behind README's explanations.

    python benchmarks/profile_model.py                       # 4 layers, d_model 256: a plain forward
    python benchmarks/profile_model.py --train --layers 2 --d-model 128 --heads 4
    python benchmarks/profile_model.py --malloc threshold    # the allocator setting before M_MMAP_MAX 0
    python benchmarks/profile_model.py --grad-w --layers 2 --d-model 128 --heads 4
    python benchmarks/profile_model.py --attention-sweep     # SDPA against our kernel at several shapes
    python benchmarks/profile_model.py --costs               # the forward with one piece left out at a time

Batch 64 x 128 positions, d_vocab 512, GELU, LayerNorm, float32 CPU. Prints tokens/s (median
of 8), minor page faults per call, the float32 matmul peak (2048^3, MKL and oneDNN), the
time a layer of attention's products at the model's shape through torch's ops and through ours
(blocks.attention_kernel: fused forward and backward, the explicit path, head results), and a
torch.profiler table (our kernels appear as blocks::<name>): ms per call of each op and shape, with GFLOP/s for the matmuls and the
fastest and slowest single call (the profiler inflates memory-bound ops unevenly).
`--malloc`: `keep` is blocks.runtime.keep_freed_memory(); `threshold` only raises glibc's
mmap threshold to its 32 MB ceiling and stops trimming (our setting before M_MMAP_MAX 0);
`glibc` leaves malloc alone. `--grad-w` instead times the weight gradients of the model's
linear maps as one matmul (x.T @ grad) and as blocks.linear_ops computes them (split over two
threads where that was faster), and training steps with each, in paired rounds. `--costs`
times the plain forward whole and with one piece left out at a time (the MLP activation, the
LayerNorms, attention's products; outputs wrong, timing only), in interleaved rounds, against
the time the model's linear maps would take at the oneDNN matmul peak: what is left to gain
outside the matmuls.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import blocks.attention  # noqa: E402
import blocks.mlp  # noqa: E402
from blocks import Transformer, TransformerConfig, attention_kernel, linear_ops  # noqa: E402
from blocks.norm import HookedLayerNorm  # noqa: E402
from blocks.runtime import keep_freed_memory  # noqa: E402
from bench_probes import median_time  # noqa: E402  (this folder is on sys.path when run as a script)

BATCH, N_CTX, D_VOCAB = 64, 128, 512


def set_malloc(mode: str) -> None:
    if mode == "keep":
        keep_freed_memory()
    elif mode == "threshold":
        mallopt = ctypes.CDLL("libc.so.6").mallopt
        mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD at glibc's 64-bit ceiling
        mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD


def onednn_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def peak_gflops(matmul: Callable[[torch.Tensor, torch.Tensor], object]) -> float:
    """GFLOP/s of `matmul` on two float32 2048 x 2048 matrices (median of 5): this machine's matmul peak."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / median_time(lambda: matmul(a, b), 5) / 1e9


def matmul_flops(name: str, shapes: list) -> float:
    """FLOPs of one call from its input shapes ([M, K] x [N, K] for oneDNN's linear, [M, K] x [K, N] for mm, bmm per batch)."""
    if name == "mkldnn::_linear_pointwise":
        (m, k), (n, _) = shapes[0], shapes[1]
        return 2 * m * k * n
    if name == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2 * m * k * n
    if name == "aten::addmm":
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2 * m * k * n
    if name == "aten::bmm":  # the weight gradients split over threads (blocks.linear_ops._weight_grad)
        (b, m, k), (_, _, n) = shapes[0], shapes[1]
        return 2 * b * m * k * n
    return 0.0


def attention_times(cfg: TransformerConfig) -> dict[str, tuple[float, float]]:
    """Seconds a layer of attention's products at the model's shape: torch's ops, then ours (blocks.attention_kernel)."""
    b, n, h, e = BATCH, N_CTX, cfg.n_heads, cfg.d_head
    qkv = torch.randn(b, n, 3, h, e, requires_grad=True)
    q, k, v = qkv.detach().unbind(2)
    grad, W_O = torch.randn(b, n, h, e), torch.randn(h, e, cfg.d_model)
    bias = torch.zeros(n, n).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    cases: dict[str, Callable[[], object]] = {
        "fused forward": lambda: attention_kernel.causal_attention(q, k, v),
        "fused forward+backward": lambda: attention_kernel.causal_attention(*qkv.unbind(2)).backward(grad),
        "explicit forward (scores, softmax, pattern @ v)": lambda: attention_kernel.pattern_times_values(
            attention_kernel.causal_scores(q, k, bias).softmax(-1), v
        ),
        "head results (hook_result)": lambda: attention_kernel.head_results(v, W_O),
    }
    return {name: torch_and_ours(fn, "backward" in name, 20) for name, fn in cases.items()}


def torch_and_ours(fn: Callable[[], object], grad: bool, repeats: int) -> tuple[float, float]:
    """Median seconds of fn through torch's ops (our kernels switched off), then through ours."""
    with torch.set_grad_enabled(grad):
        with linear_ops.fused_kernels(False):
            theirs = median_time(fn, repeats)
        return theirs, median_time(fn, repeats)


SWEEP = [(64, 128, 4, 16), (64, 32, 4, 16), (64, 128, 8, 32), (8, 512, 8, 64), (16, 256, 12, 64), (4, 1024, 4, 64),
         (2, 2048, 4, 128), (1, 64, 2, 32)]  # batch, positions, heads, d_head


def attention_sweep() -> None:
    """Fused attention through torch's SDPA and through our kernel, forward and forward+backward, at several shapes."""
    print(f"blocks.attention_kernel: {attention_kernel.kernel_status() or 'in use'}; medians of 10, ms")
    print("| batch, pos, heads, d_head | forward: SDPA / ours | forward+backward: SDPA / ours |")
    print("|---|---|---|")
    for b, n, h, e in SWEEP:
        qkv = torch.randn(b, n, 3, h, e, requires_grad=True)
        q, k, v = qkv.detach().unbind(2)
        grad = torch.randn(b, n, h, e)
        cells = []
        for train in (False, True):

            def fn() -> object:
                if train:
                    return attention_kernel.causal_attention(*qkv.unbind(2)).backward(grad)
                return attention_kernel.causal_attention(q, k, v)

            theirs, ours = torch_and_ours(fn, train, 10)
            cells.append(f"{theirs * 1e3:.2f} / {ours * 1e3:.2f} ({theirs / ours:.2f}x)")
        print(f"| {b}, {n}, {h}, {e} | {cells[0]} | {cells[1]} |")


def piece_costs(model: Transformer, tokens: torch.Tensor, rounds: int = 12) -> None:
    """The plain forward whole and with one piece left out at a time (outputs wrong: timing only), interleaved."""
    affine = blocks.mlp.affine

    def without_activation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, act: str | None = None) -> torch.Tensor:
        return affine(x, weight, bias)

    left_out: dict[str, Callable[[], AbstractContextManager[object]]] = {
        "nothing": nullcontext,
        "the MLP activation (GELU inside W_in's matmul)": lambda: mock.patch.object(blocks.mlp, "affine", without_activation),
        "the LayerNorms (ln1, ln2, ln_final)": lambda: mock.patch.object(HookedLayerNorm, "forward", lambda self, x: x),
        "attention's products (our fused kernel)": lambda: mock.patch.object(
            blocks.attention, "causal_attention", lambda q, k, v: q.new_empty(q.shape)
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in left_out}
    with torch.no_grad():
        for _ in range(rounds + 1):  # the first round warms up
            for name, patch in left_out.items():
                with patch():
                    started = time.perf_counter()
                    model(tokens)
                    model(tokens)
                    times[name].append((time.perf_counter() - started) / 2)
    medians = {name: statistics.median(t[1:]) for name, t in times.items()}
    cfg, rows = model.cfg, tokens.numel()
    per_layer = cfg.d_model * 3 * cfg.n_heads * cfg.d_head + cfg.n_heads * cfg.d_head * cfg.d_model + 2 * cfg.d_model * cfg.d_mlp
    flops = 2 * rows * (cfg.n_layers * per_layer + cfg.d_model * cfg.d_vocab)
    peak = peak_gflops(onednn_matmul)
    print(f"linear maps: {flops / 1e9:.1f} GFLOP a forward, {flops / peak / 1e6:.0f} ms at the oneDNN peak "
          f"measured now ({peak:.0f} GFLOP/s on 2048^3)")
    print(f"the forward with one piece left out, medians of {rounds} interleaved rounds:")
    print("| left out | ms a forward | its cost, ms |")
    print("|---|---|---|")
    whole = medians["nothing"]
    for name, ms in medians.items():
        print(f"| {name} | {ms * 1e3:.1f} | {'' if name == 'nothing' else f'{(whole - ms) * 1e3:.1f}'} |")


def training_step(model: Transformer, opt: torch.optim.Optimizer, tokens: torch.Tensor) -> None:
    """One AdamW step on next-token cross-entropy, as benchmarks/bench_train.py times it."""
    logits = model(tokens)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def grad_w_report(model: Transformer, tokens: torch.Tensor) -> None:
    """Weight-gradient matmuls: one matmul, always split over two halves of the rows, and
    linear_ops._weight_grad (which splits where that was faster); then training steps with each."""
    cfg = model.cfg
    shapes = {"W_QKV": (cfg.d_model, 3 * cfg.n_heads * cfg.d_head), "W_O": (cfg.n_heads * cfg.d_head, cfg.d_model),
              "W_in": (cfg.d_model, cfg.d_mlp), "W_out": (cfg.d_mlp, cfg.d_model), "W_U": (cfg.d_model, cfg.d_vocab)}
    split, halves = linear_ops._weight_grad, linear_ops._halves_weight_grad

    print(f"weight gradients, {torch.get_num_threads()} threads, median of 20 (ratios against one matmul):")
    print("| weight | d_in x d_out | rows | x.T @ grad ms | halves | linear_ops |\n|---|---|---|---|---|---|")
    for rows in (512, 2048, tokens.numel()):
        for name, (d_in, d_out) in shapes.items():
            x, g = torch.randn(rows, d_in), torch.randn(rows, d_out)
            plain_s = median_time(lambda: x.t() @ g, 20)
            halves_s, ours_s = median_time(lambda: halves(x, g), 20), median_time(lambda: split(x, g), 20)
            print(f"| {name} | {d_in} x {d_out} | {rows} | {plain_s * 1e3:.2f} | {halves_s / plain_s:.3f} | "
                  f"{ours_s / plain_s:.3f} |")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def plain(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x.t() @ g

    def three_steps(weight_grad) -> float:  # type: ignore[no-untyped-def]
        linear_ops._weight_grad = weight_grad
        start = time.perf_counter()
        for _ in range(3):
            training_step(model, opt, tokens)
        return time.perf_counter() - start

    try:
        three_steps(plain), three_steps(split)
        ratios = []
        for i in range(16):  # alternate which goes first, so neither always runs on a warmer machine
            seconds = {fn: three_steps(fn) for fn in ((plain, split) if i % 2 == 0 else (split, plain))}
            ratios.append(seconds[split] / seconds[plain])
    finally:
        linear_ops._weight_grad = split
    ratios.sort()
    print(f"training step time, linear_ops over one matmul: median {statistics.median(ratios):.3f} "
          f"(range {ratios[0]:.3f} to {ratios[-1]:.3f}, 16 paired rounds of 3 steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--train", action="store_true", help="profile an AdamW training step instead of a forward")
    parser.add_argument("--malloc", choices=["keep", "threshold", "glibc"], default="keep")
    parser.add_argument("--rows", type=int, default=14, help="ops to list")
    parser.add_argument("--grad-w", action="store_true", help="time weight gradients: one matmul against linear_ops")
    parser.add_argument("--attention-sweep", action="store_true", help="time SDPA against our kernel at several shapes")
    parser.add_argument("--costs", action="store_true", help="time the forward with one piece left out at a time")
    args = parser.parse_args()
    set_malloc(args.malloc)
    if args.attention_sweep:
        attention_sweep()
        return
    torch.manual_seed(0)
    cfg = TransformerConfig(n_layers=args.layers, d_model=args.d_model, n_heads=args.heads, d_mlp=4 * args.d_model,
                            d_vocab=D_VOCAB, n_ctx=N_CTX, act_fn="gelu", normalization="LN")
    model = Transformer(cfg)
    tokens = torch.randint(0, D_VOCAB, (BATCH, N_CTX))
    if args.grad_w:
        grad_w_report(model, tokens)
        return
    if args.costs:
        piece_costs(model.eval(), tokens)
        return
    if args.train:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def call() -> None:
            training_step(model, opt, tokens)
    else:
        model.eval()

        def call() -> None:
            with torch.no_grad():
                model(tokens)

    seconds = median_time(call, 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        call()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
    peak_mkl, peak_dnn = peak_gflops(torch.matmul), peak_gflops(onednn_matmul)
    attention = attention_times(cfg)
    what = "training step" if args.train else "plain forward"
    print(f"{args.layers}L d{args.d_model} {args.heads}h, {what}, malloc {args.malloc}, {torch.get_num_threads()} threads")
    print(f"{BATCH * N_CTX / seconds:,.0f} tokens/s, {seconds * 1e3:.1f} ms a call, {faults:,.0f} page faults a call")
    print(f"matmul peak 2048^3: MKL {peak_mkl:.0f} GFLOP/s, oneDNN {peak_dnn:.0f} GFLOP/s")
    print(f"attention a layer at this shape, torch's ops / ours (blocks.attention_kernel: {attention_kernel.kernel_status() or 'in use'}):")
    for name, (theirs, ours) in attention.items():
        print(f"  {name}: {theirs * 1e3:.1f} / {ours * 1e3:.1f} ms ({theirs / ours:.2f}x)")

    n = 5
    with torch.profiler.profile(record_shapes=True) as prof:
        for _ in range(n):
            call()
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / n / 1e3
    each: dict[tuple[str, str], list[float]] = {}  # every single call's self time, to show how much one op swings
    for event in prof.events():
        each.setdefault((event.name, str(event.input_shapes)), []).append(event.self_cpu_time_total / 1e3)
    print(f"\nprofiled: {total:.1f} ms a call (self CPU time, all ops)")
    print("| op | input shapes | ms (its calls in one model call) | calls | GFLOP/s | one call, min-max ms |")
    print("|---|---|---|---|---|---|")
    for e in events[: args.rows]:
        ms = e.self_cpu_time_total / n / 1e3
        flops = matmul_flops(e.key, e.input_shapes) * e.count / n
        rate = f"{flops / ms / 1e6:.0f}" if flops else ""
        calls = each.get((e.key, str(e.input_shapes)), [0.0])
        print(f"| {e.key} | {str(e.input_shapes)[:70]} | {ms:.1f} | {e.count / n:.0f} | {rate} | "
              f"{min(calls):.1f}-{max(calls):.1f} |")


if __name__ == "__main__":
    main()
