"""Where runs live, and the one check that keeps the app inside its runs folder.

Kept free of Streamlit so it can be tested (and reasoned about) on its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RUNS_ENV = "SANDBOX_RUNS"  # lets tests (AppTest cannot pass script arguments) point the app elsewhere


class RunPathError(ValueError):
    """A run name that would lead outside the runs folder, or to no run at all."""


def runs_root(argv: list[str] | None = None) -> Path:
    """The runs folder: `--runs DIR` after `streamlit run app.py --`, else $SANDBOX_RUNS, else ./runs."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # another program's --run is not --runs
    parser.add_argument("--runs", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return Path(args.runs or os.environ.get(RUNS_ENV) or "runs").expanduser().resolve()


def resolve_run(root: Path, name: str) -> Path:
    """The run folder `name` inside `root`, refusing anything that ends up outside it.

    The name is resolved (symlinks followed, '..' collapsed) before the check, so
    '../x', '/etc', 'a/../../x' and a symlink pointing out are all refused the same way.
    """
    if not isinstance(name, str) or not name.strip():
        raise RunPathError("no run named; choose one of the runs listed in the sidebar")
    root = root.resolve()
    candidate = (root / name).resolve()
    if candidate == root or not candidate.is_relative_to(root):
        raise RunPathError(f"run {name!r} is outside the runs folder {root}; only runs inside it can be opened")
    if not (candidate / "config.json").is_file():
        raise RunPathError(
            f"run {name!r} has no config.json in {root}; train one with `python -m blocks.train --task induction`"
        )
    return candidate


def list_runs(root: Path) -> list[str]:
    """Names of the run folders (those holding config.json) directly inside `root`, skipping links that lead out."""
    if not root.is_dir():
        return []
    names = []
    for child in sorted(root.iterdir()):
        try:
            resolve_run(root, child.name)
        except RunPathError:
            continue
        names.append(child.name)
    return names
