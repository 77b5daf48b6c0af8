"""A hook scope opened inside a generator holds only while the generator runs, and closing it anywhere ends it."""

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


def test_a_suspended_generator_s_hooks_do_not_reach_its_caller():
    model, zero, calls = model_and_hook()
    plain = model(TOKENS)

    def ablated_twice():
        with model.hooks(fwd=[("hook_embed", zero)]):
            yield model(TOKENS)
            yield model(TOKENS)

    gen = ablated_twice()
    inside = next(gen)
    assert len(calls) == 1 and not torch.equal(inside, plain)
    assert torch.equal(model(TOKENS), plain) and len(calls) == 1  # the caller, between yields: no hook
    assert not model.hook_points()["hook_embed"].is_listened()
    assert torch.equal(next(gen), inside) and len(calls) == 2  # back inside: the hook again
    gen.close()
    assert torch.equal(model(TOKENS), plain) and len(calls) == 2


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
