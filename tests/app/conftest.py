"""A tiny runs folder for the app tests: two small induction runs laid out as the trainer writes them.

The runs are built with blocks.saving and the run layout (config.json, checkpoints/,
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
from blocks.saving import save_tensors
from blocks.scores import head_scores, repeated_tokens
from blocks.tasks.common import dataset_tensors, next_token_nll
from blocks.tasks.induction import BOS, InductionTask

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # views/ sits beside app.py, outside the installed packages
APP = str(ROOT / "app.py")
TASK_OPTIONS = {"seed": 0, "n_symbols": 10, "seq_len": 24, "min_repeat": 3, "max_repeat": 8,
                "n_train": 64, "n_test": 16, "eval_n": 6, "loss_on": "all"}
STEPS = (0, 4, 8)


def make_run(path: Path, attn_only: bool, seed: int = 0) -> Path:
    """A run at `path` with checkpoints at STEPS, metrics lines with eval numbers and head scores."""
    task = InductionTask(**TASK_OPTIONS)
    cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=task.tokenizer.d_vocab, n_ctx=24,
                            d_mlp=32, attn_only=attn_only)
    torch.manual_seed(seed)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens, _ = dataset_tensors(task.dataset("train"))
    (path / "checkpoints").mkdir(parents=True)
    lines = []
    for step in range(STEPS[-1] + 1):
        if step in STEPS:
            model.eval()
            save_tensors(model.state_dict(), path / "checkpoints" / f"step_{step:06d}.safetensors")
            evals = {f"eval/{k}": v for k, v in task.evaluate(model).items()}
            n = TASK_OPTIONS["eval_n"]
            scores = head_scores(model, repeated_tokens(n, 8, 1, 11, BOS, seed=1), n)
            lines.append({"step": step, **evals, "head_scores": {k: v.tolist() for k, v in scores.items()}})
            model.train()
        loss = next_token_nll(model(tokens[:16]), tokens[:16]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        lines.append({"step": step + 1, "train_loss": float(loss.detach()), "lr": 3e-3})
    config = {"model": cfg.to_dict(), "task": {"name": "induction", "options": TASK_OPTIONS},
              "train": {"steps": STEPS[-1], "lr": 3e-3}, "tokenizer": task.tokenizer.to_dict()}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/attn (attention-only, with a corrupt checkpoint) and runs/mlp (with MLPs)."""
    root = tmp_path_factory.mktemp("runs")
    attn = make_run(root / "attn", attn_only=True)
    (attn / "checkpoints" / "step_000006.safetensors").write_bytes(b"not a safetensors file")
    make_run(root / "mlp", attn_only=False, seed=1)
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
