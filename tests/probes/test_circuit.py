"""Circuit discovery against answers known by construction: the graph, edge patching, attribution, composition, circuits."""

import pytest
import torch
from probe_models import CONFIGS, contrast_for, model_of

from probes.circuit.attribution import ZeroGradientError, edge_attribution, node_attribution
from probes.circuit.contrast import Contrast, token_metric
from probes.circuit.edges import EdgePatch, run_edges, sender_values
from probes.circuit.exact import evaluate_edge_sets, exact_edge_patching, patched_values, path_patching
from probes.circuit.graph import Graph
from probes.circuit.scores import rank_agreement, spearman

# -- the graph ------------------------------------------------------------------------------


def test_graph_counts_names_and_edges_of_a_two_layer_model():
    g = Graph.of(model_of("attn_only_shortformer").cfg)
    assert g.senders == ["embed"] + [f"L{l}H{h}" for l in range(2) for h in range(4)]  # no pos_embed: shortformer
    assert len(g.receivers) == 2 * 4 * 3 + 1
    # embed feeds all 25 receivers; each L0 head the 12 inputs of L1 and the logits; each L1 head the logits
    assert g.n_edges == 25 + 4 * 13 + 4 * 1 == 81
    s, r = g.edge("L0H3 -> L1H2.k")
    assert (g.senders[s], g.receivers[r]) == ("L0H3", "L1H2.k")
    assert g.edge_names[g.edges.index((s, r))] == "L0H3 -> L1H2.k"

    mlp = Graph.of(model_of("mlp_ln").cfg)
    assert mlp.senders[:2] == ["embed", "pos_embed"] and "MLP1" in mlp.senders and "MLP0" in mlp.receivers
    # heads of a layer feed that layer's MLP; an MLP feeds the next layer's heads
    assert mlp.valid[mlp.sender_index("L0H1"), mlp.receiver_index("MLP0")]
    assert mlp.valid[mlp.sender_index("MLP0"), mlp.receiver_index("L1H0.v")]
    assert not mlp.valid[mlp.sender_index("MLP0"), mlp.receiver_index("L0H0.q")]


def test_bad_node_and_edge_names_say_what_is_valid():
    g = Graph.of(model_of("mlp_ln").cfg)
    with pytest.raises(ValueError, match=r"no receiver named 'L1H2\.x'.*did you mean"):
        g.edge("L0H3 -> L1H2.x")
    with pytest.raises(ValueError, match="no sender named 'L9H0'.*the senders are embed, pos_embed, L0H0"):
        g.edge("L9H0 -> logits")
    with pytest.raises(ValueError, match="writes after"):
        g.edge("L1H0 -> L0H1.q")
    with pytest.raises(ValueError, match="SENDER -> RECEIVER"):
        g.edge("L0H0")


def test_pruning_keeps_only_paths_from_embeddings_to_logits():
    g = Graph.of(model_of("attn_only_shortformer").cfg)
    path = ["embed -> L0H1.v", "L0H1 -> L1H2.k", "L1H2 -> logits"]
    assert g.has_path(g.mask(path)) and torch.equal(g.prune(g.mask(path)), g.mask(path))
    dangling = path + ["embed -> L1H0.q", "L0H2 -> L1H2.q"]  # L1H0 reaches no logits; nothing feeds L0H2
    assert torch.equal(g.prune(g.mask(dangling)), g.mask(path))
    assert not g.has_path(g.mask(["L0H1 -> L1H2.k", "L1H2 -> logits"]))


# -- patching edges -------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_patching_no_edge_is_the_clean_run_and_every_edge_the_corrupted_run(config):
    model = model_of(config)
    c = contrast_for(model)
    g = Graph.of(model.cfg)
    _, corrupted = sender_values(model, c.corrupted)
    masks = torch.stack([torch.zeros_like(g.valid), g.valid]).double()
    logits = run_edges(model, c.clean, EdgePatch(masks, corrupted))
    batch = c.clean.shape[0]
    torch.testing.assert_close(logits[:batch], model(c.clean), atol=1e-10, rtol=0)
    torch.testing.assert_close(logits[batch:], model(c.corrupted), atol=1e-10, rtol=0)


