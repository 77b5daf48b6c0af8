"""Fault injection: a tiny trained run to attack (links, crafted configs, corrupt lines, kills), and the app on it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from blocks.training.cli import build
from blocks.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # views/ sits beside app.py, outside the installed packages
APP = str(ROOT / "app.py")

TINY = {
    "n_symbols": 8,
    "seq_len": 16,
    "min_repeat": 2,
    "max_repeat": 6,
    "eval_n": 4,
    "n_train": 64,
    "n_test": 8,
    "d_model": 16,
    "n_heads": 2,
    "steps": 4,
    "batch_size": 8,
    "eval_every": 2,
    "log_every": 1,
    "warmup_steps": 1,
    "n_checkpoints": 3,
    "device": "cpu",
}


def tiny_trainer(out: Path, resume: bool = False, overwrite: bool = False, **changes) -> Trainer:
    task, model_cfg, train_cfg = build("induction", {**TINY, **changes})
    return Trainer(task, model_cfg, train_cfg, out, resume=resume, overwrite=overwrite, progress=False)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny induction run (checkpoints 0, 2?, 4), never modified: copy it with `run_copy`."""
    out = tmp_path_factory.mktemp("trained") / "run"
    tiny_trainer(out).run()
    return out


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path):
    """`run_copy(dest)` copies the trained run to `dest` (default tmp_path/runs/run) and returns it."""

    def copy(dest: Path | None = None) -> Path:
        dest = dest or tmp_path / "runs" / "run"
        shutil.copytree(trained, dest)
        return dest

    return copy


def app_on(root: Path, monkeypatch: pytest.MonkeyPatch, page: str | None = None, **state) -> AppTest:
    """The app on the runs folder `root`, with session state set, after one run (and a switch to `page`)."""
    monkeypatch.setenv("SANDBOX_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page is not None:
        at.switch_page(f"views/{page}.py")
        at.run()
    return at


def shown(at: AppTest) -> str:
    """Every message, markdown and JSON block the page drew, as one string."""
    parts = [e.value for kind in ("info", "warning", "error", "markdown", "caption") for e in getattr(at, kind)]
    parts += [str(e.value) for e in at.sidebar.warning] + [str(j.proto.body) for j in at.json]
    return "\n".join(parts)
