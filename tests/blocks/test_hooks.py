"""Hook scopes on the transformer: nothing leaks, names are checked, threads stay apart, gradients, patching."""

import threading

import pytest
import torch
from transformer_helpers import make_model, tokens_for

from blocks import Transformer
from scratchnn import HookPoint
from scratchnn.hooks import _ACTIVE


def no_hooks_left(model: Transformer) -> bool:
    point = model.hook_points()["blocks.0.hook_resid_pre"]
    return (
        _ACTIVE.get() is None
        and not point.is_listened()
        and not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    )


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_no_hook_is_left_after_a_hook_raises(error: BaseException) -> None:
    model = make_model()
    tokens = tokens_for(model)
    clean = model(tokens)

    def explode(act: torch.Tensor, hook: HookPoint) -> None:
        raise error

    with pytest.raises(type(error)):
        with model.hooks(fwd=[("blocks.1.hook_resid_mid", explode)], bwd=[("hook_embed", explode)]):
            model(tokens)
    assert no_hooks_left(model)
    torch.testing.assert_close(model(tokens), clean, atol=0, rtol=0)
    # a hook that raises during run_with_cache leaves nothing behind either
    with pytest.raises(type(error)):
        with model.hooks(fwd=[("blocks.0.attn.hook_z", explode)]):
            model.run_with_cache(tokens)
    assert no_hooks_left(model)


def test_unknown_names_raise_suggesting_the_closest() -> None:
    model = make_model()
    with pytest.raises(KeyError, match=r"blocks\.0\.attn\.hook_pattern"):
        with model.hooks(fwd=[("blocks.0.attn.hook_patern", lambda a, h: None)]):
            pass
    with pytest.raises(KeyError, match=r"blocks\.1\.hook_resid_post"):
        model.run_with_cache(tokens_for(model), names=["blocks.1.hook_resid_posts"])
    with pytest.raises(TypeError):  # the runtime type check or our own message, both TypeError
        with model.hooks(fwd=[("hook_embed", "not a function")]):
            pass
    assert no_hooks_left(model)


def test_a_replacement_of_the_wrong_shape_is_refused() -> None:
    model = make_model()
    with pytest.raises(ValueError, match=r"hook_attn_out.*\(3, 7, 16\)"):
        with model.hooks(fwd=[("blocks.0.hook_attn_out", lambda a, h: a[:, :2])]):
            model(tokens_for(model))


def test_threads_caching_at_once_each_get_their_own_cache() -> None:
    model = make_model()
    inputs = [tokens_for(model, seed) for seed in range(6)]
    expected = [model.run_with_cache(t) for t in inputs]
    barrier = threading.Barrier(len(inputs))
    results: list = [None] * len(inputs)
    errors: list = []

    def slow(act: torch.Tensor, hook: HookPoint) -> None:
        barrier.wait(timeout=30)  # every thread is inside its own scope at once

    def work(i: int) -> None:
        try:
            with model.hooks(fwd=[("blocks.0.hook_resid_pre", slow)]):
                results[i] = model.run_with_cache(inputs[i])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (logits, cache), (want_logits, want_cache) in zip(results, expected):
        torch.testing.assert_close(logits, want_logits, atol=1e-6, rtol=1e-6)
        assert list(cache) == list(want_cache)
        for name in cache:
            torch.testing.assert_close(cache[name], want_cache[name], atol=1e-6, rtol=1e-6)
    assert no_hooks_left(model)


@pytest.mark.parametrize(
    "name", ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_q", "blocks.1.mlp.hook_post",
             "blocks.1.ln2.hook_scale", "blocks.0.attn.hook_result", "ln_final.hook_normalized"]
)  # fmt: skip
def test_backward_hooks_give_the_gradient_of_any_hook_point(name: str) -> None:
    model = make_model()
    tokens = tokens_for(model)
    seen: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: HookPoint) -> None:
        seen[hook.name] = act

    def grad(g: torch.Tensor, hook: HookPoint) -> None:
        grads[hook.name] = g

    with model.hooks(fwd=[(name, keep)], bwd=[(name, grad)]):
        loss = model(tokens).log_softmax(-1)[..., 0].sum()
        (want,) = torch.autograd.grad(loss, seen[name], retain_graph=True)
        loss.backward()
    torch.testing.assert_close(grads[name], want, atol=1e-6, rtol=1e-6)
    assert want.abs().sum() > 0
    assert no_hooks_left(model)


