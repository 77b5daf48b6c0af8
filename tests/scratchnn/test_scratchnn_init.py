import math

import torch

from scratchnn import Linear, init


def test_linear_default_init_bounds_and_variance() -> None:
    torch.manual_seed(0)
    n_in, n_out = 4096, 1024
    layer = Linear(n_in, n_out)
    bound = 1 / math.sqrt(n_in)
    w = layer.weight.detach()
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.999 * bound  # the whole interval is used, not a narrower one
    assert abs(w.mean()) < 0.01 * bound
    # U(-b, b) has variance b^2 / 3 = 1 / (3 n_in)
    assert abs(w.var().item() / (1 / (3 * n_in)) - 1) < 0.02
    assert layer.bias.abs().max() <= bound


def test_xavier_bound_and_variance() -> None:
    torch.manual_seed(0)
    n_in, n_out = 3000, 1000
    w = init.xavier_uniform_(torch.empty(n_out, n_in))
    bound = math.sqrt(6 / (n_in + n_out))
    assert bound * 0.999 < w.abs().max() <= bound
    assert abs(w.var().item() / (2 / (n_in + n_out)) - 1) < 0.02
    assert abs(init.xavier_uniform_(torch.empty(n_out, n_in), gain=2.0).abs().max() / (2 * bound) - 1) < 0.01


def test_kaiming_uses_fan_in_of_out_in_weights() -> None:
    w = init.kaiming_uniform_(torch.empty(10, 400))  # fan_in is the second dimension
    assert w.abs().max() <= 1 / math.sqrt(400)
    assert w.abs().max() > 0.9 / math.sqrt(400)


def _variance_through_depth(bound: float | None, depth: int = 40, width: int = 256) -> list[float]:
    """Activation variance after each of `depth` bias-free linear layers (Xavier when bound is None)."""
    torch.manual_seed(0)
    x = torch.randn(2000, width)
    variances = []
    with torch.no_grad():
        for _ in range(depth):
            layer = Linear(width, width, bias=False)
            if bound is None:
                init.xavier_uniform_(layer.weight)
            else:
                layer.weight.uniform_(-bound, bound)
            x = layer(x)
            variances.append(x.var().item())
    return variances


def test_xavier_keeps_variance_through_depth_while_bad_scales_explode_or_vanish() -> None:
    xavier = _variance_through_depth(None)
    assert all(0.5 < v < 2.0 for v in xavier), xavier
    # U(-1, 1): Var(w) = 1/3, each layer multiplies the variance by 256/3 ~ 85
    exploding = _variance_through_depth(1.0)
    assert exploding[9] > 1e15 and exploding[-1] > 1e30 or not math.isfinite(exploding[-1])
    # U(-0.01, 0.01): each layer multiplies it by 256 * 1e-4 / 3 ~ 0.0085
    vanishing = _variance_through_depth(0.01)
    assert vanishing[9] < 1e-15 and vanishing[-1] < 1e-30


def test_fans_need_a_matrix() -> None:
    try:
        init.xavier_uniform_(torch.empty(5))
    except ValueError as err:
        assert "at least 2 dimensions" in str(err) and "(5,)" in str(err)
    else:
        raise AssertionError("xavier_uniform_ on a vector should raise")
