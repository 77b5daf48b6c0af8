"""Named hook points and scoped hooks that cannot leak.

Hooks live in a context variable, not on the modules: a `with model.hooks(...)` scope sets
them for the code running inside it (and only for that thread or task), and resetting the
variable in `finally` is the whole clean-up. So a hook that raises, a KeyboardInterrupt, or
two threads caching the same model at once can never leave a hook behind or see each
other's hooks.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

# fn(activation, hook) -> replacement tensor or None (None keeps the activation as it is)
HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
NameFilter = str | Callable[[str], bool]


@dataclass
class _Scope:
    fwd: dict[str, list[HookFn]] = field(default_factory=dict)
    bwd: dict[str, list[HookFn]] = field(default_factory=dict)
    alive: bool = True
    listened_names: frozenset[str] = frozenset()
    outer: _Scope | None = None  # the scope this one nests in (its hooks are copied into this one's)


_ACTIVE: ContextVar[_Scope | None] = ContextVar("scratchnn_active_hooks", default=None)


def _current_scope() -> _Scope | None:
    """The innermost scope in force here; scopes that ended in another context are skipped (and dropped).

    A generator shares its caller's context. Like torch.no_grad(), a scope opened inside one is in
    force for the caller while the generator is suspended inside it (a pytest yield fixture relies
    on exactly that); but when the generator is closed from another context or thread, that
    context cannot reset this one's variable, so a dead scope is recognised here and never applied.
    """
    scope = _ACTIVE.get()
    if scope is not None and not scope.alive:
        while scope is not None and not scope.alive:
            scope = scope.outer
        _ACTIVE.set(scope)
    return scope


class HookPoint(nn.Module):
    """Identity on its input, unless a scope has hooks on this point's name.

    Its `name` is its module path inside the root model (`blocks.1.attn.hook_pattern`),
    set by `HookedModule.setup_hooks`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""

    def is_listened(self) -> bool:
        """True when the current scope has a forward or backward hook on this point, or torch's own hooks are on it."""
        if self._forward_hooks or self._forward_pre_hooks:  # register_forward_hook on the point itself
            return True
        scope = _current_scope()
        return scope is not None and self.name in scope.listened_names

    def forward(self, x: Tensor) -> Tensor:
        scope = _current_scope()
        if scope is None:
            return x
        for fn in scope.fwd.get(self.name, ()):
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"a hook on {self.name} returned {got}; a replacement must be a tensor of "
                        f"the activation's shape {tuple(x.shape)}"
                    )
                # under autocast a float32 replacement for a bfloat16 activation is fine (ops cast it); elsewhere
                # a dtype mix fails later with "mixed dtype" and no hook named, so say it here
                dtype_clash = out.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type)
                if dtype_clash or out.device != x.device:
                    name = getattr(fn, "__qualname__", repr(fn))
                    raise ValueError(
                        f"the hook {name} on {self.name} returned a {out.dtype} tensor on {out.device}; the activation "
                        f"is {x.dtype} on {x.device}, so return out.to(act.dtype, act.device)"
                    )
                x = out
        bwd = scope.bwd.get(self.name)
        if bwd and x.requires_grad:
            if x._base is not None:  # torch cannot hook a view that a forward hook edited in place: hook a copy
                x = x.clone()
            x.register_hook(_grad_hook(scope, bwd, self))
        return x

    def layer(self) -> int | None:
        """The block index in this point's name (`blocks.3.attn.hook_z` -> 3), or None."""
        parts = self.name.split(".")
        if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
            return int(parts[1])
        return None

    def extra_repr(self) -> str:
        return repr(self.name) if self.name else ""


def _grad_hook(scope: _Scope, fns: list[HookFn], point: HookPoint) -> Callable[[Tensor], Tensor | None]:
    def on_grad(grad: Tensor) -> Tensor | None:
        if not scope.alive:  # the scope ended before backward ran: it must have no effect
            return None
        changed = None
        for fn in fns:
            out = fn(grad if changed is None else changed, point)
            if out is not None:
                changed = out
        return changed

    return on_grad


