"""Linear probes: splits by example, no global RNG side effects, and the induction feature the default run reads."""

import subprocess
import sys

import pytest
import torch

from probes.probing import control_labels, fit_probe, random_model_like


def test_probing_leaves_the_global_random_stream_alone(mlp_model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    fit_probe(x, y, seed=7)
    first = random_model_like(mlp_model, seed=3)
    assert torch.equal(torch.get_rng_state(), before)  # a library call must not reseed the caller's stream
    second = random_model_like(mlp_model, seed=3)
    assert torch.equal(first.W_E, second.W_E)  # still reproducible from its own seed
    assert not torch.equal(first.W_E, random_model_like(mlp_model, seed=4).W_E)


def test_a_group_split_scores_on_held_out_examples_only():
    # each sequence (group) has one random label and a signature its rows share: a row split lets
    # the probe memorise the signature -> label map; a group split must not (chance on new sequences)
    g = torch.Generator().manual_seed(0)
    n_groups, per_group = 40, 10
    signature = torch.randn(n_groups, 64, generator=g)
    group_label = torch.randint(0, 2, (n_groups,), generator=g)
    groups = torch.arange(n_groups).repeat_interleave(per_group)
    x = signature[groups] + 0.1 * torch.randn(n_groups * per_group, 64, generator=g)
    y = group_label[groups]
    by_row = fit_probe(x, y, l2=1e-4)
    by_group = fit_probe(x, y, l2=1e-4, groups=groups)
    assert by_row.test_accuracy > 0.95
    assert by_group.test_accuracy < 0.8  # 10 unseen sequences: what is left is luck
    with pytest.raises(ValueError, match="one group id per feature row"):
        fit_probe(x, y, groups=groups[:-1])
    with pytest.raises(ValueError, match="n_classes"):
        fit_probe(x, y + 1, n_classes=2)


def test_control_labels_keep_the_task_classes_and_their_proportions():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 400, (200, 20), generator=g)
    labels = (torch.rand(200, 20, generator=g) < 0.25).long() + (torch.rand(200, 20, generator=g) < 0.1).long()
    control = control_labels(tokens, labels, seed=2)
    assert set(control.unique().tolist()) == set(labels.unique().tolist())
    share = control.flatten().bincount().float() / control.numel()
    torch.testing.assert_close(share, labels.flatten().bincount().float() / labels.numel(), atol=0.06, rtol=0)


def test_the_information_flow_package_imports_in_any_order():
    """The app may import the figure module first: that must not trip over a circular import."""
    code = (
        "import probes.information_flow.figure, probes.information_flow as f; "
        "print(f.flow_figure.__module__, f.information_flow.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["probes.information_flow.figure", "probes.information_flow.routes"]
