"""A tiny runs folder for the app tests: small induction, sycophancy and modular-addition runs laid out as the trainer writes them.

The runs are built with blocks.weights and the run layout (config.json, checkpoints/,
metrics.jsonl) from a few real optimizer steps, so they take a second, not a training run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from blocks import Transformer, TransformerConfig
from blocks.tasks import get_task
from blocks.tasks.common import dataset_tensors, next_token_nll
from blocks.tasks.induction import BOS, InductionTask
from blocks.weights import save_tensors
from probes.head_scores import head_scores, repeated_tokens, score_batch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # views/ sits beside app.py, outside the installed packages

from app_server import APP  # noqa: E402  (a module name no other tests folder has, unlike conftest)

TASK_OPTIONS = {
    "seed": 0,
    "n_symbols": 10,
    "seq_len": 24,
    "min_repeat": 3,
    "max_repeat": 8,
    "n_train": 64,
    "n_test": 16,
    "eval_n": 6,
    "loss_on": "all",
}
STEPS = (0, 4, 8)


# Non-induction runs, so every page is driven on other tasks' tokenizers and shapes too: the
# sycophancy capstone (word tokens like "a=3", MLPs, LayerNorm) and modular addition (a 4-token
# context too short for head scores, no LayerNorm, ReLU).
SYCOPHANCY_OPTIONS = {"seed": 0, "n_train": 64, "n_test": 16}
MODADD_OPTIONS = {"seed": 0, "p": 7, "frac_train": 0.5}


def make_run(path: Path, attn_only: bool, seed: int = 0) -> Path:
    """An induction run at `path` with checkpoints at STEPS, metrics lines with eval numbers and head scores."""
    task = InductionTask(**TASK_OPTIONS)
    cfg = TransformerConfig(
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_vocab=task.tokenizer.d_vocab,
        n_ctx=24,
        d_mlp=None if attn_only else 32,
        attn_only=attn_only,
    )
    n = TASK_OPTIONS["eval_n"]
    return write_run(path, "induction", TASK_OPTIONS, cfg, seed, (repeated_tokens(n, 8, 1, 11, BOS, seed=1), n))


def make_task_run(path: Path, name: str, options: dict, seed: int = 0, **model: object) -> Path:
    """A run of task `name` whose model is `model` (TransformerConfig fields) on the task's vocabulary and length.

    Head scores are logged as the trainer logs them (Task.head_scores): only when the context fits [BOS] + r + r
    with r >= 4.
    """
    task = get_task(name, **options)
    cfg = TransformerConfig(d_vocab=task.tokenizer.d_vocab, n_ctx=task.seq_len, **model)
    return write_run(path, name, options, cfg, seed, score_batch(task.tokenizer.vocab, cfg.n_ctx, seed=99))


def write_run(
    path: Path, name: str, options: dict, cfg: TransformerConfig, seed: int, score: tuple[torch.Tensor, int] | None
) -> Path:
    """Train a few steps on the task's masked next-token loss, saving checkpoints at STEPS, as the trainer lays them out."""
    task = get_task(name, **options)
    torch.manual_seed(seed)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens, mask = dataset_tensors(task.dataset("train"))
    tokens, mask = tokens[:16], mask[:16, :-1].float()
    (path / "checkpoints").mkdir(parents=True)
    lines = []
    for step in range(STEPS[-1] + 1):
        if step in STEPS:
            model.eval()
            save_tensors(model.state_dict(), path / "checkpoints" / f"step_{step:06d}.safetensors")
            line = {"step": step, **{f"eval/{k}": v for k, v in task.evaluate(model).items()}}
            if score is not None:
                line["head_scores"] = {k: v.tolist() for k, v in head_scores(model, *score).items()}
            lines.append(line)
            model.train()
        loss = (next_token_nll(model(tokens), tokens) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        lines.append({"step": step + 1, "train_loss": float(loss.detach()), "lr": 3e-3})
    config = {
        "model": cfg.to_dict(),
        "task": {"name": name, "options": options},
        "train": {"steps": STEPS[-1], "lr": 3e-3},
        "tokenizer": task.tokenizer.to_dict(),
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Induction runs/attn (attention-only, with a corrupt checkpoint) and runs/mlp (with MLPs), runs/sycophancy, runs/modadd."""
    root = tmp_path_factory.mktemp("runs")
    attn = make_run(root / "attn", attn_only=True)
    (attn / "checkpoints" / "step_000006.safetensors").write_bytes(b"not a safetensors file")
    make_run(root / "mlp", attn_only=False, seed=1)
    make_task_run(root / "sycophancy", "sycophancy", SYCOPHANCY_OPTIONS, n_layers=2, d_model=16, n_heads=4, d_mlp=32)
    make_task_run(
        root / "modadd",
        "modular_addition",
        MODADD_OPTIONS,
        seed=1,
        n_layers=1,
        d_model=16,
        n_heads=4,
        d_mlp=32,
        act_fn="relu",
        normalization=None,
    )
    return root


@pytest.fixture
def app(runs_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh AppTest on the test runs folder; call app(page, **state) to run a page with state set."""
    monkeypatch.setenv("SANDBOX_RUNS", str(runs_dir))

    def start(page: str | None = None, **state) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        for key, value in state.items():
            at.session_state[key] = value
        at.run()
        if page is not None:
            at.switch_page(f"views/{page}.py")
            at.run()
        return at

    return start
