"""The toy model of superposition: features squeezed below their count, and SAEs that find them again."""

import pytest
import torch

from blocks.tasks.superposition import SuperpositionTask, ToyModel, max_cosine
from probes.sae.activations import shuffled_batches, tensor_chunks
from probes.sae.evaluate import evaluate_activations
from probes.sae.sae import SAEConfig, SparseAutoencoder
from probes.sae.train import SAETrainConfig, train_sae


@pytest.fixture(scope="module")
def toy():
    task = SuperpositionTask()
    return task, task.train(steps=1000, batch_size=256)


def test_toy_model_keeps_every_feature_in_fewer_dimensions(toy):
    """All 40 features survive in 10 dimensions (superposition), and reading them back beats dropping them."""
    task, model = toy
    assert task.represented(model).all()
    x = task.features(4000, seed=5)
    with torch.no_grad():
        trained = float(task.loss(model, x))
        nothing = float((task.importance * x.pow(2)).sum(-1).mean())
    assert trained < 0.5 * nothing


def test_hook_hidden_sees_x_times_W(toy):
    task, model = toy
    x = task.features(8, seed=3)
    _, cache = model.cache_activations(lambda: model(x), "hook_hidden")
    torch.testing.assert_close(cache["hook_hidden"], x @ model.W.detach())


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="d_hidden < n_features"):
        SuperpositionTask(n_features=5, d_hidden=5)
    with pytest.raises(ValueError, match="feature_probability"):
        SuperpositionTask(feature_probability=0.0)


def test_max_cosine_of_a_permuted_copy_is_one():
    d = torch.randn(6, 4)
    torch.testing.assert_close(max_cosine(d, 3 * d[torch.tensor([2, 0, 5, 1, 4, 3])]), torch.ones(6))
    assert float(max_cosine(torch.eye(4)[:2], torch.eye(4)[2:]).max()) == 0.0


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "relu"])
def test_sae_recovers_the_true_features(toy, kind):
    """Mean max cosine similarity between the true directions and the decoder rows is at least 0.9."""
    task, model = toy
    hidden = task.hidden(model, 60_000)
    sae = SparseAutoencoder(SAEConfig(d_in=task.d_hidden, width=2 * task.n_features, kind=kind, k=2))
    result = train_sae(sae, shuffled_batches(tensor_chunks(hidden), 1024, 16384), SAETrainConfig(steps=1500))
    assert result.diverged is None
    score = float(max_cosine(task.true_directions(model), sae.W_dec.detach()).mean())
    assert score >= 0.9, f"{kind}: mean max cosine {score:.3f}"
    stats = evaluate_activations(sae, hidden[:5000])
    assert stats.explained_variance > 0.5


def test_toy_model_is_a_hooked_module():
    assert ToyModel(5, 2).hook_names() == ["hook_hidden"]