def test_a_backward_hook_can_change_the_gradient() -> None:
    model = make_model()
    with model.hooks(bwd=[("blocks.1.hook_resid_pre", lambda g, h: torch.zeros_like(g))]):
        model(tokens_for(model)).sum().backward()
    # everything before layer 1 gets its gradient only through blocks.1.hook_resid_pre
    assert model.embed.weight.grad.abs().sum() == 0
    assert model.blocks[1].mlp.linear_in.weight.grad.abs().sum() > 0


def test_stop_early_runs_only_the_blocks_it_needs() -> None:
    model = make_model()
    tokens = tokens_for(model)
    _, full = model.run_with_cache(tokens)
    reached = []
    with model.hooks(fwd=[("blocks.1.hook_resid_pre", lambda a, h: reached.append(h.name))]):
        logits, cache = model.run_with_cache(tokens, names=["blocks.0.hook_attn_out", "hook_embed"], stop_early=True)
    assert logits is None and reached == []
    assert set(cache) == {"blocks.0.hook_attn_out", "hook_embed"}
    torch.testing.assert_close(cache["blocks.0.hook_attn_out"], full["blocks.0.hook_attn_out"], atol=1e-5, rtol=1e-5)
    # something after the last block is wanted: the whole pass runs
    logits, cache = model.run_with_cache(tokens, names="ln_final.hook_scale", stop_early=True)
    assert logits is not None and set(cache) == {"ln_final.hook_scale"}


def test_patching_through_returned_tensors() -> None:
    model = make_model()
    clean, corrupt = tokens_for(model, 1), tokens_for(model, 2)
    clean_logits, clean_cache = model.run_with_cache(clean)
    # patching the whole residual stream before layer 1 makes the corrupted run the clean one
    patch = [("blocks.1.hook_resid_pre", lambda a, h: clean_cache["blocks.1.hook_resid_pre"])]
    with model.hooks(fwd=patch):
        patched = model(corrupt)
    torch.testing.assert_close(patched, clean_logits, atol=1e-6, rtol=1e-6)

    # zero-ablating head 1 of layer 0 removes exactly its result from attn_out
    def ablate(z: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        z = z.clone()
        z[:, :, 1] = 0
        return z

    with model.hooks(fwd=[("blocks.0.attn.hook_z", ablate)]):
        _, ablated = model.run_with_cache(clean, names="blocks.0.hook_attn_out")
    want = clean_cache["blocks.0.hook_attn_out"] - clean_cache["blocks.0.attn.hook_result"][:, :, 1]
    torch.testing.assert_close(ablated["blocks.0.hook_attn_out"], want, atol=1e-5, rtol=1e-5)


def test_filters_and_nested_scopes() -> None:
    model = make_model()
    tokens = tokens_for(model)
    assert model.resolve(lambda n: n.endswith("hook_pattern")) == [
        "blocks.0.attn.hook_pattern",
        "blocks.1.attn.hook_pattern",
    ]
    order = []
    with model.hooks(fwd=[(lambda n: n == "hook_embed", lambda a, h: order.append("outer"))]):
        with model.hooks(fwd=[("hook_embed", lambda a, h: order.append("inner"))]):
            model(tokens)
        model(tokens)
    assert order == ["outer", "inner", "outer"]
    assert no_hooks_left(model)


def test_cache_device_and_detach() -> None:
    model = make_model()
    _, cache = model.run_with_cache(tokens_for(model), names="blocks.0.hook_resid_post", device="cpu")
    act = cache["blocks.0.hook_resid_post"]
    assert act.device.type == "cpu" and not act.requires_grad
    with pytest.raises(KeyError, match="run_with_cache"):
        cache["blocks.1.hook_resid_post"]
