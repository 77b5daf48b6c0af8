"""Composition scores and circuits, on models whose answers are known by construction."""

import pytest
import torch
from probe_models import contrast_for, induction_model, model_of, previous_token_model, random_model

from probes.circuit.attribution import edge_attribution
from probes.circuit.composition import composition_baseline, composition_scores
from probes.circuit.contrast import Contrast
from probes.circuit.discovery import acdc, circuit_from_scores, evaluate_circuit
from probes.circuit.exact import evaluate_edge_sets, exact_edge_patching, patched_values
from probes.circuit.graph import Graph

# -- composition ----------------------------------------------------------------------------


def test_composition_scores_match_the_full_matrices():
    model = random_model(n_layers=3)
    for kind in "qkv":
        scores = composition_scores(model, kind)
        assert scores.shape == (3, 4, 3, 4)
        assert torch.isnan(scores[1, :, 1]).all() and torch.isnan(scores[2, :, 0]).all()
        a, b = model.blocks[0].attn, model.blocks[2].attn
        ov = a.W_V[3] @ a.W_O[3]
        reader = {"q": b.W_Q[1] @ b.W_K[1].T, "k": b.W_K[1] @ b.W_Q[1].T, "v": b.W_V[1] @ b.W_O[1]}[kind]
        expected = (ov @ reader).norm() / (ov.norm() * reader.norm())
        assert scores[0, 3, 2, 1].item() == pytest.approx(expected.item(), rel=1e-4)


def test_a_head_built_to_read_another_heads_output_composes_far_above_chance():
    model = random_model(attn_only=True, normalization=None, d_model=32, n_heads=4)
    d_head = model.cfg.d_head
    with torch.no_grad():
        for block in model.blocks:
            for w in ("W_Q", "W_K", "W_V", "W_O"):
                getattr(block.attn, w).zero_()
        first, second = model.blocks[0].attn, model.blocks[1].attn
        first.W_V[0] = torch.eye(32)[:, :d_head]
        first.W_O[0] = torch.eye(32)[:d_head]  # L0H0 writes into dims [0, d_head)
        first.W_V[1] = torch.eye(32)[:, :d_head]
        first.W_O[1] = torch.eye(32)[d_head : 2 * d_head]  # L0H1 writes into [d_head, 2 d_head)
        second.W_K[2] = torch.eye(32)[:, :d_head]  # L1H2's keys read [0, d_head)
        second.W_Q[2] = torch.eye(32)[:, :d_head]
    k = composition_scores(model, "k")
    mean, std = composition_baseline(model, "k")
    assert k[0, 0, 1, 2] == pytest.approx(d_head**-0.5)  # ||P P|| / ||P||^2 for a rank-d_head projection P
    assert k[0, 0, 1, 2] > mean + 5 * std
    assert k[0, 1, 1, 2] == pytest.approx(0.0, abs=1e-6)  # writes where L1H2 does not read
    assert 0 < mean < 0.5 and std > 0


# -- circuits -------------------------------------------------------------------------------


def previous_token_contrast(model, batch: int = 16) -> Contrast:
    """The model predicts the previous token: clean prompts against other random prompts, scored at every position."""
    gen = torch.Generator().manual_seed(3)
    pos, vocab = model.cfg.n_ctx, model.cfg.d_vocab
    clean = torch.randint(0, vocab, (batch, pos), generator=gen)
    corrupted = torch.randint(0, vocab, (batch, pos), generator=gen)
    mask = torch.zeros(batch, pos, dtype=torch.bool)
    mask[:, 1:] = True
    prev = lambda t: t.roll(1, 1)  # noqa: E731  the answer after position t is token t - 1
    return Contrast.of_answers(clean, corrupted, prev(clean), prev(corrupted), mask, "logit_diff")


def test_circuit_of_the_previous_token_model_is_its_known_route():
    model = previous_token_model().double()
    c = previous_token_contrast(model)
    for scores in (exact_edge_patching(model, c), edge_attribution(model, c, "eap-ig", steps=8)):
        circuit = circuit_from_scores(model, c, scores, target=0.9)
        assert circuit.faithfulness >= 0.9 and circuit.has_path
        assert {"embed -> L0H0.v", "L0H0 -> logits"} <= set(circuit.edge_names())
        assert not any(name.startswith("L0H1") for name in circuit.edge_names())  # head 1 writes nothing
        assert circuit.curve[-1] == (scores.graph.n_edges, pytest.approx(1.0))
    searched = acdc(model, c, threshold=0.02)
    assert {"embed -> L0H0.v", "L0H0 -> logits"} <= set(searched.edge_names())
    assert searched.faithfulness >= 0.9 and searched.size < scores.graph.n_edges


