"""A hook scope opened inside a generator: in force while the generator is suspended inside it (as torch.no_grad is), ended for good by closing it anywhere."""

from __future__ import annotations

import contextlib
import contextvars
import threading

import torch

from blocks import Transformer, TransformerConfig

TOKENS = torch.tensor([[1, 2, 3]])


def model_and_hook():
    model = Transformer(TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_vocab=5, n_ctx=4)).eval()
    calls: list[int] = []

    def zero(act, hook):
        calls.append(1)
        return torch.zeros_like(act)

    return model, zero, calls


def test_a_generator_s_scope_holds_until_the_generator_closes_as_a_yield_fixture_needs():
    model, zero, calls = model_and_hook()
    plain = model(TOKENS)

    def fixture():  # the shape of a pytest yield fixture: the hooks are meant for the test's body
        with model.hooks(fwd=[("hook_embed", zero)]):
            yield model

    gen = fixture()
    next(gen)
    assert not torch.equal(model(TOKENS), plain) and len(calls) == 1  # the caller, between yields: hooked
    assert model.hook_points()["hook_embed"].is_listened()
    gen.close()
    assert torch.equal(model(TOKENS), plain) and len(calls) == 1
    assert not model.hook_points()["hook_embed"].is_listened()


def test_closing_the_generator_from_another_context_or_thread_ends_its_hooks():
    model, zero, calls = model_and_hook()
    plain = model(TOKENS)

    def ablated():
        with model.hooks(fwd=[("hook_embed", zero)]):
            yield model(TOKENS)

    for close in (lambda g: contextvars.copy_context().run(g.close), lambda g: _in_thread(g.close)):
        gen = ablated()
        next(gen)
        close(gen)
        assert torch.equal(model(TOKENS), plain)
    assert len(calls) == 2  # once per generator, inside it; never after


def _in_thread(fn) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def test_a_context_manager_that_yields_inside_a_scope_still_applies_to_its_body():
    model, zero, calls = model_and_hook()
    plain = model(TOKENS)

    @contextlib.contextmanager
    def ablating():
        with model.hooks(fwd=[("hook_embed", zero)]):
            yield

    with ablating():
        assert not torch.equal(model(TOKENS), plain) and len(calls) == 1
        with model.hooks(fwd=[("blocks.0.hook_resid_pre", lambda a, h: None)]):  # nested scopes keep the outer
            model(TOKENS)
            assert len(calls) == 2
    assert torch.equal(model(TOKENS), plain)


def test_a_float32_replacement_is_accepted_under_autocast_and_float64_is_named_outside_it():
    model, _, _ = model_and_hook()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, cache = model.run_with_cache(TOKENS, names="blocks.0.attn.hook_z")
        z = cache["blocks.0.attn.hook_z"].float()
        with model.hooks(fwd=[("blocks.0.attn.hook_z", lambda act, hook: z)]):
            model(TOKENS)  # a cached float32 activation patched into the bfloat16 run

    def doubled(act, hook):
        return act.double()

    with model.hooks(fwd=[("blocks.0.attn.hook_z", doubled)]):
        try:
            model(TOKENS)
        except ValueError as err:
            assert "doubled" in str(err) and "torch.float64" in str(err)
        else:
            raise AssertionError("a float64 replacement for a float32 activation must be refused, naming the hook")
