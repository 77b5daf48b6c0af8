"""The `sandbox` command: one entry point for training, the probe scripts, the MNIST exercise and the app.

    sandbox train --task induction --out runs/induction   # = python -m blocks.train ...
    sandbox probe head_scores --run runs/induction --out out/heads   # = python -m probes.scripts.head_scores ...
    sandbox mnist --data-dir ../shared/data/mnist          # = python -m scratchnn.mnist ..., with the fast backend
    sandbox app --runs runs                                # = streamlit run app.py -- --runs runs
    sandbox backend                                        # what the fast backend runs on this machine

Each subcommand takes the same options as the module it stands for (`sandbox probe NAME --help`).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from scratchnn.errors import one_line_errors

PROBES = (
    "circuit",
    "dynamics",
    "fourier",
    "head_scores",
    "information_flow",
    "patching",
    "probing",
    "sae",
    "sycophancy",
)
APP = Path(__file__).resolve().parents[2] / "app.py"  # the app lives beside the packages in a checkout


def usage() -> str:
    return __doc__.split("\n\n")[1] + f"\n\nprobe scripts: {', '.join(PROBES)}\n"


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "train":
        from blocks.training.cli import main as train

        return train(rest, prog="sandbox train")
    if command == "probe":
        if not rest or rest[0] in ("-h", "--help"):
            print(f"usage: sandbox probe NAME --run RUN --out OUT [options]; `sandbox probe NAME --help` for one's "
                  f"options\nprobe scripts: {', '.join(PROBES)}", file=sys.stdout if rest else sys.stderr)  # fmt: skip
            return 0 if rest else 2
        if rest[0] not in PROBES:
            got = repr(rest[0]) if rest else "nothing"
            print(f"error: sandbox probe takes one of {', '.join(PROBES)}, got {got}", file=sys.stderr)
            return 2
        script = importlib.import_module(f"probes.scripts.{rest[0]}")
        with program(f"sandbox probe {rest[0]}"):
            script.main(rest[1:])
        return 0
    if command == "mnist":
        import blocks.fast  # noqa: F401  (the fast backend; `python -m scratchnn.mnist` runs the modules' own code)
        from scratchnn.mnist import main as mnist

        return mnist(rest, prog="sandbox mnist")
    if command == "app":
        return app(rest)
    if command == "backend":
        from blocks import fast

        if rest:
            print(f"error: sandbox backend takes no arguments, got {' '.join(rest)}", file=sys.stderr)
            return 2
        try:
            status = fast.status()
        except ValueError as err:  # a bad SANDBOX_FAST
            print(f"error: {err}", file=sys.stderr)
            return 2
        for name, what in status.items():
            print(f"{name:18s} {what}")
        return 0
    print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    return 2


@contextmanager
def program(name: str) -> Iterator[None]:
    """Within the block, usage and error lines name the program `name` (argparse reads sys.argv[0])."""
    saved = sys.argv[0]
    sys.argv[0] = name
    try:
        yield
    finally:
        sys.argv[0] = saved


def app(rest: list[str]) -> int:
    """Serve the Streamlit app on 127.0.0.1 (`--port N`, default 8501; other options go to the app: `--runs DIR`)."""
    if "-h" in rest or "--help" in rest:
        print("usage: sandbox app [--port N] [--runs DIR]\nserves the app on http://127.0.0.1:N (default 8501) "
              "for the runs in DIR (default runs/)")  # fmt: skip
        return 0
    if not APP.is_file():
        print(
            f"error: the app ({APP}) is not here; `sandbox app` runs from a checkout of the repository "
            "(pip install -e .)",
            file=sys.stderr,
        )
        return 2
    port = "8501"
    if "--port" in rest:
        i = rest.index("--port")
        if i + 1 >= len(rest):
            print("error: --port needs a number", file=sys.stderr)
            return 2
        port = rest[i + 1]
        del rest[i : i + 2]
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        port,
        "--",
        *rest,
    ]
    return subprocess.call(command, cwd=os.getcwd())


if __name__ == "__main__":
    sys.exit(main())
