"""Bad input gets a message on the page, never a traceback: prompts, checkpoints, runs folders, paths."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
from app_server import APP
from streamlit.testing.v1 import AppTest

from blocks.tasks.common import next_token_nll
from blocks.training.runs import load_run
from probes.ablation import head_ablation, run_ablated
from views.paths import RunPathError, list_runs, resolve_run

PROMPT = "BOS 1 2 3 4 5 6 1 2 3 4 5 6"


def texts(at: AppTest) -> str:
    return " ".join(e.value for kind in ("info", "warning", "error") for e in getattr(at, kind))


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(app, prompt):
    at = app("flow", run="attn", prompt=prompt)
    assert not at.exception
    assert "prompt is empty" in at.info[0].value
    assert not at.get("plotly_chart")


def test_too_long_prompt_is_truncated_with_notice(app):
    ids = " ".join(str(i % 10) for i in range(30))
    at = app("flow", run="attn", prompt="BOS " + ids)
    assert not at.exception
    assert "31 tokens but the model's context is 24; showing the first 24" in texts(at)
    assert at.selectbox(key="flow_target").value == 23


def test_unknown_tokens_are_listed(app):
    at = app("lens", run="attn", prompt="BOS 1 99 2 x")
    assert not at.exception
    assert "'99', 'x'" in at.error[0].value
    assert not at.dataframe


def test_drawn_example_is_the_tasks_example(app, runs_dir):
    at = app("lens", run="attn", prompt="BOS 1")
    at.sidebar.button[0].click().run()
    run = load_run(runs_dir / "attn")
    seed = at.session_state["example_seed"]
    assert at.session_state["prompt"] == run.tokenizer.decode(run.task.example(seed))
    at.sidebar.button[0].click().run()
    assert at.session_state["example_seed"] == seed + 1
    assert not at.exception


def test_corrupt_checkpoint_listed_while_others_work(app):
    at = app(run="attn")
    assert not at.exception
    assert "step 6:" in at.sidebar.warning[0].value and "corrupt" in at.sidebar.warning[0].value
    assert at.sidebar.select_slider(key="step").options == ["0", "4", "8"]
    at.sidebar.select_slider(key="step").set_value(4).run()
    assert "step **4**" in at.markdown[0].value
    at = app(run="attn", step=6)
    assert "Step 6 is not a usable checkpoint" in texts(at)
    assert "step **8**" in at.markdown[0].value


def test_empty_runs_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_RUNS", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert "make app" in at.info[0].value and "python -m blocks.train --task induction" in at.info[0].value


@pytest.fixture
def root_with_link(runs_dir, tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    shutil.copytree(runs_dir / "attn", root / "good")
    shutil.copytree(runs_dir / "mlp", outside / "secret")
    (root / "link").symlink_to(outside / "secret")
    return root


@pytest.mark.parametrize("name", ["../outside/secret", "/etc", "link", "good/../../outside/secret", ".", "nope"])
def test_paths_outside_the_runs_folder_are_refused(root_with_link, monkeypatch, name):
    assert list_runs(root_with_link) == ["good"]
    with pytest.raises(RunPathError):
        resolve_run(root_with_link, name)
    monkeypatch.setenv("SANDBOX_RUNS", str(root_with_link))
    at = AppTest.from_file(APP, default_timeout=30)
    at.session_state["run"] = name
    at.run()
    assert not at.exception
    assert "Cannot open that run" in at.error[0].value
    assert "**good**" in at.markdown[0].value  # falls back to the run that is inside
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["run"] = name
    at.run()
    assert "Cannot open that run" in at.error[0].value


def test_two_sessions_at_once_are_independent(app, runs_dir, monkeypatch):
    # Python 3.11 can fail to parse in two threads at once ("AST constructor recursion depth mismatch",
    # a CPython bug), and AppTest compiles the page afresh in each thread; the page's compile is not what
    # this test is about, so it is serialised while the two sessions still run at once.
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache

    compile_page, lock = ScriptCache.get_bytecode, threading.Lock()

    def one_at_a_time(self, path):
        with lock:
            return compile_page(self, path)

    monkeypatch.setattr(ScriptCache, "get_bytecode", one_at_a_time)
    prompts = {"a": "BOS 1 2 3 4 1 2 3", "b": "BOS 7 7 9 8 7 7 9 8 2"}
    run = load_run(runs_dir / "mlp")
    sessions = {k: AppTest.from_file(APP, default_timeout=60) for k in prompts}
    for k, at in sessions.items():
        for key, value in {"run": "mlp", "prompt": prompts[k], "ablate_heads": ["L1H1"]}.items():
            at.session_state[key] = value
        at.run()
        at.switch_page("views/ablate.py")
    threads = [threading.Thread(target=at.run) for at in sessions.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, at in sessions.items():
        assert not at.exception, at.exception
        tokens = torch.tensor([run.tokenizer.encode(prompts[k])])
        logits = run_ablated(run.model, tokens, [head_ablation(run.model, 1, [1])])
        where = run.task.scored_positions(tokens[0].tolist())
        assert at.metric[3].value == f"{float(next_token_nll(logits, tokens)[0, where].mean()):.4f}"
        assert at.metric[0].value == run.tokenizer.vocab[int(logits[0, -1].argmax())]


def test_runs_folder_comes_from_the_command_line(tmp_path, monkeypatch):
    from views.paths import runs_root

    monkeypatch.delenv("SANDBOX_RUNS", raising=False)
    assert runs_root(["--runs", str(tmp_path)]) == tmp_path.resolve()
    monkeypatch.setenv("SANDBOX_RUNS", str(tmp_path / "x"))
    assert runs_root([]) == (tmp_path / "x").resolve()
    # another program's --run (a benchmark's, under AppTest) is not an abbreviation of --runs
    assert runs_root(["--run", str(tmp_path / "y")]) == (tmp_path / "x").resolve()
