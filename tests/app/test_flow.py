"""Information-flow page: the routes and the head breakdown shown equal what probes computes."""

from __future__ import annotations

import torch

from blocks.training.runs import load_run
from probes.information_flow import head_importance_map, information_flow


def test_flow_breakdown_matches_probes(app, runs_dir):
    at = app("flow", run="attn", prompt="BOS 1 2 3 4 5 6 1 2 3 4 5 6")
    assert not at.exception, at.exception
    n = 13
    assert at.selectbox(key="flow_target").value == n - 1
    run = load_run(runs_dir / "attn")
    tokens = torch.tensor([run.tokenizer.encode("BOS 1 2 3 4 5 6 1 2 3 4 5 6")])
    graph = information_flow(run.model, tokens, target_pos=n - 1, tau=0.04)
    assert f"{len(graph.nodes)} nodes and {len(graph.edges)} edges" in at.main.caption[1].value

    # a click lands in flow_pick; pick the final node, whose incoming attention edges carry the head split
    at.session_state["flow_pick"] = {"layer": 2, "pos": n - 1, "kind": "resid_pre"}
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    dst = graph.node_index(2, n - 1, "resid_pre")
    attn = [i for i, e in enumerate(graph.edges) if e.kind == "attn" and dst in (e.src, e.dst)]
    assert len(table) == len(attn)
    for row, i in zip(table.to_dict("records"), attn):
        assert row["importance"] == round(graph.edges[i].importance, 4)
        for h, v in enumerate(graph.head_contributions[i].tolist()):
            assert row[f"H{h}"] == round(v, 4)

    # the chosen head's contribution map is probes' map for that head
    head = at.radio(key="flow_head").value
    layer, h = int(head[1]), int(head[3])
    _, cache = run.model.run_with_cache(tokens)
    expected = head_importance_map(run.model, cache, layer, h)
    shown = at.get("plotly_chart")[-1]
    import json

    z = json.loads(shown.proto.spec)["data"][0]["z"]
    torch.testing.assert_close(torch.tensor(z), expected, atol=1e-5, rtol=1e-4)


def test_threshold_changes_routes(app, runs_dir):
    at = app("flow", run="attn", prompt="BOS 1 2 3 4 5 6 1 2 3 4 5 6", flow_threshold=0.0)
    loose = at.main.caption[1].value
    at.slider(key="flow_threshold").set_value(0.2).run()
    assert not at.exception
    run = load_run(runs_dir / "attn")
    graph = information_flow(run.model, torch.tensor([run.tokenizer.encode("BOS 1 2 3 4 5 6 1 2 3 4 5 6")]), -1, 0.2)
    assert f"{len(graph.nodes)} nodes and {len(graph.edges)} edges" in at.main.caption[1].value
    assert at.main.caption[1].value != loose


def test_picking_an_attention_edge_shows_only_its_heads(app, runs_dir):
    prompt = "BOS 1 2 3 4 5 6 1 2 3 4 5 6"
    run = load_run(runs_dir / "attn")
    graph = information_flow(run.model, torch.tensor([run.tokenizer.encode(prompt)]), target_pos=12, tau=0.04)
    i, edge = next((i, e) for i, e in enumerate(graph.edges) if e.kind == "attn")
    ends = [graph.nodes[edge.src], graph.nodes[edge.dst]]
    at = app(
        "flow",
        run="attn",
        prompt=prompt,
        flow_pick={"edge": [{"layer": v.layer, "pos": v.pos, "kind": v.kind} for v in ends]},
    )
    assert not at.exception, at.exception
    assert f"importance {edge.importance:.3f}" in at.subheader[-1].value
    (row,) = at.dataframe[0].value.to_dict("records")
    for h, v in enumerate(graph.head_contributions[i].tolist()):
        assert row[f"H{h}"] == round(v, 4)


def test_flow_figure_has_a_clickable_marker_per_edge(runs_dir):
    from probes.information_flow import flow_figure

    run = load_run(runs_dir / "attn")
    graph = information_flow(run.model, torch.tensor([run.tokenizer.encode("BOS 1 2 3 1 2 3")]), -1, 0.04)
    (mids,) = [t for t in flow_figure(graph).data if t.name == "edges"]
    assert len(mids.x) == len(graph.edges)
    assert [c[0] for c in mids.customdata] == list(range(len(graph.edges)))


def test_a_pick_off_the_new_routes_is_forgotten_without_a_message(app, runs_dir):
    prompt = "BOS 1 2 3 4 5 6 1 2 3 4 5 6"
    at = app(
        "flow", run="attn", prompt=prompt, flow_threshold=0.0, flow_pick={"layer": 0, "pos": 3, "kind": "resid_pre"}
    )
    assert not at.exception, at.exception
    assert at.subheader, "the node is on the routes at tau 0"
    at.slider(key="flow_threshold").set_value(0.2).run()
    assert not at.exception, at.exception
    assert not at.info and not at.subheader  # no stale "picked before" box
    assert "flow_pick" not in at.session_state


