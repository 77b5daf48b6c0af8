"""The switch between each module's own (reference) code and a registered faster function for the same operation.

Every scratchnn module computes its output in plain torch inside its own `forward`: that code
is the reference, the one a reader reads and edits. For a few operations (`OPERATIONS`) a
backend may register a faster function that computes the same thing; the sandbox's backend is
`blocks.fast`, registered when `blocks` is imported. A module asks `fast(name)` and, when it
gets a function back, calls it instead of running its own lines.

`fast` returns None, so that only the reference code runs:
- when no backend registered that operation (scratchnn used on its own);
- for the whole process, when the environment variable SANDBOX_FAST is 0;
- under torch.compile, which compiles the modules' own code;
- inside `with reference_only():`, for the code in that block (this thread or task only).

A registered function must agree with the module's own code, values and gradients: blocks'
tests hold each one to it on every model configuration they build.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

# What a backend may take over, and the module whose forward holds the reference: "linear"
# (Linear), "relu" (ReLU), "gelu" (GELU), "layer_norm" (LayerNorm, when nobody reads its
# scale), "causal_attention" (Attention's scores to weighted sum, when nobody reads the scores
# or the pattern).
OPERATIONS = ("linear", "relu", "gelu", "layer_norm", "causal_attention")


_SETTING = os.environ.get("SANDBOX_FAST", "1").strip()
# a bad value is reported where the backend is first asked (inside the command that runs), not at import
_SETTING_ERROR = (
    None
    if _SETTING in ("0", "1", "")
    else f"SANDBOX_FAST must be 0 (reference code only) or 1 (the default: use the fast backend), got {_SETTING!r}"
)
_REGISTERED: dict[str, Callable[..., object]] = {}
_ON: ContextVar[bool] = ContextVar("scratchnn_backend_on", default=_SETTING != "0")  # noqa: B039 (a bool)


def register(name: str, fn: Callable[..., object]) -> None:
    """Make `fn` the fast implementation of operation `name` (one of OPERATIONS) for this process."""
    if name not in OPERATIONS:
        raise ValueError(f"unknown operation {name!r}; a backend may register {list(OPERATIONS)}")
    _REGISTERED[name] = fn


def unregister(name: str) -> None:
    """Let operation `name` run the modules' own code for this process (for measuring what a backend saves)."""
    _REGISTERED.pop(name, None)


def fast(name: str) -> Callable[..., object] | None:
    """The registered function for operation `name`, or None where only the reference code may run.

    Under torch.compile it is always None: the compiler traces the module's own code and fuses it itself.
    """
    if torch.compiler.is_compiling():
        return None
    return _REGISTERED.get(name) if is_on() else None


def is_on() -> bool:
    """True where a registered fast function would run (the switch is on here)."""
    if _SETTING_ERROR is not None:
        raise ValueError(_SETTING_ERROR)
    return _ON.get()


@contextmanager
def reference_only() -> Iterator[None]:
    """Run the body on the modules' own code only: every `fast(name)` inside it is None."""
    token = _ON.set(False)
    try:
        yield
    finally:
        _ON.reset(token)
