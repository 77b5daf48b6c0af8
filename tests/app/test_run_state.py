"""Per-run state and shareable links: switching runs never shows an error, and a link reopens the view."""

from __future__ import annotations

import pytest
from app_server import APP
from streamlit.testing.v1 import AppTest

from blocks.training.runs import load_run

PROMPT = "BOS 1 2 3 4 5 6 1 2 3 4 5 6"


def texts(at: AppTest) -> list[str]:
    """Errors and warnings on the page (the sidebar lists the attn run's corrupt checkpoint on purpose)."""
    return [e.value for kind in ("error", "warning") for e in getattr(at.main, kind)]


@pytest.mark.parametrize("page", ["flow", "heads", "lens", "ablate"])
def test_switching_runs_keeps_each_runs_own_prompt_and_step(app, runs_dir, page):
    at = app(page, run="attn", prompt=PROMPT, step=4)
    assert not at.exception, at.exception
    assert not texts(at)
    # sycophancy's tokenizer knows none of the induction prompt's tokens, and has no step 4
    at.sidebar.selectbox(key="run").set_value("sycophancy").run()
    assert not at.exception, at.exception
    assert not texts(at), texts(at)
    syc = load_run(runs_dir / "sycophancy")
    assert at.session_state["prompt"] == syc.tokenizer.decode(syc.task.example(0))
    assert at.session_state["step"] == 8
    at.sidebar.text_area(key="prompt").input(syc.tokenizer.decode(syc.task.example(3))).run()

    at.sidebar.selectbox(key="run").set_value("attn").run()
    assert not texts(at), texts(at)
    assert at.session_state["prompt"] == PROMPT and at.session_state["step"] == 4
    at.sidebar.selectbox(key="run").set_value("sycophancy").run()
    assert at.session_state["prompt"] == syc.tokenizer.decode(syc.task.example(3))


def test_selections_are_per_run(app):
    at = app("heads", run="attn", prompt=PROMPT, head="L0H1")
    at.sidebar.selectbox(key="run").set_value("sycophancy").run()
    assert at.selectbox(key="head").value == "L1H3"  # sycophancy's own default: its last head
    at.selectbox(key="head").set_value("L0H2").run()
    at.sidebar.selectbox(key="run").set_value("attn").run()
    assert at.selectbox(key="head").value == "L0H1"


def test_the_address_names_run_step_prompt_page_and_selection(app):
    at = app("flow", run="attn", prompt=PROMPT, step=4, flow_target=5)
    assert not at.exception, at.exception
    url = dict(at.query_params)
    assert url["run"] == "attn" and url["step"] == "4" and url["prompt"] == PROMPT
    assert url["flow_target"] == "5"
    at.selectbox(key="flow_target").set_value(7).run()
    assert dict(at.query_params)["flow_target"] == "7"


def test_a_link_reopens_the_view(runs_dir, monkeypatch):
    monkeypatch.setenv("SANDBOX_RUNS", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in {
        "run": "attn",
        "step": "4",
        "prompt": PROMPT,
        "head": "L0H1",
        "heads_score": "duplicate",
    }.items():
        at.query_params[key] = value
    at.run()
    at.switch_page("views/heads.py")
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["step"] == 4 and at.session_state["prompt"] == PROMPT
    assert at.selectbox(key="head").value == "L0H1"
    assert dict(at.query_params)["head"] == "L0H1"


def test_a_bad_link_value_is_one_line(runs_dir, monkeypatch):
    monkeypatch.setenv("SANDBOX_RUNS", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = "attn"
    at.query_params["step"] = "latest"
    at.run()
    assert not at.exception, at.exception
    assert texts(at) == ["The link's step='latest' is not a whole number; using the default instead."]
    assert at.session_state["step"] == 8
