import pytest
import torch
from torch import nn

from scratchnn import MLP, Linear, MNISTClassifier, ReLU, SimpleMLP

SIMPLE_MLP_PRINT = """SimpleMLP(
  (net): Sequential(
    (0): Linear(in_features=784, out_features=128, bias=True)
    (1): ReLU()
    (2): Linear(in_features=128, out_features=128, bias=True)
    (3): ReLU()
    (4): Linear(in_features=128, out_features=10, bias=True)
  )
)"""


def test_simple_mlp_print_and_parameter_count() -> None:
    model = SimpleMLP(784, 128, 10)
    assert str(model) == SIMPLE_MLP_PRINT
    # 784*128 + 128  +  128*128 + 128  +  128*10 + 10
    assert sum(p.numel() for p in model.parameters()) == 118_282
    assert len(list(model.parameters())) == 6


def test_mnist_classifier_shape_and_count() -> None:
    model = MNISTClassifier()
    assert sum(p.numel() for p in model.parameters()) == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    for shape in [(3, 28, 28), (3, 1, 28, 28), (3, 784)]:
        assert model(torch.randn(*shape)).shape == (3, 10)


def test_to_float64_moves_every_parameter() -> None:
    model = SimpleMLP(8, 4, 2).to(torch.float64)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert len(dtypes) == 6 and set(dtypes.values()) == {torch.float64}
    assert model(torch.randn(3, 8, dtype=torch.float64)).dtype == torch.float64


class WrongLinear(nn.Module):
    """The chapter's WRONG example: a plain tensor attribute instead of an nn.Parameter."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = torch.randn(out_features, in_features)  # not registered


def test_plain_tensor_attribute_is_not_a_parameter() -> None:
    wrong = WrongLinear(4, 3)
    assert list(wrong.parameters()) == []
    assert "weight" not in wrong.state_dict()
    assert wrong.to(torch.float64).weight.dtype == torch.float32  # .to() never saw it
    right = Linear(4, 3)
    assert [name for name, _ in right.named_parameters()] == ["weight", "bias"]


def test_parameters_are_found_through_nesting() -> None:
    # Composite pattern: a container's parameters are its children's, recursively
    model = nn.Sequential(Linear(4, 5), ReLU(), nn.Sequential(Linear(5, 6), Linear(6, 2)))
    assert [n for n, _ in model.named_parameters()] == [
        "0.weight",
        "0.bias",
        "2.0.weight",
        "2.0.bias",
        "2.1.weight",
        "2.1.bias",
    ]


def test_wrong_input_shapes_say_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"\[batch, 28, 28\].*\(3, 32, 32\)"):
        MNISTClassifier()(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"\[batch, 784\].*\(3, 100\)"):
        SimpleMLP(784, 128, 10)(torch.randn(3, 100))


@pytest.mark.parametrize("act_fn, twin", [("relu", nn.ReLU), ("gelu", nn.GELU)])
def test_transformer_mlp_matches_torch_and_shows_neurons_as_views(act_fn: str, twin: type, code_path: str) -> None:
    torch.manual_seed(0)
    ours = MLP(8, 12, act_fn, init_std=0.5)
    ref = nn.Sequential(nn.Linear(8, 12), twin(), nn.Linear(12, 8))
    ref[0].load_state_dict(ours.linear_in.state_dict())
    ref[2].load_state_dict(ours.linear_out.state_dict())
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    assert ours.W_in.shape == (8, 12) and ours.W_out.shape == (12, 8)
    neurons = ref[1](x @ ours.W_in + ours.b_in)  # column n of W_in is neuron n's input direction
    torch.testing.assert_close(neurons @ ours.W_out + ours.b_out, ours(x), atol=1e-5, rtol=1e-5)
    assert ours.linear_in.weight.std().item() == pytest.approx(0.5, rel=0.3)
    assert ours.linear_in.bias.abs().sum() == 0
    with pytest.raises((ValueError, TypeError), match="swish"):  # TypeError: the test-time type checker comes first
        MLP(8, 12, "swish")  # type: ignore[arg-type]