def test_circuit_evaluation_bounds_and_the_empty_circuit_warns():
    model = model_of("mlp_ln")
    c = contrast_for(model)
    g = Graph.of(model.cfg)
    full = evaluate_circuit(model, c, g.valid)
    assert full.faithfulness == pytest.approx(1.0) and full.completeness == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="no path from the embeddings to the logits"):
        empty = evaluate_circuit(model, c, g.mask(["L0H1 -> L1H2.k"]))
    assert empty.size == 0 and empty.faithfulness == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="not an edge"):
        evaluate_circuit(model, c, ~g.valid)
    with pytest.raises(ValueError, match=r"n_edges must lie in \[1, 137\]"):
        circuit_from_scores(model, c, edge_attribution(model, c), n_edges=0)


def test_a_contrast_the_model_cannot_tell_apart_is_refused():
    model = model_of("mlp_ln")
    c = contrast_for(model)
    same = Contrast(c.clean, c.clean, c.metric)
    with pytest.raises(ValueError, match="faithfulness is undefined"):
        circuit_from_scores(model, same, exact_edge_patching(model, same))


def test_head_inputs_are_recomputed_with_the_models_own_weights():
    """Editing W_K changes the patched run exactly as it changes the model (no second copy of the weights)."""
    model = model_of("mlp_ln")
    c = contrast_for(model)
    before = exact_edge_patching(model, c).scores
    with torch.no_grad():
        model.blocks[1].attn.W_K[2] *= 3
    after = exact_edge_patching(model, c).scores
    g = Graph.of(model.cfg)
    assert after[g.edge("L0H1 -> L1H2.k")] != before[g.edge("L0H1 -> L1H2.k")]


def test_the_induction_circuit_is_found_exactly_by_every_method():
    """The hand-built induction model: the previous-token head feeds the induction head's keys (K-composition)."""
    model = induction_model().double()
    gen = torch.Generator().manual_seed(0)
    first = torch.stack([torch.randperm(8, generator=gen) for _ in range(32)])
    other = torch.stack([torch.randperm(8, generator=gen) for _ in range(32)])
    clean, corrupted = torch.cat([first, first], 1), torch.cat([other, first], 1)  # r + r against r' + r
    mask = torch.zeros_like(clean, dtype=torch.bool)
    mask[:, 8:15] = True  # the second copy predicts its next token
    c = Contrast.of_answers(clean, corrupted, clean.roll(-1, 1), None, mask, "log_prob")
    route = {"embed -> L0H0.v", "L0H0 -> L1H0.k", "embed -> L1H0.v", "L1H0 -> logits"}
    exact = exact_edge_patching(model, c)
    eap, ig = edge_attribution(model, c, "eap"), edge_attribution(model, c, "eap-ig", steps=10)
    for scores in (exact, eap, ig):
        circuit = circuit_from_scores(model, c, scores)
        assert set(circuit.edge_names()) == route and circuit.faithfulness == pytest.approx(1.0)
        assert {name for name, _ in scores.ranked(4)} == route
    searched = acdc(model, c, threshold=0.05)
    assert set(searched.edge_names()) == route
    # attention saturates, so the gradient at the clean run underestimates; integrated gradients come closer
    on_route = exact.scores != 0
    assert (ig.scores - exact.scores)[on_route].abs().sum() < 0.5 * (eap.scores - exact.scores)[on_route].abs().sum()
    k = composition_scores(model, "k")
    mean, std = composition_baseline(model, "k")
    assert k[0, 0, 1, 0] > mean + 10 * std


def test_pruning_under_mean_ablation_keeps_edges_out_of_unfed_nodes():
    """Under mean ablation an unfed node writes f(mean input), not the mean write: its edges still count."""
    model = model_of("mlp_ln")
    c = contrast_for(model)
    g = Graph.of(model.cfg)
    edges = g.mask(["embed -> L0H1.v", "L0H1 -> logits", "L0H2 -> logits", "MLP0 -> logits"])
    for ablation in ("corrupted", "mean"):
        _, _, values = patched_values(model, c, ablation)
        unpruned = evaluate_edge_sets(model, c, (g.valid & ~edges)[None], values)[0].item()
        circuit = evaluate_circuit(model, c, edges, ablation)
        assert circuit.metric == pytest.approx(unpruned, abs=1e-10)
    assert evaluate_circuit(model, c, edges, "mean").size == 4
    assert evaluate_circuit(model, c, edges, "corrupted").size == 2  # L0H2 and MLP0 write their corrupted value anyway
