"""Overview page: config, curves and head scores over steps, read from the run's files."""

from __future__ import annotations

import json


def test_overview_shows_run_and_last_metrics(app, runs_dir):
    at = app(run="attn")
    assert not at.exception
    assert "attn" in at.markdown[0].value and "step **8**" in at.markdown[0].value
    lines = [json.loads(x) for x in (runs_dir / "attn" / "metrics.jsonl").read_text().splitlines()]
    table = at.dataframe[0].value
    last_loss = [x["train_loss"] for x in lines if "train_loss" in x][-1]
    assert table.set_index("metric").loc["train_loss", "last value"] == round(last_loss, 4)
    assert at.selectbox(key="overview_score").value == "induction"


def test_head_scores_over_steps_are_the_logged_ones(app, runs_dir):
    at = app(run="attn", overview_score="previous_token")
    lines = [json.loads(x) for x in (runs_dir / "attn" / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if "head_scores" in x]
    fig = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert fig["data"][0]["x"] == [str(x["step"]) for x in logged]
    rows = fig["data"][0]["z"]  # heads L0H0, L0H1, L1H0, ... by steps
    for s, line in enumerate(logged):
        flat = [v for row in line["head_scores"]["previous_token"] for v in row]
        assert [r[s] for r in rows] == flat
