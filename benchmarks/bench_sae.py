"""How fast SAEs train: activations per second on stored activations (beside SAELens), and a default SAE per default run.

    python benchmarks/bench_sae.py [--steps 300] [--tasks induction sort sycophancy modular_addition]
    SAELENS_PYTHON=/path/to/venv/bin/python python benchmarks/bench_sae.py     # also time SAELens

Targets (issue 17): training throughput at least 1.5x SAELens's for the same TopK SAE (d_in 64,
width 512, k 16, batch 1024, Adam) on the same stored activations on this CPU; a default SAE
(`python -m probes.sae` defaults: TopK, width 8 x d_model, k 16, 2000 steps of 1024, read
through the 65,536-row buffer from the task's training data) on each default run's last
residual stream in under 2 minutes. The default models are built with random weights: the time
does not depend on them. SAELens runs in its own virtual environment (it cannot be imported
beside TransformerLens 4): `python3 -m venv .saelens && .saelens/bin/pip install torch==2.13.0
sae-lens`; without SAELENS_PYTHON (or .saelens/bin/python) its column is skipped, saying so.
On a machine shared with other work, pass --threads 1: two OpenMP threads that spin against
other processes slowed both libraries about 15x here. Exits 1 on a missed target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from blocks import Transformer
from blocks.fast import keep_freed_memory
from blocks.tasks import get_task
from blocks.tasks.common import dataset_tensors
from blocks.weights import save_tensors
from probes.sae.activations import run_batches, shuffled_batches, tensor_chunks
from probes.sae.sae import SAEConfig, SparseAutoencoder
from probes.sae.train import SAETrainConfig, train_sae

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO, TARGET_DEFAULT_S = 1.5, 120.0
D_IN, WIDTH, K, BATCH = 64, 512, 16, 1024

# Run in SAELens's venv: the same TopK SAE, the same batches, Adam, forward + backward + step.
SAELENS_LOOP = r"""
import json, sys, time, torch
from safetensors.torch import load_file
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
acts = load_file(sys.argv[1])["acts"]
steps, batch, k, width = (int(a) for a in sys.argv[2:6])
torch.manual_seed(0)
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=width, k=k))
opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
dead = torch.zeros(width, dtype=torch.bool)
def step(i):
    x = acts[(i * batch) % (acts.shape[0] - batch):][:batch]
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead,
                                                    n_training_steps=i, is_logging_step=False))
    opt.zero_grad(); out.loss.backward(); opt.step()
for i in range(10): step(i)
t = time.perf_counter()
for i in range(steps): step(i)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def stored_activations(n: int = 200_000) -> torch.Tensor:
    """Activations of the default sycophancy model's last residual stream (random weights), stored as a tensor."""
    task = get_task("sycophancy")
    torch.manual_seed(0)
    model = Transformer(task.default_model_config()).eval()
    tokens, _ = dataset_tensors(task.dataset("train"))
    rows = []
    with torch.no_grad():
        for start in range(0, n // task.seq_len + 1, 512):
            _, cache = model.run_with_cache(tokens[start : start + 512], names="blocks.1.hook_resid_post")
            rows.append(cache["blocks.1.hook_resid_post"].flatten(0, 1))
    return torch.cat(rows)[:n]


def ours(acts: torch.Tensor, steps: int) -> float:
    """Activations per second of our TopK SAE on `acts` (batches through the shuffle buffer, as in training)."""
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=acts.shape[1], width=WIDTH, kind="topk", k=K))
    batches = shuffled_batches(tensor_chunks(acts), BATCH, 65_536)
    train_sae(sae, batches, SAETrainConfig(steps=10, batch_size=BATCH))  # warm-up
    sae = SparseAutoencoder(SAEConfig(d_in=acts.shape[1], width=WIDTH, kind="topk", k=K))
    started = time.perf_counter()
    train_sae(sae, batches, SAETrainConfig(steps=steps, batch_size=BATCH))
    return steps * BATCH / (time.perf_counter() - started)


def saelens(acts: torch.Tensor, steps: int) -> float | str:
    """SAELens's activations per second, or why it was not measured."""
    python = os.environ.get("SAELENS_PYTHON", str(REPO / ".saelens" / "bin" / "python"))
    if not Path(python).exists():
        return f"no SAELens venv at {python} (set SAELENS_PYTHON)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.safetensors"
        save_tensors({"acts": acts.contiguous()}, path)
        proc = subprocess.run(
            [python, "-c", SAELENS_LOOP, str(path), str(steps), str(BATCH), str(K), str(WIDTH)],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        )
    if proc.returncode != 0:
        return "SAELens failed: " + (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return steps * BATCH / json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


def default_sae_seconds(task_name: str) -> tuple[float, float, str]:
    """(seconds to build the data, seconds to train the default SAE, hook) on the task's default model."""
    started = time.perf_counter()
    task = get_task(task_name)
    torch.manual_seed(0)
    model = Transformer(task.default_model_config()).eval()
    tokens, _ = dataset_tensors(task.dataset("train"))
    data_s = time.perf_counter() - started
    hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    d = model.cfg.d_model
    sae = SparseAutoencoder(SAEConfig(d_in=d, width=8 * d, kind="topk", k=16, hook_name=hook))
    cfg = SAETrainConfig()
    started = time.perf_counter()
    train_sae(sae, run_batches(model, tokens, hook, cfg.batch_size, 65_536), cfg)
    return data_s, time.perf_counter() - started, hook


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="timed steps of the throughput comparison (default 300)")
    p.add_argument("--tasks", nargs="*", default=["induction", "sort", "sycophancy", "modular_addition"])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    missed = []

    acts = stored_activations()
    print(f"\nTopK SAE d_in {acts.shape[1]} -> {WIDTH}, k {K}, batch {BATCH}, {args.steps} steps on stored activations")
    mine = ours(acts, args.steps)
    theirs = saelens(acts, args.steps)
    print(f"  ours:    {mine:,.0f} activations/s")
    if isinstance(theirs, str):
        print(f"  SAELens: not measured: {theirs}")
    else:
        ratio = mine / theirs
        print(f"  SAELens: {theirs:,.0f} activations/s; ours / SAELens {ratio:.2f}x (target >= {TARGET_RATIO})")
        if ratio < TARGET_RATIO:
            missed.append(f"throughput {ratio:.2f}x SAELens")

    print(
        f"\ndefault SAE (TopK, width 8 x d_model, k 16, 2000 x 1024) per default run, target < {TARGET_DEFAULT_S:.0f} s"
    )
    for name in args.tasks:
        data_s, train_s, hook = default_sae_seconds(name)
        flag = "" if train_s < TARGET_DEFAULT_S else "  MISSED"
        print(f"  {name:18s} {hook:26s} train {train_s:6.1f} s (task data {data_s:.1f} s){flag}")
        if flag:
            missed.append(f"default SAE on {name}: {train_s:.0f} s")
    if missed:
        print("\nmissed: " + "; ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