class StopForward(Exception):
    """Raised by a hook to end a forward pass early once everything needed has been seen."""


class HookedModule(nn.Module):
    """Root of a model whose activations are reached by name through HookPoints.

    Subclasses build their modules, then call `self.setup_hooks()` at the end of __init__.
    """

    def setup_hooks(self) -> None:
        self._hook_points: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self._hook_points[name] = module

    def hook_names(self) -> list[str]:
        """Every hook point's name, in the order the forward pass reaches them."""
        return list(self._hook_points)

    def hook_points(self) -> dict[str, HookPoint]:
        return dict(self._hook_points)

    def resolve(self, names: NameFilter | Iterable[str] | None) -> list[str]:
        """Turn a name, a list of names, a predicate or None (all) into hook names, in forward order.

        An unknown name raises a KeyError that suggests the closest real names.
        """
        if names is None:
            return self.hook_names()
        if callable(names):
            return [n for n in self._hook_points if names(n)]
        if isinstance(names, str):
            names = [names]
        wanted = list(names)
        for name in wanted:
            if not isinstance(name, str):
                raise TypeError(f"hook names are strings, got {name!r}")
            if name not in self._hook_points:
                close = difflib.get_close_matches(name, self._hook_points, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else "; model.hook_names() lists them"
                raise KeyError(f"no hook point named {name!r}{hint}")
        keep = set(wanted)
        return [n for n in self._hook_points if n in keep]

    @contextmanager
    def hooks(
        self,
        fwd: Iterable[tuple[NameFilter, HookFn]] = (),
        bwd: Iterable[tuple[NameFilter, HookFn]] = (),
    ) -> Iterator[HookedModule]:
        """Run the body with these forward and backward hooks; all are gone when it ends.

        `fn(activation, hook)` may return a tensor of the same shape to replace the activation
        (forward) or the gradient (backward). Scopes nest: inner hooks run after outer ones.
        """
        outer = _current_scope()
        scope = _Scope(
            fwd={k: list(v) for k, v in outer.fwd.items()} if outer else {},
            bwd={k: list(v) for k, v in outer.bwd.items()} if outer else {},
            outer=outer,
        )
        for table, pairs in ((scope.fwd, fwd), (scope.bwd, bwd)):
            for name_filter, fn in pairs:
                if not callable(fn):
                    raise TypeError(f"a hook must be callable as fn(activation, hook), got {fn!r}")
                for name in self.resolve(name_filter):
                    table.setdefault(name, []).append(fn)
        scope.listened_names = frozenset(scope.fwd) | frozenset(scope.bwd)
        token = _ACTIVE.set(scope)
        try:
            yield self
        finally:
            scope.alive = False
            try:
                _ACTIVE.reset(token)
            except ValueError:  # a generator closed from another context: the dead scope is skipped there
                pass

    def cache_activations(
        self,
        run: Callable[[], Tensor],
        names: NameFilter | Iterable[str] | None = None,
        device: torch.device | str | None = None,
        stop_after: str | None = None,
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Call `run()` with a caching hook on each name; return its output and the cache.

        With `stop_after` set to a hook name, the forward pass ends right after that point
        and the output is None.
        """
        cache: dict[str, Tensor] = {}

        def save(act: Tensor, hook: HookPoint) -> None:
            cache[hook.name] = act.detach() if device is None else act.detach().to(device)

        def stop(act: Tensor, hook: HookPoint) -> None:
            raise StopForward

        fwd: list[tuple[NameFilter, HookFn]] = [(n, save) for n in self.resolve(names)]
        if stop_after is not None:
            fwd.append((stop_after, stop))
        with self.hooks(fwd=fwd):
            try:
                out = run()
            except StopForward:
                out = None
        return out, cache
