"""The fast backend's linear maps compute what scratchnn.Linear's own code computes: values, gradients, second
gradients, forward-mode tangents, and where oneDNN is and is not used."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

from blocks.fast import linear as fast_linear
from blocks.fast.linear import linear, linear_activation, onednn_available

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear")


def inputs(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [3, 5, 16], weight [24, 16] (Linear's [out, in]) and bias [24]."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=g, requires_grad=requires_grad)
    w = torch.randn(24, 16, generator=g, requires_grad=requires_grad)
    b = torch.randn(24, generator=g, requires_grad=requires_grad)
    return x, w, b


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str | None = None) -> torch.Tensor:
    out = x @ w.T + (0 if b is None else b)  # scratchnn.Linear's own line
    return out if act is None else {"relu": F.relu, "gelu": F.gelu}[act](out)


def test_the_oneDNN_path_is_the_one_taken_here() -> None:
    """On this project's machines (x86-64, torch's CPU build) the fast path is oneDNN's, not a silent addmm."""
    import platform

    if platform.machine().lower() in ("x86_64", "amd64"):
        assert onednn_available()


@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_the_reference(bias: bool) -> None:
    x, w, b = inputs()
    b = b if bias else None
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b), reference(x, w, b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("grad", [False, True])
def test_linear_activation_matches_the_reference(act: str, grad: bool) -> None:
    x, w, b = inputs(requires_grad=grad)
    with torch.set_grad_enabled(grad):
        got = linear_activation(x, w, b, act)
    torch.testing.assert_close(got, reference(x, w, b, act), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_oneDNN_runs_for_float32_cpu_and_addmm_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = fast_linear._onednn
    monkeypatch.setattr(fast_linear, "_onednn", lambda *a: calls.append(tuple(a[1].shape)) or real(*a))
    x, w, b = inputs()
    with torch.no_grad():
        linear(x, w, b)
        assert calls == [(24, 16)]
        torch.testing.assert_close(
            linear(x.double(), w.double(), b.double()), reference(x.double(), w.double(), b.double())
        )
        wide = torch.randn(48, 16)
        torch.testing.assert_close(linear(x, wide[::2], b), reference(x, wide[::2], b))  # a strided weight: addmm
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert linear(x, w, b).dtype == torch.bfloat16  # autocast's precision, through addmm
    assert calls == [(24, 16)]


@needs_onednn
def test_the_activation_runs_inside_oneDNN_only_without_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    acts = []
    real = fast_linear._onednn
    monkeypatch.setattr(fast_linear, "_onednn", lambda *a: acts.append(a[3] if len(a) > 3 else "none") or real(*a))
    x, w, b = inputs()
    with torch.no_grad():
        linear_activation(x, w, b, "gelu")
    assert acts == ["gelu"]
    linear_activation(x, w.requires_grad_(), b, "gelu")  # small, with gradients: addmm (see the next test)
    assert acts == ["gelu"]
    big = torch.randn(fast_linear.MIN_MACS_WITH_GRAD // (24 * 16) + 1, 16)
    linear_activation(
        big, w, b, "gelu"
    )  # large: oneDNN's plain linear, the activation after it (its backward needs its input)
    assert acts == ["gelu", "none"]


def test_with_gradients_small_matmuls_take_addmm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below MIN_MACS_WITH_GRAD the autograd Function around oneDNN costs more than it saves (bench_backend.py --linear)."""
    calls = []
    real = fast_linear._onednn
    monkeypatch.setattr(fast_linear, "_onednn", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    w = torch.randn(24, 16, requires_grad=True)
    rows = fast_linear.MIN_MACS_WITH_GRAD // (24 * 16)
    for n in (rows - 1, rows + 1):
        x = torch.randn(n, 16, requires_grad=True)
        torch.testing.assert_close(linear(x, w, None), reference(x, w, None), atol=1e-4, rtol=1e-5)
    assert calls == [rows + 1]


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_the_reference(bias: bool) -> None:
    grads = []
    for fn in (linear, reference):
        x, w, b = inputs(requires_grad=True)
        out = fn(x, w, b if bias else None)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([x.grad, w.grad] + ([b.grad] if bias else []))
    for fast, plain in zip(*grads):
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


def test_second_derivatives_match_the_reference() -> None:
    results = []
    for fn in (linear, reference):
        x, w, b = inputs(requires_grad=True)
        out = F.gelu(fn(x, w, b))
        (grad_x,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        (grad_w,) = torch.autograd.grad(grad_x.pow(2).sum(), w)
        results.append(grad_w)
    torch.testing.assert_close(results[0], results[1], atol=1e-4, rtol=1e-4)


def test_probing_for_onednn_leaves_the_random_stream_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_linear, "_AVAILABLE", None)
    torch.manual_seed(3)
    onednn_available()
    after_probe = torch.rand(3)
    torch.manual_seed(3)
    torch.testing.assert_close(after_probe, torch.rand(3))


@pytest.mark.parametrize("grad", [False, True])
def test_forward_mode_tangents_survive(grad: bool) -> None:
    x, w, b = inputs()
    tangent = torch.linspace(-1, 1, x.numel()).view_as(x)
    w.requires_grad_(grad)
    with torch.set_grad_enabled(grad), forward_ad.dual_level():
        out = linear_activation(forward_ad.make_dual(x, tangent), w, b, "gelu")
        got = forward_ad.unpack_dual(out).tangent
    pre = x @ w.detach().T + b
    want = torch.ops.aten.gelu_backward(tangent @ w.detach().T, pre)  # GELU's slope at pre, times the moved input
    assert got is not None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_vmap_over_weights_matches_a_loop() -> None:
    x, w, b = inputs()
    weights = torch.stack([w, 2 * w, -w])
    with torch.no_grad():
        got = torch.func.vmap(lambda weight: linear_activation(x, weight, b, "gelu"))(weights)
        want = torch.stack([reference(x, weight, b, "gelu") for weight in weights])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
