import pytest
import torch

from probes.patching import (
    logit_diff_metric,
    patch_activations,
    patch_by_layer_pos,
    patch_head_patterns,
    patch_heads,
    patch_heads_by_pos,
    patching_figure,
)


@pytest.fixture
def prompts():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 12, (2, 6), generator=g), torch.randint(0, 12, (2, 6), generator=g)


@torch.no_grad()
def _one_cell(model, clean, corrupted, metric, name, index):
    """The slow reference: one forward with one cell patched."""
    _, cache = model.run_with_cache(clean, names=name)

    def put(act, hook):
        out = act.clone()
        out[index] = cache[name][index]
        return out

    with model.hooks(fwd=[(name, put)]):
        return float(metric(model(corrupted)))


def test_patching_everything_restores_the_clean_metric_exactly(mlp_model, prompts):
    clean, corrupted = prompts
    metric = logit_diff_metric(3, 5)
    with torch.no_grad():
        clean_value = float(metric(mlp_model(clean)))
        assert clean_value != float(metric(mlp_model(corrupted)))
    assert patch_activations(mlp_model, clean, corrupted, metric, ["hook_embed", "hook_pos_embed"]) == clean_value
    every_head = [f"blocks.{l}.attn.hook_z" for l in range(2)] + [f"blocks.{l}.hook_mlp_out" for l in range(2)]
    restored = patch_activations(mlp_model, clean, corrupted, metric, every_head + ["hook_embed", "hook_pos_embed"])
    assert restored == clean_value
    # the last layer's whole residual stream, at every position, cell by cell in a batched sweep
    result = patch_by_layer_pos(mlp_model, clean, corrupted, metric, "resid_post")
    assert result.clean == clean_value
    assert result.values[1, -1] == pytest.approx(clean_value, abs=1e-5)  # the metric reads the last position only


@pytest.mark.parametrize("kind", ["resid_pre", "resid_mid", "attn_out", "mlp_out"])
def test_batched_layer_pos_sweep_matches_one_forward_per_cell(mlp_model, prompts, kind):
    clean, corrupted = prompts
    metric = logit_diff_metric(3, 5)
    result = patch_by_layer_pos(mlp_model, clean, corrupted, metric, kind, max_copies=7)  # chunks of 3 copies
    assert result.values.shape == (2, 6) and result.axes == ("layer", "pos")
    for layer, pos in [(0, 0), (0, 3), (1, 5)]:
        want = _one_cell(mlp_model, clean, corrupted, metric, f"blocks.{layer}.hook_{kind}", (slice(None), pos))
        assert result.values[layer, pos] == pytest.approx(want, abs=1e-5)


def test_head_sweeps_match_one_forward_per_cell(mlp_model, prompts):
    clean, corrupted = prompts
    metric = logit_diff_metric(3, 5)
    heads = patch_heads(mlp_model, clean, corrupted, metric)
    by_pos = patch_heads_by_pos(mlp_model, clean, corrupted, metric)
    patterns = patch_head_patterns(mlp_model, clean, corrupted, metric)
    assert heads.values.shape == (2, 4) and by_pos.values.shape == (2, 4, 6) and patterns.values.shape == (2, 4)
    for layer, h in [(0, 1), (1, 3)]:
        z = f"blocks.{layer}.attn.hook_z"
        assert heads.values[layer, h] == pytest.approx(
            _one_cell(mlp_model, clean, corrupted, metric, z, (slice(None), slice(None), h)), abs=1e-5
        )
        assert by_pos.values[layer, h, 2] == pytest.approx(
            _one_cell(mlp_model, clean, corrupted, metric, z, (slice(None), 2, h)), abs=1e-5
        )
        pat = f"blocks.{layer}.attn.hook_pattern"
        assert patterns.values[layer, h] == pytest.approx(
            _one_cell(mlp_model, clean, corrupted, metric, pat, (slice(None), h)), abs=1e-5
        )