@torch.no_grad()
def test_one_edge_patched_equals_the_edit_written_by_hand():
    """L0H1's corrupted write reaches only L1H2's keys: recompute those keys by hand with a plain hook."""
    model = model_of("mlp_ln")
    c = contrast_for(model)
    scores = exact_edge_patching(model, c)
    _, clean_cache = model.run_with_cache(c.clean, names=lambda n: n.endswith(("hook_result", "hook_resid_pre")))
    _, corrupted_cache = model.run_with_cache(c.corrupted, names="blocks.0.attn.hook_result")
    delta = corrupted_cache["blocks.0.attn.hook_result"][:, :, 1] - clean_cache["blocks.0.attn.hook_result"][:, :, 1]
    block = model.blocks[1]

    def keys(k, hook):
        k = k.clone()
        x = block.ln1(clean_cache["blocks.1.hook_resid_pre"] + delta)
        k[:, :, 2] = x @ block.attn.W_K[2] + block.attn.b_K[2]
        return k

    with model.hooks(fwd=[("blocks.1.attn.hook_k", keys)]):
        by_hand = c.metric(model(c.clean)).item() - scores.clean
    assert scores.scores[scores.graph.edge("L0H1 -> L1H2.k")].item() == pytest.approx(by_hand, abs=1e-10)
    assert by_hand != 0


@torch.no_grad()
def test_exact_patching_of_an_mlp_input_and_of_the_logits_by_hand():
    model = model_of("mlp_ln")
    c = contrast_for(model)
    scores = exact_edge_patching(model, c)
    _, clean = model.run_with_cache(c.clean)
    _, corrupted = model.run_with_cache(c.corrupted)
    mlp_delta = corrupted["blocks.0.hook_mlp_out"] - clean["blocks.0.hook_mlp_out"]
    with model.hooks(fwd=[("blocks.1.hook_resid_post", lambda x, h: x + mlp_delta)]):
        into_logits = c.metric(model(c.clean)).item() - scores.clean
    assert scores.scores[scores.graph.edge("MLP0 -> logits")].item() == pytest.approx(into_logits, abs=1e-10)
    head_delta = corrupted["blocks.0.attn.hook_result"][:, :, 3] - clean["blocks.0.attn.hook_result"][:, :, 3]
    mlp = model.blocks[0]

    def pre(act, hook):
        return mlp.mlp.linear_in(mlp.ln2(clean["blocks.0.hook_resid_mid"] + head_delta))

    with model.hooks(fwd=[("blocks.0.mlp.hook_pre", pre)]):
        into_mlp = c.metric(model(c.clean)).item() - scores.clean
    assert scores.scores[scores.graph.edge("L0H3 -> MLP0")].item() == pytest.approx(into_mlp, abs=1e-10)


def test_mean_ablation_patches_to_the_mean_over_the_clean_prompts():
    model = model_of("mlp_ln")
    c = contrast_for(model)
    _, _, values = patched_values(model, c, "mean")
    _, clean = sender_values(model, c.clean)
    torch.testing.assert_close(values[0], clean.mean(0))


def test_path_patching_is_the_patch_of_the_direct_edges():
    model = model_of("mlp_ln")
    c = contrast_for(model)
    exact = exact_edge_patching(model, c)
    one = path_patching(model, c, ["L0H2"], ["L1H0.v"])
    assert one.edges == ["L0H2 -> L1H0.v"]
    assert one.effect == pytest.approx(float(exact.scores[exact.graph.edge("L0H2 -> L1H0.v")]), abs=1e-10)
    heads = path_patching(model, c, ["L0H2", "L0H0"], ["L1H0"])  # a head's name means its three inputs
    assert sorted(heads.edges) == sorted(f"L0H{a} -> L1H0.{x}" for a in (0, 2) for x in "qkv")
    with pytest.raises(ValueError, match="no edge leads"):
        path_patching(model, c, ["L1H0"], ["L0H1"])


# -- attribution ----------------------------------------------------------------------------


