import math

import pytest
import torch

from probes.fourier import embedding_frequency_norms, explained_by, fourier_basis, neuron_frequency_share, summarise
from probes.probing import IGNORE, control_labels, fit_probe, probe_figure, probe_layers, random_model_like


def test_a_probe_finds_a_planted_linear_feature_and_not_a_random_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 24, generator=g)
    planted = (x @ torch.randn(24, generator=g) > 0).long()
    random = torch.randint(0, 2, (800,), generator=g)
    found = fit_probe(x, planted)
    assert found.test_accuracy > 0.9
    noise = fit_probe(x, random)
    assert noise.test_accuracy < 0.62  # chance, give or take a held-out sample of 200


def test_control_labels_are_fixed_per_token_type():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 9, (20, 6), generator=g)
    labels = torch.randint(0, 3, (20, 6), generator=g)
    labels[0, 0] = IGNORE
    control = control_labels(tokens, labels, seed=1)
    assert control[0, 0] == IGNORE
    for t in range(9):
        seen = control[(tokens == t) & (labels != IGNORE)]
        assert seen.numel() == 0 or (seen == seen[0]).all()


def test_probe_layers_reads_a_token_feature_from_every_stream(mlp_model):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 12, (60, 8), generator=g)
    labels = (tokens < 6).long()  # a feature of the token itself: readable everywhere, and by the control too
    result = probe_layers(mlp_model, tokens, labels)
    assert result.labels == ["0_pre", "1_pre", "final_post"]
    assert result.task_accuracy[0] > 0.95  # the embedding itself; later streams mix in other positions
    assert (result.task_accuracy > result.chance).all()
    torch.testing.assert_close(result.selectivity, result.task_accuracy - result.control_accuracy)
    baseline = probe_layers(random_model_like(mlp_model, seed=1), tokens, labels)
    assert len(probe_figure(result, baseline).data) == 4


def test_fourier_finds_planted_frequencies():
    p = 11
    basis, labels = fourier_basis(p)
    torch.testing.assert_close(basis @ basis.T, torch.eye(p), atol=1e-5, rtol=0)
    assert labels[:3] == ["const", "cos 1", "sin 1"]
    a = torch.arange(p)[:, None].float()
    b = torch.arange(p)[None].float()
    acts = torch.stack(
        [
            torch.cos(2 * math.pi * 3 * (a + b) / p),
            torch.cos(2 * math.pi * 3 * a / p) + 0.5 + 0 * b,
            torch.sin(2 * math.pi * 5 * b / p) * torch.cos(2 * math.pi * 5 * a / p),
        ],
        dim=-1,
    )
    share = neuron_frequency_share(acts)
    assert share[0, 2] == pytest.approx(1.0, abs=1e-4) and share[2, 4] == pytest.approx(1.0, abs=1e-4)
    W_E = torch.cos(2 * math.pi * 4 * torch.arange(p)[:, None].float() / p).repeat(1, 3)
    assert embedding_frequency_norms(W_E).argmax() == 3  # frequency 4
    s = summarise(acts, W_E, n_keys=2)
    assert sorted(s.key_frequencies) == [3, 5] and s.explained == pytest.approx(1.0, abs=1e-4)
    # variances: neurons 0 and 1 carry p^2/2 each at frequency 3, neuron 2 p^2/4 at frequency 5
    assert explained_by(acts, [3]) == pytest.approx(0.8, abs=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match="one label per row"):
        fit_probe(torch.zeros(5, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="p x p grid"):
        neuron_frequency_share(torch.zeros(5, 4, 2))