@pytest.mark.parametrize("activation", ["q", "k", "v"])
def test_query_key_value_sweeps_by_position_match_one_forward_per_cell(mlp_model, prompts, activation):
    clean, corrupted = prompts
    metric = logit_diff_metric(3, 5)
    result = patch_heads_by_pos(mlp_model, clean, corrupted, metric, max_copies=10, activation=activation)
    assert result.values.shape == (2, 4, 6) and "by position" in result.title
    name = lambda layer: f"blocks.{layer}.attn.hook_{activation}"
    for layer, h, pos in [(0, 1, 0), (0, 2, 4), (1, 3, 5)]:
        want = _one_cell(mlp_model, clean, corrupted, metric, name(layer), (slice(None), pos, h))
        assert result.values[layer, h, pos] == pytest.approx(want, abs=1e-5)
    # in the last layer only the last position's query feeds the metric (which reads the last position)
    if activation == "q":
        assert torch.allclose(result.values[1, :, :-1], torch.tensor(result.corrupted), atol=1e-5)
    with pytest.raises(ValueError, match=r"unknown head activation 'pattern'; use one of \['z', 'q', 'k', 'v'\]"):
        patch_heads_by_pos(mlp_model, clean, corrupted, metric, activation="pattern")


def test_pattern_sweep_by_destination_matches_one_forward_per_cell(mlp_model, prompts):
    clean, corrupted = prompts
    metric = logit_diff_metric(3, 5)
    result = patch_head_patterns(mlp_model, clean, corrupted, metric, by_dest_pos=True)
    assert result.values.shape == (2, 4, 6) and result.axes == ("layer", "head", "dest_pos")
    for layer, h, dest in [(0, 0, 1), (1, 2, 5), (0, 3, 5)]:
        pat = f"blocks.{layer}.attn.hook_pattern"
        want = _one_cell(mlp_model, clean, corrupted, metric, pat, (slice(None), h, dest))
        assert result.values[layer, h, dest] == pytest.approx(want, abs=1e-5)
    # a last-layer row other than the last destination cannot reach the metric
    assert torch.allclose(result.values[1, :, :-1], torch.tensor(result.corrupted), atol=1e-5)


def test_normalised_and_figures(mlp_model, prompts):
    clean, corrupted = prompts
    result = patch_by_layer_pos(mlp_model, clean, corrupted, logit_diff_metric(3, 5), "resid_pre")
    norm = result.normalized()
    assert norm[0, -1] == pytest.approx((result.values[0, -1] - result.corrupted) / (result.clean - result.corrupted))
    fig = patching_figure(result, token_labels=list("abcdef"))
    assert len(fig.data[0].z) == 2 and fig.data[0].x[1] == "1: b"
    by_pos = patch_heads_by_pos(mlp_model, clean, corrupted, logit_diff_metric(3, 5))
    assert len(patching_figure(by_pos).data[0].y) == 8  # L0H0 .. L1H3


def test_bad_input(mlp_model, attn_only_model, prompts):
    clean, corrupted = prompts
    metric = logit_diff_metric(3, 5)
    with pytest.raises(ValueError, match="same length"):
        patch_by_layer_pos(mlp_model, clean, corrupted[:, :5], metric)
    with pytest.raises(ValueError, match="0-dim tensor"):
        patch_heads(mlp_model, clean, corrupted, lambda logits: logits[:, -1, 3])
    with pytest.raises(KeyError, match="no hook point named"):
        patch_activations(mlp_model, clean, corrupted, metric, ["blocks.0.hook_resid_pree"])
    with pytest.raises(ValueError, match="unknown activation kind"):
        patch_by_layer_pos(mlp_model, clean, corrupted, metric, "resid")
    with pytest.raises(ValueError, match="attention-only"):
        patch_by_layer_pos(attn_only_model, clean, corrupted, metric, "mlp_out")