def test_eap_is_exact_where_the_model_is_linear_in_the_edge():
    """Without LayerNorm, a logit difference is linear in what reaches the unembedding: EAP = exact on edges into the logits."""
    model = model_of("mlp_no_ln")
    c = contrast_for(model)
    eap, exact = edge_attribution(model, c), exact_edge_patching(model, c)
    logits = eap.graph.receiver_index("logits")
    torch.testing.assert_close(eap.scores[:, logits], exact.scores[:, logits], atol=1e-10, rtol=0)
    assert exact.scores[:, logits].abs().max() > 1e-3
    assert (eap.scores[~eap.graph.valid] == 0).all()
    assert rank_agreement(eap, exact) > 0.8  # a small random model is nearly linear everywhere


@pytest.mark.parametrize("config", CONFIGS)
def test_eap_is_the_derivative_of_exact_edge_patching_at_every_edge(config):
    """Patch each edge a tiny step eps towards its corrupted value: (metric change) / eps is EAP's score."""
    model = model_of(config)
    c = contrast_for(model)
    eap = edge_attribution(model, c)
    g = Graph.of(model.cfg)
    _, clean = sender_values(model, c.clean)
    _, corrupted = sender_values(model, c.corrupted)
    eps = 1e-6
    edges = torch.tensor(g.edges)
    sets = torch.zeros(len(edges), *g.valid.shape, dtype=torch.bool)
    sets[torch.arange(len(edges)), edges[:, 0], edges[:, 1]] = True
    stepped = evaluate_edge_sets(model, c, sets, clean + eps * (corrupted - clean))
    with torch.no_grad():
        base = c.metric(model(c.clean))
    torch.testing.assert_close(eap.edge_values(), (stepped - base) / eps, atol=1e-6, rtol=1e-4)


def test_eap_ig_with_one_step_is_eap_and_with_more_steps_differs():
    model = model_of("mlp_ln")
    c = contrast_for(model)
    eap = edge_attribution(model, c, "eap")
    torch.testing.assert_close(edge_attribution(model, c, "eap-ig", steps=1).scores, eap.scores)
    ig = edge_attribution(model, c, "eap-ig", steps=4)
    assert ig.method == "eap-ig" and not torch.allclose(ig.scores, eap.scores)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        edge_attribution(model, c, "eap-ig", steps=0)


def test_eap_runs_under_no_grad_as_probe_scripts_call_it():
    model = model_of("mlp_ln")
    c = contrast_for(model)
    with torch.no_grad():
        scores = edge_attribution(model, c)
    torch.testing.assert_close(scores.scores, edge_attribution(model, c).scores)


@torch.no_grad()
def test_node_attribution_of_last_layer_heads_is_exact_without_layernorm():
    model = model_of("attn_only_shortformer")
    c = contrast_for(model)
    atp = node_attribution(model, c, "heads")
    _, corrupted = model.run_with_cache(c.corrupted, names="blocks.1.attn.hook_z")
    for head in range(4):

        def patch(z, hook, head=head):
            z = z.clone()
            z[:, :, head] = corrupted["blocks.1.attn.hook_z"][:, :, head]
            return z

        with model.hooks(fwd=[("blocks.1.attn.hook_z", patch)]):
            exact = c.metric(model(c.clean)).item() - atp.clean
        assert atp.total()[1, head].item() == pytest.approx(exact, abs=1e-10)
    assert atp.values.shape == (2, 4, c.clean.shape[1])
    mlp = model_of("mlp_ln")
    assert node_attribution(mlp, contrast_for(mlp), "neurons").values.shape == (2, 48, 9)
    with pytest.raises(ValueError, match="no MLPs"):
        node_attribution(model, c, "neurons")


def test_a_metric_without_gradient_is_refused_not_scored_zero():
    model = model_of("mlp_ln")
    c = contrast_for(model)
    constant = Contrast(c.clean, c.corrupted, lambda logits: torch.tensor(0.5))
    with pytest.raises(ZeroGradientError, match="does not depend on the logits"):
        edge_attribution(model, constant)
    flat = Contrast(c.clean, c.corrupted, lambda logits: (logits * 0).sum())
    with pytest.raises(ZeroGradientError, match="gradient with respect to every receiver input is zero"):
        edge_attribution(model, flat)
    with pytest.raises(ZeroGradientError):
        node_attribution(model, flat, "heads")


