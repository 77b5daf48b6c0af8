"""Links inside a run folder never lead the trainer to write, truncate or delete files outside it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, tiny_trainer

PRECIOUS = "precious user data\n"


@pytest.fixture
def victim(tmp_path):
    """A file outside every run, which no trainer may touch."""
    file = tmp_path / "victim.txt"
    file.write_text(PRECIOUS)
    return file


def test_a_lock_file_linked_elsewhere_is_refused_and_the_file_it_leads_to_is_untouched(run_copy, victim):
    run = run_copy()
    (run / ".train.lock").symlink_to(victim)
    with pytest.raises(OSError, match=r"\.train\.lock is a link \(to .*victim\.txt\).*remove the link"):
        tiny_trainer(run, resume=True, steps=6)
    assert victim.read_text() == PRECIOUS and (run / ".train.lock").is_symlink()
    (run / ".train.lock").unlink()
    assert tiny_trainer(run, resume=True, steps=6).run().step == 6  # once the link is gone, the run goes on


def test_a_lock_file_hard_linked_elsewhere_is_not_written(run_copy, victim):
    run = run_copy()
    os.link(victim, run / ".train.lock")
    with pytest.raises(OSError, match=r"\.train\.lock is not a plain file of its own"):
        tiny_trainer(run, resume=True, steps=6)
    assert victim.read_text() == PRECIOUS


def test_a_lock_file_replaced_by_a_link_while_held_is_left_alone_on_release(run_copy, victim):
    run = run_copy()
    trainer = tiny_trainer(run, resume=True, steps=6)
    (run / ".train.lock").unlink()
    (run / ".train.lock").symlink_to(victim)
    trainer.release()
    assert victim.read_text() == PRECIOUS and (run / ".train.lock").is_symlink()


NO_FCNTL = """
import sys
sys.modules["fcntl"] = None  # as on Windows: `import fcntl` raises ImportError
from pathlib import Path
from blocks.files import RunLock
from blocks.training.runs import load_run
lock = RunLock(Path(sys.argv[1]))
lock.release()
print(load_run(sys.argv[1]).step)
"""


def test_without_fcntl_runs_still_load_and_the_lock_does_nothing(run_copy):
    run = run_copy()
    done = subprocess.run([sys.executable, "-c", NO_FCNTL, str(run)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(TINY["steps"]) and not (run / ".train.lock").exists()