def test_the_target_follows_a_new_prompt_and_the_prediction_is_shown(app, runs_dir):
    at = app("flow", run="attn", prompt="BOS 1 2 3 1 2 3")
    assert at.selectbox(key="flow_target").value == 6
    at.sidebar.text_area(key="prompt").input("BOS 1 2 3 4 5 6 1 2 3 4 5 6").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="flow_target").value == 12  # the new prompt's last position, not the old one's
    run = load_run(runs_dir / "attn")
    logits = run.model(torch.tensor([run.tokenizer.encode("BOS 1 2 3 4 5 6 1 2 3 4 5 6")]))[0, 12].detach()
    top = logits.softmax(-1).topk(3)
    shown = at.markdown[0].value
    assert shown.startswith("After 12:6 the model predicts")
    for p, t in zip(top.values, top.indices):
        assert f"**{run.tokenizer.vocab[int(t)]}** ({float(p):.3f})" in shown


def test_the_flow_figure_spans_every_position_names_tokens_and_explains_its_colours(runs_dir):
    from probes.information_flow import flow_figure
    from probes.information_flow.figure import EDGE_MEANING

    run = load_run(runs_dir / "attn")
    prompt = "BOS 1 2 3 4 5 6 1 2 3 4 5 6"
    tokens = torch.tensor([run.tokenizer.encode(prompt)])
    graph = information_flow(run.model, tokens, target_pos=5, tau=0.04)  # routes into position 5 reach no later one
    fig = flow_figure(graph, prompt.split(), highlight=0)
    assert fig.layout.xaxis.range[0] < 0 and fig.layout.xaxis.range[1] > 12  # positions 6..12 have room too
    legend = [t.name for t in fig.data if t.showlegend is not False and t.name.startswith("edge:")]
    assert sorted(legend) == sorted(f"edge: {EDGE_MEANING[k]}" for k in {e.kind for e in graph.edges})
    (mids,) = [t for t in fig.data if t.name == "edges"]
    i = next(i for i, e in enumerate(graph.edges) if e.kind == "attn")
    src, dst = graph.nodes[graph.edges[i].src], graph.nodes[graph.edges[i].dst]
    assert f"at {src.pos}: {prompt.split()[src.pos]}" in mids.text[i] and "top head L" in mids.text[i]
    assert f"at {dst.pos}: {prompt.split()[dst.pos]}" in mids.text[i]
    assert [t for t in fig.data if t.name == "selected"]


def test_compare_two_checkpoints_side_by_side(app, runs_dir):
    prompt = "BOS 1 2 3 4 5 6 1 2 3 4 5 6"
    at = app("flow", run="attn", prompt=prompt, flow_compare=4)
    assert not at.exception, at.exception
    tokens = torch.tensor([load_run(runs_dir / "attn").tokenizer.encode(prompt)])
    for step, text in ((8, at.markdown[1].value), (4, at.markdown[2].value)):
        graph = information_flow(load_run(runs_dir / "attn", step=step).model, tokens, target_pos=12, tau=0.04)
        assert text.startswith(f"**step {step}**")
        if step == 4:
            assert f"{len(graph.nodes)} nodes and {len(graph.edges)} edges" in text
    assert [b.proto.label for b in at.get("download_button")] == ["Download these routes (JSON)"] * 2
    assert dict(at.query_params)["flow_compare"] == "4"
    at.selectbox(key="flow_compare").set_value(None).run()
    assert len(at.get("plotly_chart")) == 1 and len(at.get("download_button")) == 1


def test_a_picked_node_links_to_the_lens_and_heads_pages(app, runs_dir):
    prompt = "BOS 1 2 3 4 5 6 1 2 3 4 5 6"
    at = app("flow", run="attn", prompt=prompt, flow_pick={"layer": 2, "pos": 12, "kind": "resid_pre"})
    assert not at.exception, at.exception
    head = at.radio(key="flow_head").value
    assert at.button[1].label == f"Open {head} on the heads page"
    at.button[1].click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Attention heads" and at.selectbox(key="head").value == head

    at = app("flow", run="attn", prompt=prompt, flow_pick={"layer": 1, "pos": 7, "kind": "resid_pre"})
    assert at.button[0].label == "Logit lens at 7:1"
    at.button[0].click().run()
    assert at.title[0].value == "Logit lens and attribution" and at.selectbox(key="lens_pos").value == 7
