"""Training speed: time to induction heads with the default command, and tokens/s against TransformerLens.

    python benchmarks/bench_train.py                 # both parts
    python benchmarks/bench_train.py --skip-induction
    TL_PYTHON=/path/to/venv/bin/python python benchmarks/bench_train.py

1. Runs `python -m blocks.train --task induction` (defaults, into a temporary folder) and
   reads metrics.jsonl: the step and time at which the bar was first met (a previous-token
   head in layer 0 and an induction head in layer 1 above 0.4, repeated-half loss < 1 nat,
   first half within 0.5 nat of ln(vocab)), and the whole run's wall time.
   Targets on a 2-core CPU: <= 45 s to the bar, < 3 min for the whole run.
2. Training tokens/s of our Transformer and TransformerLens 2.18's HookedTransformer at one
   configuration (2 layers, d_model 128, 4 heads, d_mlp 512, n_ctx 128, batch 64, AdamW),
   interleaved in one process (run under $TL_PYTHON, default .tlvenv/bin/python in the repository, which has
   both; without it ours is measured alone and the script says so). Target: ours >= 1.4x TL; also measured with the backend off (the
   modules' own code only), what a reader who edits that code trains at.
   Also the fraction of this machine's measured float32 matmul peak (oneDNN's) that training reaches,
   counting 6 * (non-embedding params) * tokens + attention (12 * layers * n_ctx * d_model per token).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TL_PYTHON = os.environ.get("TL_PYTHON", str(REPO / ".tlvenv" / "bin" / "python"))
CFG = dict(n_layers=2, d_model=128, n_heads=4, d_mlp=512, n_ctx=128, d_vocab=512)
BATCH = 64


def time_to_induction(python: str) -> dict[str, float | int | None]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "induction"
        start = time.perf_counter()
        done = subprocess.run(
            [python, "-m", "blocks.train", "--task", "induction", "--out", str(out), "--no-progress"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"training failed ({done.returncode}):\n{done.stderr[-2000:]}")
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    hit = next((m for m in lines if m.get("milestone") == "induction_formed"), None)
    evals = [m for m in lines if "eval/loss_repeated_half" in m]
    formed = next((m for m in evals if m["step"] == (hit or {}).get("step")), evals[-1])
    return {
        "milestone_step": hit["step"] if hit else None,
        "train_clock_s": hit["elapsed_s"] if hit else None,
        "wall_to_milestone_s": hit.get("wall_s") if hit else None,
        "whole_run_wall_s": round(wall, 1),
        "prev_token_l0": round(formed["eval/prev_token_score_l0"], 3),
        "induction_l1": round(formed["eval/induction_score_max"], 3),
        "loss_repeated_half": round(formed["eval/loss_repeated_half"], 3),
        "loss_first_half": round(formed["eval/loss_first_half"], 3),
        "ln_vocab": round(formed["eval/ln_vocab"], 3),
    }


def throughput(rounds: int = 12, steps: int = 3) -> dict[str, object]:
    """Runs inside one python: ours, then TL if importable, interleaved; tokens/s medians.

    The ratio is the median over rounds of (ours / TL) within each round: pairing keeps the
    machine's drift between rounds out of it (a drift that slows one model more still shows).
    """
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from blocks.fast import keep_freed_memory

    keep_freed_memory()  # as blocks.train does; both models measured here share it
    from blocks import Transformer, TransformerConfig
    from scratchnn.backend import reference_only

    torch.manual_seed(0)
    models = {"ours": Transformer(TransformerConfig(**CFG, act_fn="gelu"))}
    models["ours_reference"] = copy.deepcopy(models["ours"])  # the same model, trained on its own code only
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        models["transformer_lens"] = HookedTransformer(
            HookedTransformerConfig(
                n_layers=CFG["n_layers"],
                d_model=CFG["d_model"],
                n_heads=CFG["n_heads"],
                d_head=CFG["d_model"] // CFG["n_heads"],
                d_mlp=CFG["d_mlp"],
                n_ctx=CFG["n_ctx"],
                d_vocab=CFG["d_vocab"],
                act_fn="gelu",
                normalization_type="LN",
                device="cpu",
            )
        )
    except ImportError:
        pass
    tokens = torch.randint(0, CFG["d_vocab"], (BATCH, CFG["n_ctx"]))
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}

    def train_steps(name: str, n: int) -> float:
        model, opt = models[name], opts[name]
        start = time.perf_counter()
        with reference_only() if name == "ours_reference" else contextlib.nullcontext():
            for _ in range(n):
                logits = model(tokens)
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return BATCH * CFG["n_ctx"] * n / (time.perf_counter() - start)

    for name in models:
        train_steps(name, 2)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name in models:
            rates[name].append(train_steps(name, steps))
    result: dict[str, object] = {name: round(statistics.median(r)) for name, r in rates.items()}
    if "transformer_lens" in rates:
        for ours in ("ours", "ours_reference"):
            ratios = sorted(a / b for a, b in zip(rates[ours], rates["transformer_lens"]))
            result[f"{ours}_ratio"] = [round(statistics.median(ratios), 3), round(ratios[0], 3), round(ratios[-1], 3)]
        result["rounds"] = rounds

    n = 2048  # the matmul peak: the fast backend's (oneDNN's on this CPU), which runs our training's matmuls
    a, b = torch.randn(n, n), torch.randn(n, n)
    from blocks.fast.linear import linear

    with torch.no_grad():
        linear(a, b, None)
        best = min(_timed(lambda: linear(a, b, None)) for _ in range(5))
    peak = 2 * n**3 / best
    ours = models["ours"]
    params = sum(p.numel() for name, p in ours.named_parameters() if name not in ("embed.weight", "pos_embed.weight"))
    per_token = 6 * params + 12 * CFG["n_layers"] * CFG["n_ctx"] * CFG["d_model"]
    result.update(
        peak_gflops=round(peak / 1e9, 1),
        model_gflops=round(per_token * result["ours"] / 1e9, 2),
        fraction_of_peak=round(per_token * result["ours"] / peak, 3),
        flops_per_token=per_token,
    )
    return result


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-induction", action="store_true")
    parser.add_argument("--throughput-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.throughput_only:
        print(json.dumps(throughput()))
        return
    print("| measure | value |\n| --- | --- |")
    if not args.skip_induction:
        r = time_to_induction(sys.executable)
        for k, v in r.items():
            print(f"| induction: {k} | {v} |")
    python = TL_PYTHON if Path(TL_PYTHON).is_file() else sys.executable
    if python == sys.executable:
        print(f"| note | no TransformerLens venv at {TL_PYTHON} (set TL_PYTHON); measuring ours alone |")
    done = subprocess.run(
        [python, __file__, "--throughput-only"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if done.returncode != 0:
        raise SystemExit(f"throughput run failed:\n{done.stderr[-2000:]}")
    t = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"| train tokens/s, ours | {t['ours']} |")
    print(f"| train tokens/s, ours with the backend off (SANDBOX_FAST=0) | {t['ours_reference']} |")
    if "transformer_lens" in t:
        print(f"| train tokens/s, TransformerLens 2.18 | {t['transformer_lens']} |")
        for key, what in (("ours_ratio", "ours / TL"), ("ours_reference_ratio", "ours with the backend off / TL")):
            median, low, high = t[key]
            print(
                f"| {what}, median of {t['rounds']} paired rounds | {median:.3f}x (range {low:.2f}x to {high:.2f}x) |"
            )
    else:
        print("| train tokens/s, TransformerLens | not measured: transformer_lens not importable |")
    print(f"| float32 matmul peak (2048^3) | {t['peak_gflops']} GFLOP/s |")
    print(f"| training FLOP/s, ours | {t['model_gflops']} GFLOP/s ({t['flops_per_token']} FLOPs/token) |")
    print(f"| fraction of matmul peak | {t['fraction_of_peak']:.1%} |")


if __name__ == "__main__":
    main()
