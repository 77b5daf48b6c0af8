"""How fast circuit discovery answers, and how well its estimates rank edges on the default runs.

    python benchmarks/bench_circuit.py [--runs runs] [--repeats 3] [--threads N]

Targets (issue 16): EAP over every edge of the 4-layer benchmark model (4 layers, d_model 256,
8 heads, d_mlp 1024, n_ctx 128, batch 64 x 128, random weights: the time does not depend on
them) in at most 3x one forward and backward pass; exact edge patching of every edge of the
default induction model (64 prompt pairs) under 30 s. With `--runs`, each default run found
there (induction, sort, sycophancy, modular_addition) also reports the Spearman correlation
of EAP and EAP-IG (5 steps) with exact edge patching on 256 prompt pairs and the EAP-IG circuit's size and
faithfulness. Prints medians of `repeats` timed calls after a warm-up; exits 1 on a missed target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from bench_probes import median_time  # benchmarks/ is this script's folder

from blocks import Transformer, TransformerConfig
from blocks.fast import keep_freed_memory
from blocks.tasks import get_task
from blocks.training.runs import load_run
from probes.circuit.attribution import edge_attribution
from probes.circuit.contrast import Contrast
from probes.circuit.discovery import circuit_from_scores
from probes.circuit.exact import exact_edge_patching
from probes.circuit.graph import Graph
from probes.circuit.scores import rank_agreement

TARGET_EAP_RATIO, TARGET_EXACT_S = 3.0, 30.0
BENCH_MODEL = dict(n_layers=4, d_model=256, n_heads=8, d_mlp=1024, d_vocab=512, n_ctx=128, act_fn="gelu")
BATCH = 64
PAIRS = 256  # rank agreement among many near-zero edges needs more than 64 pairs to settle


def bench_eap(repeats: int) -> bool:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**BENCH_MODEL)).eval()
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 512, (BATCH, 128), generator=gen)
    corrupted = torch.randint(0, 512, (BATCH, 128), generator=gen)
    mask = torch.zeros_like(clean, dtype=torch.bool)
    mask[:, -1] = True
    contrast = Contrast.of_answers(clean, corrupted, clean.roll(-1, 1), corrupted.roll(-1, 1), mask)

    def forward_backward() -> None:
        contrast.metric(model(clean)).backward()
        model.zero_grad(set_to_none=True)

    one = median_time(forward_backward, repeats)
    eap = median_time(lambda: edge_attribution(model, contrast, "eap"), repeats)
    graph = Graph.of(model.cfg)
    ratio = eap / one
    ok = ratio <= TARGET_EAP_RATIO
    print(
        f"EAP over {graph.n_edges} edges of the 4-layer model (batch {BATCH} x 128): {eap:.3f} s; one forward and "
        f"backward {one:.3f} s; ratio {ratio:.2f}x (target <= {TARGET_EAP_RATIO}x) {'ok' if ok else 'MISSED'}"
    )
    return ok


def bench_exact(repeats: int) -> bool:
    task = get_task("induction")
    torch.manual_seed(0)
    model = Transformer(task.default_model_config()).eval()
    contrast = task.circuit_contrast(64)
    seconds = median_time(lambda: exact_edge_patching(model, contrast), repeats)
    ok = seconds < TARGET_EXACT_S
    edges = Graph.of(model.cfg).n_edges
    print(
        f"exact edge patching of the default induction model ({edges} edges, 64 pairs): {seconds:.2f} s "
        f"(target < {TARGET_EXACT_S:.0f} s) {'ok' if ok else 'MISSED'}"
    )
    return ok


def report_runs(root: Path) -> None:
    print(f"\non the default runs ({PAIRS} prompt pairs each):")
    print(f"{'run':<18}{'edges':>6}{'EAP rho':>9}{'IG rho':>8}{'IG circuit':>12}{'faithful':>10}")
    for name in ("induction", "sort", "sycophancy", "modular_addition"):
        path = root / name
        if not (path / "config.json").is_file():
            print(f"{name:<18} (no run at {path})")
            continue
        run = load_run(path)
        model = run.model.eval()
        contrast = run.task.circuit_contrast(PAIRS)
        exact = exact_edge_patching(model, contrast)
        eap = edge_attribution(model, contrast, "eap")
        ig = edge_attribution(model, contrast, "eap-ig", steps=5)
        circuit = circuit_from_scores(model, contrast, ig)
        print(
            f"{name:<18}{exact.graph.n_edges:>6}{rank_agreement(eap, exact):>9.3f}{rank_agreement(ig, exact):>8.3f}"
            f"{circuit.size:>12}{circuit.faithfulness:>10.3f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=None, help="a runs folder holding the default runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU")
    ok = bench_eap(args.repeats) & bench_exact(args.repeats)
    if args.runs is not None:
        report_runs(args.runs)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
