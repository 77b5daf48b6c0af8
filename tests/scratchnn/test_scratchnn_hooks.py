import threading

import pytest
import torch
from torch import Tensor

from scratchnn import HookedModule, HookPoint, Linear, StopForward


class Tiny(HookedModule):
    """x -> hook_in -> Linear -> hook_mid -> double -> hook_out."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_in = HookPoint()
        self.lin = Linear(3, 3)
        self.hook_mid = HookPoint()
        self.hook_out = HookPoint()
        self.setup_hooks()

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_out(2 * self.hook_mid(self.lin(self.hook_in(x))))


@pytest.fixture
def model() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def _nothing_listened(model: Tiny) -> bool:
    return not any(point.is_listened() for point in model.hook_points().values())


def test_names_are_module_paths_in_forward_order(model: Tiny) -> None:
    assert model.hook_names() == ["hook_in", "hook_mid", "hook_out"]
    assert model.hook_mid.name == "hook_mid" and model.hook_mid.layer() is None
    assert model.resolve(lambda n: n.endswith("out")) == ["hook_out"]
    assert model.resolve(["hook_out", "hook_in"]) == ["hook_in", "hook_out"]


def test_replacement_applies_only_inside_the_scope(model: Tiny) -> None:
    x = torch.randn(4, 3)
    clean = model(x)
    with model.hooks(fwd=[("hook_mid", lambda act, hook: torch.zeros_like(act))]):
        assert model.hook_mid.is_listened() and not model.hook_in.is_listened()
        torch.testing.assert_close(model(x), torch.zeros(4, 3))
    torch.testing.assert_close(model(x), clean)
    assert _nothing_listened(model)


def test_scope_is_cleaned_up_when_a_hook_raises(model: Tiny) -> None:
    x = torch.randn(4, 3)
    clean = model(x)

    def boom(act: Tensor, hook: HookPoint) -> None:
        raise RuntimeError(f"boom at {hook.name}")

    with pytest.raises(RuntimeError, match="boom at hook_mid"):
        with model.hooks(fwd=[("hook_mid", boom)]):
            model(x)
    assert _nothing_listened(model)
    torch.testing.assert_close(model(x), clean)


def test_nested_scopes_run_outer_then_inner_and_unwind(model: Tiny) -> None:
    x = torch.randn(4, 3)
    seen: list[str] = []
    add_one = lambda act, hook: (seen.append("outer"), act + 1)[1]  # noqa: E731
    times_ten = lambda act, hook: (seen.append("inner"), act * 10)[1]  # noqa: E731
    clean = model(x)
    with model.hooks(fwd=[("hook_out", add_one)]):
        with model.hooks(fwd=[("hook_out", times_ten)]):
            torch.testing.assert_close(model(x), (clean + 1) * 10)
        assert seen == ["outer", "inner"]
        torch.testing.assert_close(model(x), clean + 1)
    torch.testing.assert_close(model(x), clean)


def test_unknown_name_suggests_the_closest(model: Tiny) -> None:
    with pytest.raises(KeyError, match="did you mean hook_mid"):
        with model.hooks(fwd=[("hook_mdi", lambda act, hook: None)]):
            pass
    with pytest.raises(KeyError, match="hook_names"):
        model.resolve("completely_different")
    with pytest.raises(TypeError):  # from hooks(), or first from the jaxtyping checker under pytest
        with model.hooks(fwd=[("hook_mid", "not a function")]):
            pass
    assert _nothing_listened(model)


def test_wrong_shape_replacement_says_which_shape(model: Tiny) -> None:
    with pytest.raises(ValueError, match=r"hook_mid returned \(2,\).*\(4, 3\)"):
        with model.hooks(fwd=[("hook_mid", lambda act, hook: torch.zeros(2))]):
            model(torch.randn(4, 3))


def test_backward_hooks_see_and_replace_gradients(model: Tiny) -> None:
    x = torch.randn(4, 3)
    model(x).sum().backward()
    clean_grad = model.lin.weight.grad.clone()
    model.zero_grad()

    grads: dict[str, Tensor] = {}

    def record(grad: Tensor, hook: HookPoint) -> None:
        grads[hook.name] = grad.clone()

    with model.hooks(bwd=[("hook_mid", record), ("hook_out", lambda grad, hook: grad * 3)]):
        model(x).sum().backward()
    # d(sum)/d(out) = 1, tripled by the hook, then doubled by the "2 *" before hook_out
    torch.testing.assert_close(grads["hook_mid"], torch.full((4, 3), 6.0))
    torch.testing.assert_close(model.lin.weight.grad, 3 * clean_grad)


def test_backward_after_the_scope_ends_is_unaffected(model: Tiny) -> None:
    x = torch.randn(4, 3)
    called = []
    with model.hooks(bwd=[("hook_mid", lambda grad, hook: called.append(1) or grad * 0)]):
        out = model(x)
    out.sum().backward()
    assert called == [] and model.lin.weight.grad.abs().sum() > 0


def test_cache_and_stop_early(model: Tiny) -> None:
    x = torch.randn(4, 3)
    out, cache = model.cache_activations(lambda: model(x))
    assert set(cache) == {"hook_in", "hook_mid", "hook_out"}
    torch.testing.assert_close(cache["hook_out"], out)
    torch.testing.assert_close(cache["hook_out"], 2 * cache["hook_mid"])
    out, cache = model.cache_activations(lambda: model(x), names="hook_in", stop_after="hook_mid")
    assert out is None and set(cache) == {"hook_in"}
    with pytest.raises(StopForward):
        with model.hooks(fwd=[("hook_in", lambda act, hook: (_ for _ in ()).throw(StopForward()))]):
            model(x)
    assert _nothing_listened(model)


def test_other_threads_do_not_see_a_scope(model: Tiny) -> None:
    x = torch.randn(4, 3)
    clean = model(x)
    from_thread: list[Tensor] = []
    with model.hooks(fwd=[("hook_out", lambda act, hook: act * 0)]):
        worker = threading.Thread(target=lambda: from_thread.append(model(x)))
        worker.start()
        worker.join()
        torch.testing.assert_close(model(x), torch.zeros(4, 3))
    torch.testing.assert_close(from_thread[0], clean)
