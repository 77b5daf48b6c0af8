"""A text run whose source file is gone still opens: its tokenizer is saved in the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import app_on

from blocks.training.cli import build
from blocks.training.runs import load_run
from blocks.training.trainer import Trainer
from probes.scripts.information_flow import main as flow

SHAKESPEARE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture
def orphan(tmp_path):
    """A trained text run whose source text was deleted afterwards."""
    source = tmp_path / "corpus.txt"
    source.write_text(SHAKESPEARE.read_text()[:3000] if SHAKESPEARE.exists() else "the quick brown fox. " * 150)
    options = {"source": str(source), "seq_len": 32, "d_model": 16, "n_heads": 2, "n_layers": 1, "steps": 2}
    options |= {"batch_size": 4, "eval_every": 2, "warmup_steps": 1, "device": "cpu"}
    task, model_cfg, train_cfg = build("text", options)
    run = tmp_path / "runs" / "text"
    Trainer(task, model_cfg, train_cfg, run, progress=False).run()
    source.unlink()
    return run


def test_examples_come_from_the_saved_vocabulary(orphan):
    run = load_run(orphan)
    ids = run.task.example(3)
    assert len(ids) == 32 and all(0 <= i < run.tokenizer.d_vocab for i in ids)
    assert run.task.example(3) == ids and run.task.example(4) != ids  # seeded, like the task's own examples


@pytest.mark.parametrize("page", ["flow", "heads", "lens", "ablate"])
def test_the_prompt_pages_work(orphan, monkeypatch, page):
    at = app_on(orphan.parent, monkeypatch, page=page, run="text")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart")


def test_the_flow_probe_works(orphan, tmp_path, capsys):
    flow(["--run", str(orphan), "--out", str(tmp_path / "out")])
    assert any((tmp_path / "out").glob("*.json"))


def test_the_neurons_page_says_what_needs_the_data_and_draws_the_rest(orphan, monkeypatch):
    at = app_on(orphan.parent, monkeypatch, page="neurons", run="text")
    assert not at.exception and not at.error
    assert any("need the task's test data" in i.value and "corpus.txt" in i.value for i in at.info)
    assert at.get("plotly_chart")  # the prompt's neurons are drawn


@pytest.fixture
def pointing_outside(tmp_path):
    """A text run inside a runs folder whose config names a source text that lies outside it."""
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("abcdefghijklmnopqrstuvwxyz " * 200)
    options = {"source": str(secret), "seq_len": 32, "d_model": 16, "n_heads": 2, "n_layers": 1, "steps": 2}
    options |= {"batch_size": 4, "eval_every": 2, "warmup_steps": 1, "device": "cpu"}
    task, model_cfg, train_cfg = build("text", options)
    run = tmp_path / "runs" / "text"
    Trainer(task, model_cfg, train_cfg, run, progress=False).run()
    return run, secret


def test_the_app_reads_no_text_outside_its_runs_folder(pointing_outside, monkeypatch):
    run, secret = pointing_outside
    opened = load_run(run, root=run.parent)  # as the app opens it
    text = secret.read_text()
    for seed in range(5):  # the fallback draws from the saved vocabulary; the file's order never shows
        assert opened.tokenizer.decode(opened.task.example(seed)) not in text
    with pytest.raises(ValueError, match="is not a file inside"):
        opened.task.dataset("test")
    assert load_run(run).task.dataset("test")  # opened directly, a run still reads its own source
    at = app_on(run.parent, monkeypatch, page="neurons", run="text")
    assert not at.exception and not any(text[:20] in (i.value or "") for i in at.info)
