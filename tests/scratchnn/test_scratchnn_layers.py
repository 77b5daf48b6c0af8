import pytest
import torch
from torch import nn

from scratchnn import GELU, Embedding, Flatten, LayerNorm, ReLU


def test_layernorm_matches_torch_values_grads_and_state_dict() -> None:
    torch.manual_seed(0)
    ours, ref = LayerNorm(16), nn.LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    x = (torch.randn(4, 5, 16) * 3 + 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    torch.testing.assert_close(ours(x), ref(x_ref))
    ours(x).pow(2).sum().backward()
    ref(x_ref).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    nn.LayerNorm(16).load_state_dict(ours.state_dict())  # and back


def test_layernorm_bad_width() -> None:
    with pytest.raises(ValueError, match=r"last dimension of 16.*\(2, 8\)"):
        LayerNorm(16)(torch.randn(2, 8))


def test_embedding_matches_torch() -> None:
    ours, ref = Embedding(11, 6), nn.Embedding(11, 6)
    ref.load_state_dict(ours.state_dict())
    ids = torch.tensor([[0, 3, 10], [5, 5, 1]])
    torch.testing.assert_close(ours(ids), ref(ids))
    ours(ids).sum().backward()
    ref(ids).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    assert ours.weight.grad[5].sum().item() == pytest.approx(2 * 6)  # id 5 used twice


def test_embedding_bad_ids() -> None:
    with pytest.raises(IndexError, match=r"\[0, 11\).*11"):
        Embedding(11, 6)(torch.tensor([0, 11]))
    # float ids: a TypeError (from the module, or first from the jaxtyping checker under pytest)
    with pytest.raises(TypeError):
        Embedding(11, 6)(torch.zeros(2))


def test_activations_match_torch() -> None:
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(GELU()(x), nn.GELU()(x))
    torch.testing.assert_close(ReLU()(x), nn.ReLU()(x))
    images = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(Flatten()(images), nn.Flatten()(images))
