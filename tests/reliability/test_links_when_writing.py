"""Links inside a run folder never lead the trainer to write, truncate or delete files outside it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, tiny_trainer

from blocks.files import OutsideFolderError
from blocks.training.checkpoints import checkpoint_files
from blocks.training.runs import list_checkpoints, load_run

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


@pytest.fixture
def outside(tmp_path):
    """A folder outside every run, holding a file and a stray temporary file that no trainer may delete."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "keep.txt").write_text(PRECIOUS)
    (folder / ".someone.else.tmp").write_text(PRECIOUS)
    return folder


def outside_names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_overwrite_removes_a_checkpoints_link_and_writes_inside_the_run(tmp_path, outside):
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "checkpoints").symlink_to(outside)
    (run / "metrics.jsonl").symlink_to(outside / "keep.txt")
    tiny_trainer(run, overwrite=True).run()
    assert outside_names(outside) == [".someone.else.tmp", "keep.txt"]
    assert (outside / "keep.txt").read_text() == PRECIOUS
    assert not (run / "checkpoints").is_symlink() and not (run / "metrics.jsonl").is_symlink()
    assert load_run(run).step == TINY["steps"]


def test_a_resume_into_checkpoints_linked_outside_is_refused_and_nothing_there_is_deleted(run_copy, outside):
    run = run_copy()
    for step in list_checkpoints(run):
        for file in checkpoint_files(run, step):
            file.rename(outside / file.name)
    (run / "checkpoints").rmdir()
    (run / "checkpoints").symlink_to(outside)
    before = outside_names(outside)
    with pytest.raises(OutsideFolderError, match=r"checkpoints \(a link to .*outside\) leads to"):
        tiny_trainer(run, resume=True, steps=6)
    assert outside_names(outside) == before


def test_metrics_linked_outside_are_never_appended_to(run_copy, victim):
    run = run_copy()
    trainer = tiny_trainer(run, resume=True, steps=6)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim)  # made while the trainer runs
    with pytest.raises(OutsideFolderError, match=r"metrics.jsonl \(a link to .*victim\.txt\) leads to"):
        trainer.run()
    assert victim.read_text() == PRECIOUS


def test_a_checkpoints_link_made_during_training_is_never_written_through(run_copy, outside):
    run = run_copy()
    trainer = tiny_trainer(run, resume=True, steps=6)
    (run / "moved").mkdir()
    for file in (run / "checkpoints").iterdir():
        file.rename(run / "moved" / file.name)
    (run / "checkpoints").rmdir()
    (run / "checkpoints").symlink_to(outside)
    with pytest.raises(OutsideFolderError, match=r"checkpoints \(a link to .*outside\) leads to"):
        trainer.run()
    assert outside_names(outside) == [".someone.else.tmp", "keep.txt"]
