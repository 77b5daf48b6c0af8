"""GPU check: train the default induction task on CUDA with bf16 for a while, then compare CPU and CUDA logits.

    python scripts/gpu_check.py [--steps 600] [--out runs/gpu_check]

Prints training tokens/s on the GPU, the induction numbers reached, and the largest absolute
logit difference between the CPU (float32) and CUDA (float32, and bf16 autocast) forwards of
the same weights. Exits with status 1 and a message when torch sees no CUDA device.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blocks.training.cli import build  # noqa: E402
from blocks.training.runs import load_run  # noqa: E402
from blocks.training.trainer import Trainer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default=None, help="run directory (default: a temporary folder)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "no CUDA device: torch.cuda.is_available() is False (CPU-only torch build or no GPU); "
            "run this on a machine with an NVIDIA GPU and a CUDA build of torch",
            file=sys.stderr,
        )
        return 1
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "induction")
        task, model_cfg, train_cfg = build(
            "induction", {"device": "cuda", "bf16": True, "steps": args.steps, "eval_every": 100, "n_checkpoints": 5}
        )
        trainer = Trainer(task, model_cfg, train_cfg, out, overwrite=True, progress=False)
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = trainer.run()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        tokens = train_cfg.steps * train_cfg.batch_size * task.seq_len
        print(
            f"trained {result.step} steps in {wall:.1f} s wall ({trainer.elapsed:.1f} s in steps and evals): "
            f"{tokens / trainer.elapsed:,.0f} training tokens/s with bf16 autocast"
        )
        run = load_run(out)
        last = [m for m in run.metrics if "eval/induction_score_max" in m][-1]
        print("final eval: " + ", ".join(f"{k[5:]}={v:.3f}" for k, v in last.items() if k.startswith("eval/")))
        print(f"induction bar first met at step {result.milestone_step}")

        batch = torch.tensor([task.example(seed) for seed in range(16)])
        cpu_model = run.model.float().cpu()
        with torch.no_grad():
            cpu_logits = cpu_model(batch)
            gpu_model = load_run(out, device="cuda").model
            gpu_logits = gpu_model(batch.cuda()).cpu()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16_logits = gpu_model(batch.cuda()).float().cpu()
        scale = cpu_logits.abs().max().item()
        print(
            f"max |logit| {scale:.2f}; max abs difference CPU fp32 vs CUDA fp32: {(cpu_logits - gpu_logits).abs().max():.2e}; "
            f"CPU fp32 vs CUDA bf16 autocast: {(cpu_logits - bf16_logits).abs().max():.2e}"
        )
        agree = (cpu_logits.argmax(-1) == bf16_logits.argmax(-1)).float().mean().item()
        print(f"argmax agreement CPU fp32 vs CUDA bf16: {agree:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