def test_prompts_that_do_not_match_are_refused_clearly():
    model = model_of("mlp_ln")
    c = contrast_for(model)
    with pytest.raises(ValueError, match="same number of prompts of the same length"):
        edge_attribution(model, Contrast(c.clean, c.corrupted[:, :-1], c.metric))
    with pytest.raises(ValueError, match="corrupted prompts: token id 99 is outside the vocabulary"):
        exact_edge_patching(model, Contrast(c.clean, torch.full_like(c.clean, 99), c.metric))
    with pytest.raises(ValueError, match="0-dim tensor"):
        exact_edge_patching(model, Contrast(c.clean, c.corrupted, lambda logits: logits[:, -1, 0]))
    with pytest.raises(ValueError, match="has none"):
        token_metric("logit_diff", c.answers, None, c.mask)


@torch.no_grad()
def test_metric_kinds_read_the_answers():
    model = model_of("mlp_ln")
    c = contrast_for(model)
    logits = model(c.clean)
    at = c.mask
    logp = logits.log_softmax(-1).gather(-1, c.answers[..., None])[..., 0]
    assert float(c.with_metric("log_prob").metric(logits)) == pytest.approx(float(logp[at].mean()))
    assert float(c.with_metric("prob").metric(logits)) == pytest.approx(float(logp.exp()[at].mean()))
    diff = logits.gather(-1, c.answers[..., None]) - logits.gather(-1, c.wrong[..., None])
    assert float(c.metric(logits)) == pytest.approx(float(diff[..., 0][at].mean()))


def test_spearman_handles_ties_and_refuses_constants():
    assert spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 30.0, 40.0])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # ties share their mean rank: [0, 1.5, 1.5, 3] against [0, 1, 2, 3]
    assert spearman(torch.tensor([0.0, 1.0, 1.0, 2.0]), torch.arange(4.0)) == pytest.approx(0.9486833, abs=1e-6)
    with pytest.raises(ValueError, match="constant"):
        spearman(torch.ones(4), torch.arange(4.0))


def test_eap_ig_is_complete_along_the_embedding_path():
    """Integrated gradients sum to the whole change: over the token embedding's edges, m(corrupted) - m(clean)."""
    model = model_of("mlp_ln")
    c = contrast_for(model)
    errors = []
    for steps in (20, 200):
        ig = edge_attribution(model, c, "eap-ig", steps=steps)
        embed = ig.scores[ig.graph.sender_index("embed")].sum().item()
        errors.append(abs(embed - (ig.corrupted - ig.clean)))
    assert abs(ig.corrupted - ig.clean) > 1e-2
    assert errors[1] < 0.01 * abs(ig.corrupted - ig.clean)  # a Riemann sum at k / steps: error ~ 1 / steps
    assert errors[1] < errors[0] / 5


@pytest.mark.parametrize("config", ["mlp_no_ln", "mlp_ln"])
def test_node_attribution_of_mlps_and_the_residual_stream_is_their_derivative(config):
    model = model_of(config)
    c = contrast_for(model)
    eps = 1e-6
    with torch.no_grad():
        base = c.metric(model(c.clean)).item()
    for kind, name in (("mlp", "blocks.1.hook_mlp_out"), ("resid", "blocks.1.hook_resid_pre")):
        atp = node_attribution(model, c, kind)
        assert atp.values.shape == (2, 1, c.clean.shape[1])
        _, clean = model.run_with_cache(c.clean, names=name)
        _, corrupted = model.run_with_cache(c.corrupted, names=name)
        step = clean[name] + eps * (corrupted[name] - clean[name])
        with torch.no_grad(), model.hooks(fwd=[(name, lambda act, hook: step)]):
            moved = (c.metric(model(c.clean)).item() - base) / eps
        assert atp.total()[1, 0].item() == pytest.approx(moved, rel=1e-4, abs=1e-6)
