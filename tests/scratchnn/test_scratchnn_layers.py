import pytest
import torch
from torch import nn

from scratchnn import GELU, Embedding, Flatten, HookedModule, LayerNorm, NewGELU, ReLU


def test_layernorm_matches_torch_values_grads_and_state_dict(code_path: str) -> None:
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


def test_layernorm_without_weights_matches_torch_and_has_no_parameters(code_path: str) -> None:
    ours, ref = LayerNorm(16, elementwise_affine=False), nn.LayerNorm(16, elementwise_affine=False)
    assert ours.weight is None and ours.bias is None and not ours.state_dict()
    x = torch.randn(4, 5, 16) * 3 + 2
    torch.testing.assert_close(ours(x), ref(x))
    assert not torch.allclose(ours(x), LayerNorm(16, elementwise_affine=True)(x) * 2)


class OneLayerNorm(HookedModule):
    """A root for one LayerNorm, so that its hook points get names ("ln.hook_scale", ...)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln = LayerNorm(width)
        self.setup_hooks()


def test_layernorm_hooks_read_its_scale_and_output(code_path: str) -> None:
    root = OneLayerNorm(8)
    with torch.no_grad():
        root.ln.weight.uniform_(0.5, 1.5)
        root.ln.bias.normal_()
    x = torch.randn(3, 8) * 4
    plain = root.ln(x)  # nobody listens to the scale: the fast path where the backend is on
    seen: dict[str, torch.Tensor] = {}
    with root.hooks(fwd=[(lambda name: name.startswith("ln."), lambda act, hook: seen.update({hook.name: act}))]):
        out = root.ln(x)
    torch.testing.assert_close(seen["ln.hook_scale"], (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt())
    torch.testing.assert_close(seen["ln.hook_normalized"], out)
    torch.testing.assert_close(out, nn.functional.layer_norm(x, (8,), root.ln.weight, root.ln.bias))
    torch.testing.assert_close(plain, out)


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


def test_activations_match_torch(code_path: str) -> None:
    x = torch.linspace(-6, 6, 1001).requires_grad_()  # an odd count: 0 is among the points, where ReLU's slope is 0
    for ours, ref in ((GELU(), nn.GELU()), (NewGELU(), nn.GELU(approximate="tanh")), (ReLU(), nn.ReLU())):
        x_ref = x.detach().clone().requires_grad_()
        torch.testing.assert_close(ours(x), ref(x_ref))
        (grad,) = torch.autograd.grad(ours(x).sum(), x)
        (grad_ref,) = torch.autograd.grad(ref(x_ref).sum(), x_ref)
        torch.testing.assert_close(grad, grad_ref)
    images = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(Flatten()(images), nn.Flatten()(images))
