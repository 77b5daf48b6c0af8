"""The circuit page: every number it shows equals what probes.circuit computes for the same run and prompts."""

from __future__ import annotations

import pytest

from blocks.training.runs import load_run
from probes.circuit.attribution import edge_attribution
from probes.circuit.discovery import circuit_from_scores, evaluate_circuit
from probes.circuit.exact import exact_edge_patching, path_patching
from probes.circuit.scores import rank_agreement


def metrics_of(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.mark.parametrize("name", ["attn", "sycophancy", "modadd"])
def test_circuit_page_shows_the_librarys_circuit_and_agreement(app, runs_dir, name):
    at = app("circuit", run=name)
    assert not at.exception, at.exception
    run = load_run(runs_dir / name)
    contrast = run.task.circuit_contrast(64)
    ig, exact = edge_attribution(run.model, contrast, "eap-ig"), exact_edge_patching(run.model, contrast)
    found = circuit_from_scores(run.model, contrast, ig)
    shown = metrics_of(at)
    assert at.slider(key="circuit_edges").value == found.top_k
    assert shown["faithfulness"] == f"{found.faithfulness:.3f}"
    assert shown["Spearman eap-ig vs exact"] == f"{rank_agreement(ig, exact):.3f}"
    table = at.dataframe[0].value
    assert list(table["edge"]) == [edge for edge, _ in ig.ranked(found.top_k)]
    assert table["exact"].iloc[0] == round(float(exact.scores[ig.graph.edge(table["edge"].iloc[0])]), 5)


def test_moving_the_slider_and_switching_method_and_metric(app, runs_dir):
    at = app("circuit", run="attn")
    run = load_run(runs_dir / "attn")
    contrast = run.task.circuit_contrast(64)
    at.slider(key="circuit_edges").set_value(3).run()
    assert not at.exception, at.exception
    ig = edge_attribution(run.model, contrast, "eap-ig")
    edges = ig.graph.mask([name for name, _ in ig.ranked(3)])
    assert metrics_of(at)["faithfulness"] == f"{evaluate_circuit(run.model, contrast, edges).faithfulness:.3f}"
    at.selectbox(key="circuit_method").set_value("exact").run()
    assert not at.exception and "Spearman exact vs exact" not in metrics_of(at)
    at.selectbox(key="circuit_metric").set_value("logit_diff").run()  # induction has no corrupted answer
    assert "has none" in at.error[0].value
    at.selectbox(key="circuit_metric").set_value("prob").run()
    assert not at.exception and not at.error


def test_a_picked_edge_is_path_patched_and_a_stale_pick_is_dropped(app, runs_dir):
    run = load_run(runs_dir / "sycophancy")
    contrast = run.task.circuit_contrast(64)
    at = app("circuit", run="sycophancy", circuit_pick="L0H1 -> MLP0")
    result = path_patching(run.model, contrast, ["L0H1"], ["MLP0"])
    text = " ".join(m.value for m in at.markdown)
    assert f"{result.metric:.4f} ({result.effect:+.4f})" in text
    at = app("circuit", run="modadd", circuit_pick="L1H0 -> logits")  # a 1-layer model has no L1H0
    assert not at.exception and "not an edge of this model" in at.info[0].value


def test_a_pick_does_not_follow_a_switch_of_score(app, runs_dir):
    at = app("circuit", run="sycophancy", circuit_pick="L0H1 -> MLP0")
    assert any("Path patching" in h.value for h in at.subheader)
    at.selectbox(key="circuit_method").set_value("eap").run()
    assert not at.exception and not any("Path patching" in h.value for h in at.subheader)
    assert "circuit_pick" not in at.session_state
