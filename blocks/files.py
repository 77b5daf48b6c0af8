"""Files of a run folder that someone else may have written: paths that must stay inside the folder.

A run folder is data, and data can hold symlinks. Whatever reads a run (load_run, the app, the
trainer on --resume) resolves each path it opens and refuses one that leads outside the folder
it was given, naming the link, so that a crafted run cannot show or load files from elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path


class OutsideFolderError(ValueError):
    """A path inside a run leads, through a symlink, to a file outside the folder that may be read."""


def confined(path: str | Path, root: str | Path) -> Path:
    """`path` with every link followed, if it stays inside `root`; else OutsideFolderError naming the link."""
    path, root = Path(path), Path(root)
    resolved, inside = path.resolve(), root.resolve()
    if resolved == inside or resolved.is_relative_to(inside):
        return resolved
    raise OutsideFolderError(
        f"{_link_of(path, root)} leads to {resolved}, outside {inside}; a run's files must lie inside its "
        "folder, so it is not read (replace the link by a copy of the file to use it)"
    )


def _link_of(path: Path, root: Path) -> str:
    """The first symlink on the way from `root` down to `path`, as 'X (a link to Y)', or just `path`."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:  # `path` is not spelled below `root` ('..', an absolute name): the path itself is the culprit
        return str(path)
    here = root
    for part in parts:
        here = here / part
        if here.is_symlink():
            return f"{here} (a link to {os.readlink(here)})"
    return str(path)
