"""Run directories: load_run at any step, checkpoint listing, corrupt checkpoints, torn metrics, saved tokenizers."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from blocks.training import load_run as load_run_from_package
from blocks.training.checkpoints import checkpoint_files
from blocks.training.cli import build
from blocks.training.runs import checkpoint_status, list_checkpoints, load_run, read_metrics
from blocks.training.trainer import Trainer

SHAKESPEARE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"
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
    "steps": 6,
    "batch_size": 8,
    "eval_every": 3,
    "log_every": 1,
    "warmup_steps": 2,
    "n_checkpoints": 3,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "induction"
    task, model_cfg, train_cfg = build("induction", TINY)
    trainer = Trainer(task, model_cfg, train_cfg, out, progress=False)
    trainer.run()
    return out, trainer


def test_load_run_returns_the_latest_model_task_and_metrics(run_dir):
    out, trainer = run_dir
    run = load_run_from_package(out)
    assert run.step == 6 and run.path == out and not run.model.training
    assert run.task.name == "induction" and run.tokenizer == trainer.task.tokenizer
    for a, b in zip(run.model.state_dict().values(), trainer.model.state_dict().values()):
        assert torch.equal(a, b)
    assert run.config["model"]["d_model"] == 16 and run.config["task"]["options"]["n_symbols"] == 8
    assert all("step" in m for m in run.metrics)
    train_lines = [m for m in run.metrics if "train_loss" in m]
    assert [m["step"] for m in train_lines] == [1, 2, 3, 4, 5, 6] and all("lr" in m for m in train_lines)
    evals = [m for m in run.metrics if "eval/loss_repeated_half" in m]
    assert [m["step"] for m in evals] == [0, 3, 6]
    scores = evals[-1]["head_scores"]["induction"]
    assert len(scores) == 2 and len(scores[0]) == 2 and all(0 <= s <= 1 for row in scores for s in row)


def test_checkpoints_are_listed_and_loadable_at_each_step(run_dir):
    out, _ = run_dir
    steps = list_checkpoints(out)
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 6 and len(steps) >= 3
    first, last = load_run(out, step=0), load_run(out, step=6)
    assert first.step == 0 and not torch.equal(first.model.W_E, last.model.W_E)
    with pytest.raises(ValueError, match=r"no checkpoint at step 5; it has \[0"):
        load_run(out, step=5)
    assert all(err is None for _, err in checkpoint_status(out))


def test_a_corrupt_checkpoint_is_named_and_the_previous_ones_stay_usable(run_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run_dir[0], out)
    weights = checkpoint_files(out, 6)[0]
    weights.write_bytes(weights.read_bytes()[:50])
    status = dict(checkpoint_status(out))
    assert status[6] is not None and "step_000006.safetensors" in status[6]
    assert all(err is None for step, err in status.items() if step != 6)
    run = load_run(out)
    assert run.step == max(s for s in status if s != 6)
    # the fallback is visible: the skipped checkpoint is named, with the reason
    assert len(run.skipped) == 1 and str(weights) in run.skipped[0] and "truncated or corrupt" in run.skipped[0]
    assert load_run(out, step=run.step).skipped == [] and load_run(run_dir[0]).skipped == []
    with pytest.raises(ValueError, match="step_000006.safetensors"):
        load_run(out, step=6)


def test_torn_last_metrics_line_is_skipped(run_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run_dir[0], out)
    n = len(read_metrics(out))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "train_lo')
    assert len(read_metrics(out)) == n


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run(tmp_path)


def test_text_run_keeps_its_tokenizer_and_refuses_a_changed_text_on_resume(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(SHAKESPEARE.read_text()[:3000])
    options = {
        "source": str(text),
        "seq_len": 16,
        "d_model": 16,
        "n_heads": 2,
        "n_layers": 1,
        "steps": 2,
        "batch_size": 4,
        "eval_every": 2,
        "warmup_steps": 1,
        "device": "cpu",
    }
    task, model_cfg, train_cfg = build("text", options)
    Trainer(task, model_cfg, train_cfg, tmp_path / "run", progress=False).run()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["tokenizer"]
    assert saved["vocab"] == sorted(set(text.read_text())) and saved["separator"] == ""
    text.write_text(text.read_text() + "\u00e9")  # a character the run's tokenizer does not have
    task, model_cfg, train_cfg = build("text", {**options, "d_vocab": model_cfg.d_vocab})
    with pytest.raises(ValueError, match="tokenizer|d_vocab"):
        Trainer(task, model_cfg, train_cfg, tmp_path / "run", resume=True, progress=False)
    text.unlink()  # the app can still open the run: the tokenizer lives in config.json
    run = load_run(tmp_path / "run")
    assert run.tokenizer.vocab == saved["vocab"] and run.task.tokenizer is run.tokenizer
