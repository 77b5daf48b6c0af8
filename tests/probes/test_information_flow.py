"""Information-flow routes: parts that add up exactly, thresholds, routes, per-head splits, and the figure."""

import plotly.graph_objects as go
import pytest
import torch

from probes.information_flow import (
    FlowNode,
    attention_parts,
    flow_figure,
    information_flow,
    mlp_parts,
)


@pytest.mark.parametrize("which", ["mlp_model", "attn_only_model"])
def test_parts_add_up_to_the_whole_exactly(which, request):
    model = request.getfixturevalue(which)
    tokens = torch.randint(0, 12, (1, 9))
    _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        a = attention_parts(model, cache, layer)
        torch.testing.assert_close(a.resid + a.heads.sum((1, 2)) + a.bias, a.total, atol=1e-5, rtol=0)
        assert (a.heads[torch.triu_indices(9, 9, 1).unbind()] == 0).all()  # nothing from the future
        if not model.cfg.attn_only:
            m = mlp_parts(model, cache, layer)
            torch.testing.assert_close(m.resid + m.neurons.sum(1) + m.bias, m.total, atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["mlp_model", "attn_only_model"])
def test_kept_edges_are_renormalised_per_node_and_reachable(which, request):
    model = request.getfixturevalue(which)
    with torch.no_grad():  # biases start at zero; give them something to carry
        for block in model.blocks:
            block.attn.b_O.normal_(0, 1.0)
            if not model.cfg.attn_only:
                block.mlp.b_out.normal_(0, 1.0)
    tokens = torch.randint(0, 12, (9,))
    for tau in (0.0, 0.04):
        g = information_flow(model, tokens, target_pos=-1, tau=tau)
        assert g.nodes[0] == FlowNode(model.cfg.n_layers, 8, "resid_pre")
        into: dict[int, float] = {}
        for e in g.edges:
            assert e.importance >= tau or e.kind == "mlp_in"
            if e.kind != "mlp_in":
                into[e.dst] = into.get(e.dst, 0.0) + e.importance
        for total in into.values():
            assert total == pytest.approx(1.0, abs=1e-5)
        # every node but the target has an edge out of it: it lies on a route
        sources = {e.src for e in g.edges}
        assert all(i in sources for i in range(1, len(g.nodes)))
        for e, heads in g.head_contributions.items():
            assert g.edges[e].kind == "attn" and heads.shape == (model.cfg.n_heads,)
        for v, neurons in g.neuron_contributions.items():
            assert g.nodes[v].kind == "mlp" and neurons.shape == (model.cfg.d_mlp,)
    full = information_flow(model, tokens, tau=0.0)
    assert len(full.edges) > len(g.edges)
    assert any(n.kind == "b_O" for n in full.nodes)
    assert any(n.kind == "b_out" for n in full.nodes) == (not model.cfg.attn_only)


def test_the_previous_token_head_is_the_route(prev_model):
    g = information_flow(prev_model, torch.tensor([1, 2, 3, 4, 5]), target_pos=3, tau=0.04)
    attn = [e for e in g.edges if e.kind == "attn"]
    # position 3's stream is its own token plus the doubled copy of token 2's, via head 0 only
    assert [(g.nodes[e.src].pos, g.nodes[e.dst].pos) for e in attn] == [(2, 3)]
    (edge_index,) = [i for i, e in enumerate(g.edges) if e.kind == "attn"]
    heads = g.head_contributions[edge_index]
    # |y|_1 = 4 (pos, token, doubled previous token); the head part brings 2 of it, the residual 2
    assert heads[0] == pytest.approx(0.5, abs=1e-4) and heads[1] == 0.0
    assert g.node_index(0, 2, "resid_pre") >= 0
    with pytest.raises(KeyError, match="not on a route"):
        g.node_index(0, 0, "resid_pre")


def test_figure_nodes_carry_their_identity(mlp_model):
    g = information_flow(mlp_model, torch.randint(0, 12, (6,)), tau=0.0)
    fig = flow_figure(g, token_labels=list("abcdef"))
    assert isinstance(fig, go.Figure)
    marked = [
        row for trace in fig.data if trace.mode == "markers" and trace.name != "edges" for row in trace.customdata
    ]
    assert sorted(row[0] for row in marked) == list(range(len(g.nodes)))
    for index, layer, pos, kind in marked:
        assert g.nodes[index] == FlowNode(layer, pos, kind)


def test_bad_input(mlp_model):
    with pytest.raises(ValueError, match="outside a prompt"):
        information_flow(mlp_model, torch.zeros(4, dtype=torch.long), target_pos=4)
    with pytest.raises(ValueError, match="tau must lie"):
        information_flow(mlp_model, torch.zeros(4, dtype=torch.long), tau=1.5)
    with pytest.raises(ValueError, match="one prompt"):
        information_flow(mlp_model, torch.zeros(2, 4, dtype=torch.long))
