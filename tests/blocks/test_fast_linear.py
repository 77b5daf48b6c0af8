"""The fast backend's linear map computes what scratchnn.Linear's own code computes: values, gradients, second
gradients, forward-mode tangents, and where oneDNN is and is not used."""

import platform

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

from blocks.fast import linear as fast_linear
from blocks.fast.linear import MIN_MACS_WITH_GRAD, linear, onednn_available

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear")
BIG_ROWS = MIN_MACS_WITH_GRAD // (24 * 16) + 1  # with [24, 16] weights: just above the gradient threshold


def inputs(rows: int = 15, requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [rows, 16], weight [24, 16] (Linear's [out, in]) and bias [24]."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 16, generator=g, requires_grad=requires_grad)
    w = torch.randn(24, 16, generator=g, requires_grad=requires_grad)
    b = torch.randn(24, generator=g, requires_grad=requires_grad)
    return x, w, b


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return x @ w.T + (0 if b is None else b)  # scratchnn.Linear's own line


def count_onednn(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every oneDNN call from now on."""
    calls: list[int] = []
    real = fast_linear._onednn
    monkeypatch.setattr(fast_linear, "_onednn", lambda x, *rest: calls.append(x.shape[0]) or real(x, *rest))
    return calls


def test_the_oneDNN_path_is_the_one_taken_here() -> None:
    """On this project's machines (x86-64, torch's CPU build) the fast path is oneDNN's, not a silent addmm."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert onednn_available()


@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_the_reference(bias: bool) -> None:
    x, w, b = inputs()
    b = b if bias else None
    with torch.no_grad():
        torch.testing.assert_close(linear(x[None], w, b), reference(x, w, b)[None], atol=1e-5, rtol=1e-5)


@needs_onednn
def test_oneDNN_runs_for_contiguous_float32_cpu_tensors_and_addmm_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_onednn(monkeypatch)
    x, w, b = inputs()
    wide, pairs = torch.randn(48, 16), torch.randn(24, 2)
    with torch.no_grad():
        linear(x, w, b)
        assert calls == [15]
        cases = {
            "float64": (x.double(), w.double(), b.double()),
            "strided weight": (x, wide[::2], b),
            "strided bias": (x, w, pairs[:, 0]),  # oneDNN would read it as if it were contiguous
            "strided input": (torch.randn(15, 32)[:, ::2], w, b),
        }
        for what, (xx, ww, bb) in cases.items():
            torch.testing.assert_close(linear(xx, ww, bb), reference(xx, ww, bb), msg=what)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert linear(x, w, b).dtype == torch.bfloat16  # autocast's precision, through addmm
    assert calls == [15]


@needs_onednn
def test_with_gradients_small_matmuls_take_addmm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below MIN_MACS_WITH_GRAD the autograd Function around oneDNN costs more than it saves (bench_backend.py --linear)."""
    calls = count_onednn(monkeypatch)
    for rows in (BIG_ROWS - 2, BIG_ROWS):
        x, w, b = inputs(rows, requires_grad=True)
        linear(x, w, b)
    assert calls == [BIG_ROWS]


@pytest.mark.parametrize("rows", [15, BIG_ROWS], ids=["addmm", "oneDNN"])
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_the_reference(rows: int, bias: bool) -> None:
    grads = []
    for fn in (linear, reference):
        x, w, b = inputs(rows, requires_grad=True)
        out = fn(x, w, b if bias else None)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([x.grad, w.grad] + ([b.grad] if bias else []))
    for fast, plain in zip(*grads):
        torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("rows", [15, BIG_ROWS], ids=["addmm", "oneDNN"])
def test_second_derivatives_match_the_reference(rows: int) -> None:
    results = []
    for fn in (linear, reference):
        x, w, b = inputs(rows, requires_grad=True)
        out = F.gelu(fn(x, w, b))
        (grad_x,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        (grad_w,) = torch.autograd.grad(grad_x.pow(2).sum(), w)
        results.append(grad_w)
    torch.testing.assert_close(results[0], results[1], atol=1e-3, rtol=1e-4)


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
        out = linear(forward_ad.make_dual(x, tangent), w, b)
        got = forward_ad.unpack_dual(out).tangent
    assert got is not None
    torch.testing.assert_close(got, tangent @ w.detach().T, atol=1e-5, rtol=1e-5)


def test_vmap_over_weights_matches_a_loop() -> None:
    x, w, b = inputs()
    weights = torch.stack([w, 2 * w, -w])
    with torch.no_grad():
        got = torch.func.vmap(lambda weight: linear(x, weight, b))(weights)
        want = torch.stack([reference(x, weight, b) for weight in weights])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
