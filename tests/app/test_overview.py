"""Overview page: config, curves and head scores over steps, read from the run's files."""

from __future__ import annotations

import json


def test_overview_shows_run_and_last_metrics(app, runs_dir):
    at = app(run="attn")
    assert not at.exception
    assert "attn" in at.markdown[0].value and "step **8**" in at.markdown[0].value
    lines = [json.loads(x) for x in (runs_dir / "attn" / "metrics.jsonl").read_text().splitlines()]
    table = at.dataframe[0].value
    last_loss = [x["train_loss"] for x in lines if "train_loss" in x and x["step"] <= 8][-1]  # at the checkpoint
    assert table.set_index("metric").loc["train_loss", "value at step 8"] == round(last_loss, 4)
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


def test_the_metrics_table_follows_the_checkpoint_slider(app, runs_dir):
    at = app(run="attn")
    at.sidebar.select_slider(key="step").set_value(4).run()
    assert not at.exception, at.exception
    lines = [json.loads(x) for x in (runs_dir / "attn" / "metrics.jsonl").read_text().splitlines()]
    table = at.dataframe[0].value.set_index("metric")
    loss = [x for x in lines if "train_loss" in x and x["step"] <= 4][-1]
    assert table.loc["train_loss", "value at step 4"] == round(loss["train_loss"], 4)
    assert table.loc["train_loss", "logged at step"] == loss["step"] == 4
    evals = [x for x in lines if any(k.startswith("eval/") for k in x) and x["step"] <= 4][-1]
    name = next(k for k in evals if k.startswith("eval/"))
    assert table.loc[name, "value at step 4"] == round(evals[name], 4)


def test_the_prompt_box_describes_the_tasks_prompt_format(app):
    from blocks.tasks import get_task

    for run, task in (("attn", "induction"), ("sycophancy", "sycophancy"), ("modadd", "modular_addition")):
        at = app("lens", run=run)
        assert f"Format: {get_task(task).prompt_format}" in [c.value for c in at.sidebar.caption]
