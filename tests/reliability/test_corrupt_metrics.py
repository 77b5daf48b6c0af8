"""A corrupt line in metrics.jsonl costs that line only: load_run, resume, the app and the probes go on, and say so."""

from __future__ import annotations

import json

import pytest
from conftest import app_on, tiny_trainer

from blocks.training.runs import load_run, metrics_problems, read_metrics
from probes.scripts.head_scores import main as head_scores

GARBAGE = ["{not json", "\x00\xff\x01 binary", "[1, 2, 3]", '{"no_step": 1}', '{"step": "7"}']


@pytest.fixture
def corrupted(run_copy):
    run = run_copy()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[2:2] = GARBAGE  # in the middle, where a torn write cannot explain them
    (run / "metrics.jsonl").write_bytes(("\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape"))
    return run, len(lines) - len(GARBAGE)


def test_load_run_reads_every_good_line_and_names_the_bad_ones(corrupted):
    run, n_good = corrupted
    loaded = load_run(run)
    assert len(loaded.metrics) == n_good and all(isinstance(m["step"], int) for m in loaded.metrics)
    assert len(loaded.metrics_skipped) == len(GARBAGE)
    assert "metrics.jsonl line 3 is not a JSON object with a step" in loaded.metrics_skipped[0]
    assert "'{not json'" in loaded.metrics_skipped[0]


def test_resume_keeps_the_corrupt_lines_and_finishes_the_run(corrupted):
    run, _ = corrupted
    before = read_metrics(run)
    tiny_trainer(run, resume=True, steps=6).run()
    after = read_metrics(run)
    assert after[: len(before)] == before and max(m["step"] for m in after) == 6
    assert len(metrics_problems(run)) == len(GARBAGE)  # nothing thrown away, nothing invented
    assert load_run(run).step == 6


def test_the_app_and_a_probe_use_the_run_and_warn(corrupted, monkeypatch, tmp_path, capsys):
    run, _ = corrupted
    at = app_on(run.parent, monkeypatch, run="run")
    assert not at.exception and not at.error
    assert any("line 3 is not a JSON object" in w.value for w in at.sidebar.warning)
    assert at.get("plotly_chart")  # the curves are drawn from the good lines
    head_scores(["--run", str(run), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "warning:" in err and "line 3" in err and (tmp_path / "out").is_dir()


def test_a_torn_last_line_is_dropped_without_a_warning(run_copy):
    run = run_copy()
    n = len(read_metrics(run))
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 9, "train_loss": 1.0})[:12])
    assert len(read_metrics(run)) == n and metrics_problems(run) == []
