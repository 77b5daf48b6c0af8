"""What every probe script shares: its arguments, loading the run, and writing numbers and figures.

A script builds `parser(...)`, defines `body(args, run) -> None`, and ends with
`main(parser, body, tasks=(...))`. Bad input (no such run, a run of the wrong task, a device
this machine lacks, an --out that cannot be written, ...)
ends the script with a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.offline import get_plotlyjs

from blocks.fast import keep_freed_memory
from blocks.training.runs import Run, load_run
from scratchnn.devices import pick_device
from scratchnn.errors import describe


class WrongTaskError(ValueError):
    """The run was trained on a task this probe does not analyse."""


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every probe script takes: --run, --out, --step, --device, --seed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--run", required=True, help="run directory written by python -m blocks.train")
    p.add_argument("--out", required=True, help="folder for the JSON numbers and HTML figures")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest readable one)")
    p.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed for the prompts the probe draws")
    return p


def check_out(out: str | Path) -> Path:
    """Create the folder `out`; ValueError if it cannot be created or written (e.g. a path under a file)."""
    if not str(out).strip():
        raise ValueError("--out is empty; give a folder for the JSON numbers and figures")
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--out {str(out)!r} cannot be created ({err.strerror}); give a folder you can write"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(out)!r} is not writable; give a folder you can write")
    return path


def load(args: argparse.Namespace, tasks: Sequence[str] | None = None) -> Run:
    """Load `args.run` at `args.step`; raise WrongTaskError unless its task is one of `tasks`."""
    run = load_run(args.run, step=args.step, device=args.device)
    for why in run.skipped + run.metrics_skipped:
        print(f"warning: {why}", file=sys.stderr)
    name = run.config["task"]["name"]
    if tasks is not None and name not in tasks:
        raise WrongTaskError(
            f"{args.run} is a {name!r} run; this probe needs a run of task {' or '.join(map(repr, tasks))}"
        )
    return run


def write_json(out: str | Path, name: str, data: dict[str, Any]) -> Path:
    """Write `data` to out/name.json (tensors become lists, NaN and infinities null: strict JSON) and return the path."""
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_strict(data), indent=2, default=_plain, allow_nan=False))
    return path


def _strict(value: Any) -> Any:
    """`value` with tensors as lists and every non-finite float as None, which strict JSON parsers accept."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


PLOTLY_JS = "plotly.min.js"


def plotly_js_for(out: Path) -> Path:
    """The one plotly.min.js the figures under an output root share, written there on first use.

    The output root is `out`'s parent (out/ for `--out out/heads`), so the probe scripts' folders
    side by side share one 4.8 MB copy; a folder directly in the working directory (or at the
    filesystem's top) is its own root, so nothing lands beside the code.
    """
    out = out.resolve()
    for folder in (out, out.parent):
        if (folder / PLOTLY_JS).is_file():
            return folder / PLOTLY_JS
    root = out if out.parent in (Path.cwd().resolve(), Path(out.anchor)) else out.parent
    path = root / PLOTLY_JS
    tmp = path.with_name(f".{PLOTLY_JS}.{os.getpid()}.tmp")
    tmp.write_text(get_plotlyjs(), encoding="utf-8")
    tmp.replace(path)  # whole or absent, even if two scripts write it at once
    return path


def write_figure(out: str | Path, name: str, fig: go.Figure) -> Path:
    """Write `fig` to out/name.html, loading the output root's shared plotly.min.js, so the pages work offline."""
    path = Path(out) / f"{name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    script = os.path.relpath(plotly_js_for(path.parent), path.parent.resolve())
    fig.write_html(path, include_plotlyjs=Path(script).as_posix())
    return path


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    """A plain fixed-width table on stdout (floats to 3 decimals)."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def main(
    p: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace, Run], None],
    tasks: Sequence[str] | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """Parse arguments, load the run, call body(args, run); bad input exits with status 2 and one line."""
    args = p.parse_args(argv)
    try:
        keep_freed_memory()
        # scoped, not torch.set_grad_enabled(False): main() is also called in-process (tests,
        # notebooks), and a global switch would leak into whatever runs next
        with torch.no_grad():
            # the cheap checks first, so a typo does not wait for the run to load
            args.device = pick_device(args.device)  # "auto" resolved once, for load() and the body alike
            check_out(args.out)
            run = load(args, tasks)
            body(args, run)
    except Exception as err:  # noqa: BLE001 - bad input, unreadable files, a full disk, out of memory: one line
        message = describe(err)
        if message is None:  # a bug: its traceback is what finds it
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
