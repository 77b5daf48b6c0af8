"""The oneDNN linear path computes what addmm computes: forward, gradients, second gradients, and in the model."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

from blocks import linear_ops
from blocks.linear_ops import affine, fused_kernels, onednn_available

from transformer_helpers import make_model, tokens_for

REPO = Path(__file__).resolve().parents[2]
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear")


def inputs(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=g, requires_grad=requires_grad)
    w = torch.randn(16, 24, generator=g, requires_grad=requires_grad)
    b = torch.randn(24, generator=g, requires_grad=requires_grad)
    return x, w, b


@needs_onednn
@pytest.mark.parametrize("act", [None, "relu", "gelu"])
def test_fused_forward_matches_addmm_and_the_activation(act: str | None) -> None:
    x, w, b = inputs()
    want = x @ w + b
    want = want if act is None else {"relu": F.relu, "gelu": F.gelu}[act](want)
    with torch.no_grad():
        got = affine(x, w, b, act=act)
        with fused_kernels(False):
            reference = affine(x, w, b, act=act)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reference, want, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_the_oneDNN_kernel_is_the_one_called_without_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = linear_ops._onednn
    monkeypatch.setattr(linear_ops, "_onednn", lambda *a: calls.append(a[3]) or real(*a))
    x, w, b = inputs()
    with torch.no_grad():
        affine(x, w, b, act="gelu")
        with fused_kernels(False):
            affine(x, w, b, act="gelu")
        affine(x.double(), w.double(), b.double())  # float64 is addmm's
        wide = torch.randn(16, 48)
        torch.testing.assert_close(affine(x, wide[:, :24], b), x @ wide[:, :24] + b)  # a slice is addmm's
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert affine(x, w, b).dtype == torch.bfloat16  # autocast's precision, through addmm
    assert calls == ["gelu"]


@needs_onednn
@pytest.mark.parametrize("act", [None, "gelu"])
def test_fused_gradients_match_addmm(act: str | None) -> None:
    grads = []
    for enabled in (True, False):
        x, w, b = inputs(requires_grad=True)
        with fused_kernels(enabled):
            out = affine(x, w, b, act=act)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([x.grad, w.grad, b.grad])
    for fused, plain in zip(*grads):
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_second_derivatives_flow_through_the_fused_path() -> None:
    results = []
    for enabled in (True, False):
        x, w, b = inputs(requires_grad=True)
        with fused_kernels(enabled):
            out = affine(x, w, b, act="gelu")
        (grad_x,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        (grad_w,) = torch.autograd.grad(grad_x.pow(2).sum(), w)
        results.append(grad_w)
    torch.testing.assert_close(results[0], results[1], atol=1e-4, rtol=1e-4)


@needs_onednn
@pytest.mark.parametrize("rows, d_in, d_out", [(4096, 16, 40), (4097, 16, 40), (4096, 40, 16), (100, 16, 40)])
def test_weight_gradient_split_over_threads_is_x_transpose_grad(torch_threads, rows: int, d_in: int, d_out: int) -> None:
    torch_threads(2)  # the weight gradient is split only on 2 threads
    # even and odd row counts take the split; a tall weight and a short batch take one matmul
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_in, generator=g, requires_grad=True)
    w = torch.randn(d_in, d_out, generator=g, requires_grad=True)
    b = torch.randn(d_out, generator=g, requires_grad=True)
    upstream = torch.randn(rows, d_out, generator=g)
    (affine(x, w, b) * upstream).sum().backward()
    want = x.detach().double().t() @ upstream.double()
    torch.testing.assert_close(w.grad.double(), want, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(b.grad, upstream.sum(0), atol=1e-3, rtol=1e-5)
    # under create_graph the split is differentiable: d/dx of |grad_w|^2 matches the plain path
    second = []
    for enabled in (True, False):
        with fused_kernels(enabled):
            (grad_w,) = torch.autograd.grad((affine(x, w, b) * upstream).sum(), w, create_graph=True)
            (grad_x,) = torch.autograd.grad(grad_w.pow(2).sum(), x)
        second.append(grad_x)
    torch.testing.assert_close(second[0], second[1], atol=1e-2, rtol=1e-4)


def test_probing_for_onednn_leaves_the_random_stream_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linear_ops, "_AVAILABLE", None)
    torch.manual_seed(3)
    onednn_available()
    after_probe = torch.rand(3)
    torch.manual_seed(3)
    torch.testing.assert_close(after_probe, torch.rand(3))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's forward_ad, on first use
@pytest.mark.parametrize("grad", [False, True])
def test_forward_mode_tangents_survive(grad: bool) -> None:
    x, w, b = inputs()
    tangent = torch.linspace(-1, 1, x.numel()).view_as(x)
    w.requires_grad_(grad)
    with torch.set_grad_enabled(grad), forward_ad.dual_level():
        out = affine(forward_ad.make_dual(x, tangent), w, b, act="gelu")
        got = forward_ad.unpack_dual(out).tangent
    pre = x @ w.detach() + b
    want = torch.ops.aten.gelu_backward(tangent @ w.detach(), pre)  # GELU's slope at pre, times the moved input
    assert got is not None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fused_kernels_switch_is_scoped_to_the_block() -> None:
    assert linear_ops._ENABLED.get() is True
    with pytest.raises(RuntimeError):
        with fused_kernels(False):
            assert linear_ops._ENABLED.get() is False
            raise RuntimeError("inside")
    assert linear_ops._ENABLED.get() is True


@pytest.mark.parametrize("act_fn", ["relu", "gelu"])
def test_model_logits_and_training_gradients_are_the_same_on_both_paths(act_fn: str) -> None:
    model = make_model(act_fn=act_fn)
    tokens = tokens_for(model)
    results = []
    for enabled in (True, False):
        model.zero_grad(set_to_none=True)
        with fused_kernels(enabled):
            with torch.no_grad():
                plain = model(tokens)
            logits = model(tokens)
            F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        results.append((plain, logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain_a, logits_a, grads_a), (plain_b, logits_b, grads_b) = results
    torch.testing.assert_close(plain_a, plain_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_a, logits_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain_a, logits_a, atol=1e-5, rtol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_mlp_neurons_agree_whether_or_not_the_pre_activation_is_read() -> None:
    model = make_model(act_fn="gelu")
    tokens = tokens_for(model)
    with torch.no_grad():
        plain = model(tokens)
        _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith(("hook_pre", "hook_post")))
        _, post_only = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_post"))
    for layer in range(model.cfg.n_layers):
        pre, post = cache[f"blocks.{layer}.mlp.hook_pre"], cache[f"blocks.{layer}.mlp.hook_post"]
        torch.testing.assert_close(post, F.gelu(pre))
        torch.testing.assert_close(post_only[f"blocks.{layer}.mlp.hook_post"], post, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.run_with_cache(tokens)[0], plain, atol=1e-5, rtol=1e-5)


def test_torch_compile_of_the_model_runs_and_agrees() -> None:
    # in a fresh python: the tests' runtime shape checks cannot follow dynamo's fake tensors
    code = (
        "import torch; from blocks import Transformer, TransformerConfig\n"
        "torch.manual_seed(0)\n"
        "m = Transformer(TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=24, d_vocab=13, n_ctx=10)).eval()\n"
        "t = torch.randint(0, 13, (3, 7))\n"
        "with torch.no_grad():\n"
        "    print((torch.compile(m)(t) - m(t)).abs().max().item())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5


def test_vmap_over_weights_matches_a_loop() -> None:
    x, w, b = inputs()
    weights = torch.stack([w, 2 * w, -w])
    with torch.no_grad():
        got = torch.func.vmap(lambda weight: affine(x, weight, b, act="gelu"))(weights)
        want = torch.stack([F.gelu(x @ weight + b) for weight in weights])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
