"""Kills at any moment (during a save too), two trainers on one folder, and bits flipped on disk."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY

from blocks.training.checkpoints import checkpoint_files
from blocks.training.cli import main
from blocks.training.runs import checkpoint_status, list_checkpoints, load_run
from blocks.weights import load_tensors

ARGS = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in TINY.items()]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train_cmd(out, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "blocks.train",
        "--task",
        "induction",
        "--out",
        str(out),
        "--no-progress",
        *ARGS,
        *extra,
    ]


def temp_files(out):
    return sorted(p.name for p in out.rglob(".*.tmp"))


# Runs the trainer and SIGKILLs itself inside the n-th atomic rename, after the temporary file is
# complete but before it replaces the real one: a kill during a save, at a known moment.
KILL_IN_SAVE = """
import os, signal, sys
import blocks.weights as w
calls = {"n": 0}
real = os.replace
def replace(src, dst):
    calls["n"] += 1
    if calls["n"] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
w.os.replace = replace
from blocks.training.cli import main
sys.exit(main(sys.argv[2:]))
"""


# renames: 1 config.json, 2-4 checkpoint 0 (optimizer, state, weights), 5-7 checkpoint 1
@pytest.mark.parametrize("n", [pytest.param(1, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow), 6])
def test_a_kill_during_a_save_leaves_temp_files_the_next_start_removes(tmp_path, n):
    out = tmp_path / "run"
    args = ["--task", "induction", "--out", str(out), "--no-progress", *ARGS]
    done = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, str(n), *args], cwd=ROOT, env=ENV, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert temp_files(out)  # the half-finished save is there ...
    for step in list_checkpoints(out):  # ... and every checkpoint that is listed is whole
        assert load_tensors(checkpoint_files(out, step)[0])
    retry = train_cmd(out) if not list_checkpoints(out) else train_cmd(out, "--resume")
    again = subprocess.run(retry, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert temp_files(out) == [] and load_run(out).step == TINY["steps"]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_the_same_command_or_resume_finishes(tmp_path):
    out, rng = tmp_path / "run", random.Random(22)
    for _ in range(4):
        proc = subprocess.Popen(train_cmd(out, "--resume" if list_checkpoints(out) else "--steps=4"), cwd=ROOT, env=ENV)
        time.sleep(rng.uniform(1.5, 4.0))  # torch's import takes about 1.5 s: the kill lands in training
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        status = checkpoint_status(out) if (out / "config.json").exists() else []
        assert all(err is None for _, err in status), status
    retry = train_cmd(out, "--resume") if list_checkpoints(out) else train_cmd(out)
    done = subprocess.run(retry, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_run(out).step == TINY["steps"] and temp_files(out) == []


def test_a_second_trainer_on_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(train_cmd(out, "--steps=100000", "--eval_every=100000"), cwd=ROOT, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not list_checkpoints(out) and time.monotonic() < deadline:
            assert first.poll() is None
            time.sleep(0.05)
        assert main(["--out", str(out), "--resume", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"is being trained by process {first.pid}" in err and err.count("\n") == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel let go of the killed trainer's lock: the run resumes from its last checkpoint
    last = list_checkpoints(out)[-1]
    assert main(["--out", str(out), "--resume", "--no-progress", "--steps", str(last + 2)]) == 0
    assert load_run(out).step == last + 2 and not (out / ".train.lock").exists()


def flip_a_data_bit(path) -> None:
    data = bytearray(path.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    data[8 + header + (len(data) - 8 - header) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_tensor_data_fails_the_checksum(run_copy):
    run = run_copy()
    last = list_checkpoints(run)[-1]
    flip_a_data_bit(checkpoint_files(run, last)[0])
    with pytest.raises(ValueError, match="fails its checksum"):
        load_run(run, step=last)
    assert "fails its checksum" in dict(checkpoint_status(run))[last]
    loaded = load_run(run)
    assert loaded.step < last and "fails its checksum" in loaded.skipped[0]
    flip_a_data_bit(checkpoint_files(run, 0)[1])  # the optimizer's file has one too
    with pytest.raises(ValueError, match="optim.safetensors fails its checksum"):
        load_tensors(checkpoint_files(run, 0)[1])
