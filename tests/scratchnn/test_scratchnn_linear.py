import pytest
import torch
from torch import nn

from scratchnn import Linear


def _twins(bias: bool) -> tuple[Linear, nn.Linear]:
    torch.manual_seed(0)
    ours, ref = Linear(20, 7, bias=bias), nn.Linear(20, 7, bias=bias)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_gradients_match_nn_linear(bias: bool, code_path: str) -> None:
    ours, ref = _twins(bias)
    x = torch.randn(5, 3, 20)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours), ref(x_ref)
    torch.testing.assert_close(y_ours, y_ref)
    upstream = torch.randn_like(y_ref)
    (y_ours * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad)
    if bias:
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    else:
        assert ours.bias is None and "bias" not in ours.state_dict()


def test_state_dicts_load_both_ways() -> None:
    ours, ref = Linear(20, 7), nn.Linear(20, 7)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        "weight": torch.Size([7, 20]),  # [out_features, in_features], as nn.Linear
        "bias": torch.Size([7]),
    }
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours.weight, ref.weight)
    fresh = nn.Linear(20, 7)
    fresh.load_state_dict(ours.state_dict())
    x = torch.randn(4, 20)
    torch.testing.assert_close(fresh(x), ours(x))


def test_print() -> None:
    assert str(Linear(784, 128)) == "Linear(in_features=784, out_features=128, bias=True)"
    assert str(Linear(784, 128, bias=False)) == "Linear(in_features=784, out_features=128, bias=False)"
    assert str(Linear(784, 128)) == str(nn.Linear(784, 128))


def test_bad_input_says_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"in_features=20.*\(4, 19\)"):
        Linear(20, 7)(torch.randn(4, 19))
    with pytest.raises(ValueError, match="positive sizes"):
        Linear(0, 7)
