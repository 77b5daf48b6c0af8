"""The generation box: shown for text runs only; it continues the prompt with the run's model, as model.generate does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from app_server import APP
from streamlit.testing.v1 import AppTest

from blocks.training.cli import build
from blocks.training.runs import load_run
from blocks.training.trainer import Trainer

SHAKESPEARE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text_runs")
    corpus = root.parent / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:6000])
    options = {"source": str(corpus), "seq_len": 16, "tokenizer": "bpe", "vocab_size": 280, "d_model": 16,
               "n_heads": 2, "n_layers": 1, "steps": 2, "batch_size": 4, "eval_every": 2, "warmup_steps": 1,
               "device": "cpu"}  # fmt: skip
    Trainer(*build("text", options), root / "text", progress=False).run()
    return root


def open_app(runs: Path, monkeypatch: pytest.MonkeyPatch, **state) -> AppTest:
    monkeypatch.setenv("SANDBOX_RUNS", str(runs))
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def test_generation_box_continues_the_prompt_as_the_model_does(text_runs: Path, monkeypatch) -> None:
    at = open_app(text_runs, monkeypatch, generate_prompt="First Citizen:", generate_temperature=0.0, generate_n=6)
    assert not at.exception
    at.button(key="generate_go").click().run()
    assert not at.exception
    run = load_run(text_runs / "text")
    ids = run.tokenizer.encode("First Citizen:")
    want = run.tokenizer.decode(run.model.generate(torch.tensor([ids]), 6, temperature=0)[0].tolist())
    assert at.text[-1].value == want and want.startswith("First Citizen:") and len(want) > len("First Citizen:")


def test_no_generation_box_for_other_tasks(app) -> None:
    at = app(run="attn")
    assert not at.exception
    assert not [b for b in at.button if b.key == "generate_go"]
