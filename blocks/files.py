"""Files of a run folder: paths that must stay inside it, and the lock that lets one trainer write it.

A run folder is data, and data can hold symlinks. Whatever reads a run (load_run, the app, the
trainer on --resume) resolves each path it opens and refuses one that leads outside the folder
it was given, naming the link, so that a crafted run cannot show or load files from elsewhere;
the trainer does the same for each path it writes, so that it never writes or deletes files there.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path


class OutsideFolderError(ValueError):
    """A path inside a run leads, through a symlink, outside the folder that may be read, or into a loop of links."""


def confined(path: str | Path, root: str | Path) -> Path:
    """`path` with every link followed, if it stays inside `root`; else OutsideFolderError naming the link."""
    path, root = Path(path), Path(root)
    resolved, inside = _resolved(path), _resolved(root)
    if resolved is None or inside is None:
        raise OutsideFolderError(f"{_link_of(path, root)} is a symlink loop, so it is not used")
    if resolved == inside or resolved.is_relative_to(inside):
        return resolved
    raise OutsideFolderError(
        f"{_link_of(path, root)} leads to {resolved}, outside {inside}; a run's files must lie inside its "
        "folder, so it is not used (replace the link by a copy of the file to use it)"
    )


def _resolved(path: Path) -> Path | None:
    """`path` with every link followed, or None where links loop (a non-strict resolve lets a loop pass on 3.13)."""
    try:
        return path.resolve(strict=True)
    except RuntimeError:  # how Python 3.10-3.12 report a loop
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None
        return path.resolve()  # not there yet (a folder the trainer is about to make): as far as it goes


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


class RunLockedError(FileExistsError):
    """Another process is training into the same run folder (an OSError, so every entry point says it in one line)."""


class RunLock:
    """An exclusive lock on a run folder for as long as one trainer writes it (flock on `.train.lock`).

    The kernel drops the lock when the holding process ends, however it ends, so a killed trainer
    never leaves its folder locked (only a stale file, which the next trainer takes over). Within one process the lock is shared: a test or notebook may
    build a second Trainer on a folder while the first is done with it.

    The lock file is never followed: a run folder is data, and a `.train.lock` that is a link (or a
    hard link, or not a plain file) would have the trainer truncate and overwrite some other file, so
    it is refused, naming it. Where Python has no fcntl (Windows) there is no flock: the folder is
    not locked at all, and two trainers on one folder are not told apart.
    """

    NAME = ".train.lock"
    _held: dict[Path, tuple[int | None, int]] = {}  # lock path -> (fd, or None when unlocked; holders in this process)

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder.resolve() / self.NAME  # the folder may be reached through a link; the lock file may not
        self.released = False
        if self.path in self._held:
            fd, count = self._held[self.path]
            self._held[self.path] = (fd, count + 1)
            return
        try:
            import fcntl  # POSIX only
        except ImportError:
            self._held[self.path] = (None, 1)
            return
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunLockedError(
                    f"{folder} is being trained by {holder}; wait for it to finish or stop it, then run this again"
                ) from None
            # the holder we waited on may have removed the file as it released it: lock the file now there
            if self._is_ours(fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} ({' '.join(sys.argv)[:120]})".encode())
        self._held[self.path] = (fd, 1)

    def _open(self) -> int:
        """A descriptor of the lock file, created if missing; refused (OSError naming it) unless a plain file of its own."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError:
            if not os.path.islink(self.path):
                raise
            raise OSError(
                f"the lock file {self.path} is a link (to {os.readlink(self.path)}); a run's lock must be a plain "
                "file, so it is not opened: remove the link, then run this again",
            ) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise OSError(
                f"the lock file {self.path} is not a plain file of its own (it is another kind of file, or hard-linked "
                "to another name), so it is not written: remove it, then run this again",
            )
        return fd

    def _is_ours(self, fd: int) -> bool:
        """Whether the name `self.path` (not followed) is still the file that `fd` holds open."""
        try:
            there = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        here = os.fstat(fd)
        return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        fd, count = self._held.pop(self.path)
        if count > 1:
            self._held[self.path] = (fd, count - 1)
        elif fd is not None:
            if self._is_ours(fd):  # a finished run keeps no lock file (a killed one leaves a stale one)
                self.path.unlink()
            os.close(fd)  # closing the descriptor releases the flock
