"""A start that fails or is stopped before its first checkpoint can be retried with the same command."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY

from blocks.training.cli import main
from blocks.training.runs import list_checkpoints, load_run

ARGS = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in TINY.items()]


def train(out, *extra: str) -> int:
    return main(["--task", "induction", "--out", str(out), "--no-progress", *ARGS, *extra])


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            ["--seed", str(2**70)],
            r"seed must be an int in \[-2\*\*63, 2\*\*63\) \(what torch.s generators take\), got 1180591620717411303424",
        ),
        (["--lr", "NaN"], "train option lr must be a finite number, got nan"),
        (["--grad_clip", "Infinity"], "grad_clip must be a finite number"),
        (["--d_model", str(2**36)], "needs about"),
        (["--n_symbols", "0"], "n_symbols"),
    ],
)
def test_bad_options_are_refused_before_the_folder_is_written_then_a_retry_runs(tmp_path, capsys, bad, message):
    out = tmp_path / "run"
    assert train(out, *bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists()
    assert train(out) == 0 and list_checkpoints(out)[-1] == TINY["steps"]


def test_a_one_character_text_says_so_and_leaves_nothing(tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("a" * 500)
    out = tmp_path / "run"
    args = ["--task", "text", "--out", str(out), "--source", str(text), "--seq_len", "16", "--steps", "2"]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds one distinct character ('a')" in err and "at least two different characters" in err
    assert not out.exists()


def test_a_start_interrupted_before_its_first_checkpoint_is_started_again(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    from blocks.training.trainer import Trainer

    def interrupted_save(self):
        raise KeyboardInterrupt  # Ctrl-C while checkpoint 0 is being written

    monkeypatch.setattr(Trainer, "_write_checkpoint", interrupted_save)
    assert train(out) == 130
    err = capsys.readouterr().err
    assert "nothing was trained yet; the same command starts the run" in err and "nothing saved" not in err
    assert (out / "config.json").is_file() and list_checkpoints(out) == []
    monkeypatch.undo()
    assert train(out) == 0  # a plain retry is not refused as "already holds a run"
    assert "held a start that saved no checkpoint; starting it again" in capsys.readouterr().err
    assert load_run(out).step == TINY["steps"]


def test_resume_of_a_start_without_checkpoints_starts_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--steps", "2") == 0
    for f in (out / "checkpoints").iterdir():
        f.unlink()
    assert main(["--out", str(out), "--resume", "--no-progress"]) == 0
    assert "done: 2 steps" in capsys.readouterr().err and list_checkpoints(out)[-1] == 2


def test_a_folder_of_other_files_is_still_refused(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "precious.bin").write_bytes(b"x")
    assert train(out) == 2
    assert "already holds a run" in capsys.readouterr().err and (out / "checkpoints" / "precious.bin").exists()


@pytest.mark.slow  # two processes; test_a_kill_during_a_save_... covers a kill in the fast suite
def test_kill_before_the_first_checkpoint_then_retry(tmp_path):
    """SIGKILL while the step-0 evaluation runs: the same command afterwards trains the run."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "blocks.train", "--task", "induction", "--out", str(out), "--no-progress", *ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the kill lands before checkpoint 0 unless this process was held up: then --resume is the retry
    retry = cmd if not list_checkpoints(out) else [*cmd, "--resume"]
    done = subprocess.run(retry, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_run(out).step == TINY["steps"]


def test_a_resume_with_changed_task_options_names_them_not_d_vocab(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--steps", "2") == 0
    capsys.readouterr()
    assert main(["--out", str(out), "--resume", "--n_symbols", "10"]) == 2
    err = capsys.readouterr().err
    assert "task.n_symbols: run has 8, now 10" in err and "leave d_vocab unset" not in err
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh " * 40)
    args = ["--task", "text", "--out", str(tmp_path / "text"), "--source", str(text), "--seq_len", "8"]
    small = ["--d_model", "16", "--n_heads", "2", "--n_layers", "1", "--steps", "2", "--batch_size", "4"]
    assert main([*args, *small, "--eval_every", "2", "--warmup_steps", "0", "--no-progress"]) == 0
    text.write_text("abcdefgh! " * 40)  # a character the run's tokenizer does not have
    capsys.readouterr()
    assert main(["--out", str(tmp_path / "text"), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer: the run's has 9 tokens, this one 10" in err and "leave d_vocab unset" not in err


def test_a_run_saved_with_a_negative_or_large_seed_still_loads(tmp_path):
    """Seeds torch takes (negative, above 2**32) trained runs before the range was checked; they must open."""
    from blocks.tasks import get_task

    for seed in (-1, 2**40):
        task = get_task("induction", seed=seed, n_train=8, n_test=4)
        assert task.seed == seed and len(task.example(0)) > 0


def test_checkpoints_linked_to_a_disk_not_mounted_are_not_taken_for_a_failed_start(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out) == 0
    metrics, config = (out / "metrics.jsonl").read_bytes(), (out / "config.json").read_bytes()
    disk = tmp_path / "disk"
    disk.mkdir()
    (out / "checkpoints").rename(disk / "checkpoints")
    (out / "checkpoints").symlink_to(disk / "checkpoints")  # checkpoints kept on another disk ...
    disk.rename(tmp_path / "unmounted")  # ... which is not mounted now
    capsys.readouterr()
    for retry in ([], ["--resume"]):
        assert train(out, *retry) == 2
        err = capsys.readouterr().err
        assert "checkpoints is a link to" in err and "cannot be reached now" in err and err.count("\n") == 1
        assert (out / "metrics.jsonl").read_bytes() == metrics and (out / "config.json").read_bytes() == config
    assert list_checkpoints(tmp_path / "unmounted")[-1] == TINY["steps"]


def test_a_checkpoints_folder_holding_other_files_is_not_cleared_by_a_retry(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--steps", "2") == 0
    for f in (out / "checkpoints").iterdir():
        f.unlink()
    (out / "checkpoints" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert train(out) == 2
    assert "a folder holding notes.txt" in capsys.readouterr().err and (out / "checkpoints" / "notes.txt").exists()
