"""Grokking's progress measures on logits whose Fourier content is known."""

import math

import pytest
import torch

from probes.progress_measures import _loss, chance_share, gini, key_directions, restricted_and_excluded_loss


def logits_of(p: int, parts: dict[int, float]) -> torch.Tensor:
    """Logits sum_k scale_k * cos(w_k (a + b - c)): the answer c = a + b scores highest."""
    x = torch.arange(p, dtype=torch.float64)
    phase = x[:, None, None] + x[None, :, None] - x[None, None, :]
    return sum(s * torch.cos(2 * math.pi * k * phase / p) for k, s in parts.items()).float()


def test_restricted_and_excluded_loss_split_the_logits_by_frequency():
    p = 13
    pairs = torch.arange(p * p)
    logits = logits_of(p, {2: 6.0, 5: 6.0}) + logits_of(p, {3: 1.0}) * 0.5
    restricted, excluded = restricted_and_excluded_loss(logits, [2, 5], pairs)
    assert restricted == pytest.approx(_loss(logits_of(p, {2: 6.0, 5: 6.0}), pairs), rel=1e-4)
    assert excluded == pytest.approx(_loss(logits_of(p, {3: 0.5}), pairs), rel=1e-4)
    assert restricted < 1.0 < excluded  # the key frequencies carry the answer; the rest barely does
    d = key_directions(p, [2, 5]).flatten(1).double()
    torch.testing.assert_close(d @ d.T, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"key frequencies must lie in \[1, 6\]"):
        key_directions(p, [7])


def test_gini_of_equal_and_concentrated_norms():
    assert gini(torch.ones(10)) == pytest.approx(0.0, abs=1e-12)
    assert gini(torch.tensor([0.0, 0.0, 0.0, 5.0])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="non-negative"):
        gini(torch.tensor([-1.0, 2.0]))


def test_chance_share_of_random_frequency_sets():
    p = 13
    x = torch.arange(p, dtype=torch.float64)
    a, b = torch.meshgrid(x, x, indexing="ij")
    acts = torch.stack([torch.cos(2 * math.pi * 2 * (a + b) / p), torch.cos(2 * math.pi * 4 * a / p)], -1).float()
    mean, std = chance_share(acts, 1, samples=200, seed=1)
    # each of the two neurons lives in one frequency of 6: a random one explains half the variance 2 times in 6
    assert mean == pytest.approx(1 / 6, abs=0.06) and std > 0
    with pytest.raises(ValueError, match="n_frequencies"):
        chance_share(acts, 0)
