"""Links inside a run folder never lead the app, load_run or a resume to files outside the folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import app_on, shown, tiny_trainer

from blocks.files import OutsideFolderError, confined
from blocks.training.checkpoints import checkpoint_files
from blocks.training.runs import checkpoint_status, list_checkpoints, load_run
from scratchnn.errors import describe

SECRET = "TOP-SECRET-7731"


@pytest.fixture
def attacked(run_copy, tmp_path):
    """(runs folder, run, outside folder): the run is inside the runs folder, `outside` beside it."""
    run = run_copy()
    outside = tmp_path / "outside"
    shutil.copytree(run, outside / "other")
    return run.parent, run, outside


def test_a_config_linked_outside_is_refused_by_load_run_and_never_shown_by_the_app(attacked, monkeypatch):
    root, run, outside = attacked
    config = json.loads((run / "config.json").read_text())
    config["train"]["note"] = SECRET
    (outside / "secret.json").write_text(json.dumps(config))
    (run / "config.json").unlink()
    (run / "config.json").symlink_to(outside / "secret.json")
    for call in (lambda: load_run(run), lambda: load_run(run, root=root), lambda: checkpoint_status(run)):
        with pytest.raises(OutsideFolderError, match=r"config.json \(a link to .*secret.json\) leads to"):
            call()
    at = app_on(root, monkeypatch, run="run")
    assert not at.exception
    assert "config.json (a link to" in shown(at) and "outside" in at.error[0].value
    assert SECRET not in shown(at)


def test_checkpoints_linked_outside_are_refused_so_outside_weights_never_load(attacked, monkeypatch):
    root, run, outside = attacked
    theirs = outside / "other" / "checkpoints"
    with torch.no_grad():  # weights that differ, so loading them would show
        load_run(outside / "other").model.W_E.zero_()
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(theirs)
    with pytest.raises(OutsideFolderError, match=r"checkpoints \(a link to .*other/checkpoints\)"):
        load_run(run)
    with pytest.raises(OutsideFolderError):
        load_run(run, root=root)
    at = app_on(root, monkeypatch, run="run")
    assert not at.exception and "checkpoints (a link to" in at.error[0].value
    assert not at.get("plotly_chart")
    # a resume would read and write them: it is refused, naming the link
    with pytest.raises(OutsideFolderError, match=r"checkpoints \(a link to .*other/checkpoints\)"):
        tiny_trainer(run, resume=True)


def test_one_checkpoint_file_linked_outside_is_unusable_and_the_others_still_load(attacked):
    root, run, outside = attacked
    last = list_checkpoints(run)[-1]
    mine = checkpoint_files(run, last)[0]
    mine.unlink()
    mine.symlink_to(checkpoint_files(outside / "other", last)[0])
    status = dict(checkpoint_status(run, root=root))
    assert "leads to" in status[last] and all(err is None for s, err in status.items() if s != last)
    loaded = load_run(run, root=root)
    assert loaded.step == list_checkpoints(run)[-2] and "a link to" in loaded.skipped[0]
    with pytest.raises(OutsideFolderError, match=mine.name):
        load_run(run, step=last)


def test_metrics_linked_outside_are_refused(attacked):
    root, run, outside = attacked
    (outside / "m.jsonl").write_text(json.dumps({"step": 1, "secret": SECRET}) + "\n")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(outside / "m.jsonl")
    with pytest.raises(OutsideFolderError, match="metrics.jsonl"):
        load_run(run, root=root)


def test_links_that_stay_inside_are_followed(attacked, tmp_path):
    root, run, _ = attacked
    last = list_checkpoints(run)[-1]
    mine = checkpoint_files(run, last)[0]
    (run / "kept").mkdir()
    mine.rename(run / "kept" / mine.name)
    mine.symlink_to(run / "kept" / mine.name)
    assert load_run(run).step == last and load_run(run, root=root).step == last
    # a run opened through a link to its folder is confined to the folder the link names
    (tmp_path / "alias").symlink_to(run)
    assert load_run(tmp_path / "alias").step == last


def test_confined_names_the_first_link_on_the_way(tmp_path):
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "a" / "b").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutsideFolderError, match=r"root/a/b \(a link to .*elsewhere\) leads to .*elsewhere/c"):
        confined(tmp_path / "root" / "a" / "b" / "c", tmp_path / "root")
    assert confined(tmp_path / "root" / "a", tmp_path / "root") == (tmp_path / "root" / "a").resolve()


def test_a_checkpoint_linked_to_itself_is_skipped_and_named(attacked):
    root, run, _ = attacked
    last = list_checkpoints(run)[-1]
    mine = checkpoint_files(run, last)[0]
    mine.unlink()
    mine.symlink_to(mine.name)
    status = dict(checkpoint_status(run, root=root))
    assert f"{mine.name} (a link to {mine.name}) is a symlink loop" in status[last]
    loaded = load_run(run, root=root)
    assert loaded.step == list_checkpoints(run)[-2] and "is a symlink loop" in loaded.skipped[0]
    with pytest.raises(OutsideFolderError, match="is a symlink loop"):
        load_run(run, step=last)


def test_a_checkpoints_folder_linked_to_itself_is_one_line_not_a_traceback(attacked):
    root, run, _ = attacked
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to("checkpoints")
    with pytest.raises(OutsideFolderError, match=r"checkpoints \(a link to checkpoints\) is a symlink loop") as err:
        load_run(run, root=root)
    assert describe(err.value) == str(err.value)  # what every entry point prints as its one line


def test_the_analysis_cache_is_never_written_through_a_link_out_of_the_run(tmp_path):
    from blocks.files import OutsideFolderError
    from blocks.training.runs import run_dynamics

    run = tiny_trainer(tmp_path / "run")
    run.run()
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "run" / "analysis").symlink_to(outside)
    with pytest.raises(OutsideFolderError, match="analysis"):
        run_dynamics(tmp_path / "run", lambda m: {"x": 1.0}, "x", {})
    assert not any(outside.iterdir())
