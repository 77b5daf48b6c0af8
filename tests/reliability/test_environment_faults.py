"""Faults of the machine, not of the input: permission denied, a full disk, a file-size limit.

Root reads and writes anything, so when the suite runs as root the permission cases run with
root's override capabilities dropped (setpriv). The full disk is a small tmpfs where this test may mount one; the file-size limit
(RLIMIT_FSIZE) gives the same kind of failure everywhere.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY

from blocks.training.checkpoints import checkpoint_files
from blocks.training.runs import list_checkpoints, load_run
from blocks.weights import load_tensors

ARGS = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in TINY.items()]
BIG = [*ARGS, "--d_model=64", "--n_heads=4"]  # checkpoints of ~0.4 MB, so a 1 MB disk fills mid-run

# Each case calls an entry point in this one process (torch is imported once) and reports its
# exit status and what it printed on stderr.
CASES = r"""
import contextlib, io, json, sys
from blocks.training.cli import main as train
from scratchnn.mnist import main as mnist
from probes.scripts.head_scores import main as probe
cases, results = json.loads(sys.argv[1]), {}
for name, (entry, argv) in cases.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = {"train": train, "mnist": mnist, "probe": probe}[entry](argv)
        except SystemExit as stop:
            rc = stop.code
    results[name] = [rc, err.getvalue()]
print(json.dumps(results))
"""


def without_override() -> list[str]:
    """The command prefix that runs a child without root's override of file permissions."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv, so root's permission override cannot be dropped")
    # root keeps its uid, so it still owns the files it made, but chmod 000 and read-only folders now hold
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def test_permission_denied_is_one_line_naming_the_file(tmp_path, trained):
    base = tmp_path
    (base / "text.txt").write_text("abcdefgh " * 50)
    (base / "text.txt").chmod(0o000)
    (base / "options.json").write_text("{}")
    (base / "options.json").chmod(0o000)
    run = base / "run"
    shutil.copytree(trained, run)
    (run / "config.json").chmod(0o000)
    (base / "readonly").mkdir()
    (base / "readonly").chmod(0o555)
    (base / "mnist").mkdir()
    small = ["--steps", "1", "--no-progress"]
    cases = {
        "read data": [
            "train",
            ["--task", "text", "--source", str(base / "text.txt"), "--out", str(base / "a"), *small],
        ],
        "read config": ["train", ["--config", str(base / "options.json"), "--out", str(base / "b"), *small]],
        "read a run": ["probe", ["--run", str(run), "--out", str(base / "c")]],
        "write --out": ["train", ["--out", str(base / "readonly" / "run"), *ARGS]],
        "write probe --out": ["probe", ["--run", str(run), "--out", str(base / "readonly" / "out")]],
        "write --save": [
            "mnist",
            ["--data-dir", str(base / "mnist"), "--save", str(base / "readonly" / "w.safetensors")],
        ],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [*without_override(), sys.executable, "-c", CASES, json.dumps(cases)]
    done = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    expect = {
        "read data": f"permission denied on {base / 'text.txt'}",
        "read config": f"permission denied on {base / 'options.json'}",
        "read a run": f"permission denied on {run / 'config.json'}",
        "write --out": f"permission denied on {base / 'readonly' / 'run'}",
        "write probe --out": "--out",
        "write --save": f"--save {base / 'readonly' / 'w.safetensors'} cannot be written (Permission denied)",
    }
    for name, (rc, err) in results.items():
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (name, err)
        assert expect[name] in lines[0], (name, lines[0])
    assert not (base / "readonly" / "run").exists() and not (base / "a").exists()


def assert_whole_then_resumes(out: Path, err: str, message: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not list(out.rglob(".*.tmp"))  # a failed save leaves no half file behind
    for step in list_checkpoints(out):
        load_tensors(checkpoint_files(out, step)[0])


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs, remountable larger; skipped where this process may not mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root here; test_a_file_size_limit covers the same failure")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); test_a_file_size_limit covers it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow  # two processes; the file-size limit test below is the fast suite's disk failure
def test_a_full_disk_stops_training_in_one_line_and_the_run_resumes(small_disk):
    out = small_disk / "run"
    cmd = [sys.executable, "-m", "blocks.train", "--task", "induction", "--out", str(out), "--no-progress", *BIG]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert_whole_then_resumes(out, done.stderr, "the disk is full")
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    done = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_run(out).step == TINY["steps"]


def file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_file_size_limit_stops_training_in_one_line_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "blocks.train", "--task", "induction", "--out", str(out), "--no-progress", *BIG]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, preexec_fn=file_size_limit(200_000)
    )
    assert done.returncode == 2
    assert_whole_then_resumes(out, done.stderr, "grew past the largest file this process may write")
    done = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_run(out).step == TINY["steps"]
