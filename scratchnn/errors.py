"""One line for each failure a person can fix, where a command would otherwise end in a traceback.

Every command-line entry point (`python -m blocks.train`, `python -m scratchnn.mnist`, the probe
scripts, `sandbox`) ends through `one_line_errors`, and the app shows `describe(err)` on the page:
bad input, a file that cannot be read or written, a full disk, running out of memory. What
`describe` does not know (a bug) keeps its traceback, so it can be found and fixed.
"""

from __future__ import annotations

import errno
import functools
import re
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., int | None])

OOM_HINT = "lower the batch size or the model's sizes, or free memory (SANDBOX_MAX_MEMORY_GB limits what is tried)"


def describe(err: BaseException) -> str | None:
    """`err` as one line that names the file or option and says what would work, or None for a bug."""
    if isinstance(err, OSError):
        return _os_error(err)
    if isinstance(err, MemoryError) or _is_out_of_memory(err):
        detail = re.sub(r"\[enforce fail at [^\]]*\]\s*", "", _flat(err))  # a C++ source location, not for people
        return f"out of memory ({detail or type(err).__name__}); {OOM_HINT}"
    if isinstance(err, RecursionError):
        return f"the input is nested too deeply to read ({_flat(err)}); give a plain, flat file"
    if type(err).__name__ == "DatasetGenerationError":  # datasets' error for a CSV/JSON it cannot parse
        cause = err.__cause__ or err.__context__
        return f"the data could not be parsed: {_flat(cause) if cause else _flat(err)}"
    if isinstance(err, UnicodeDecodeError):
        return f"the input is not UTF-8 text ({_flat(err)}); give a text file"
    if isinstance(err, (ValueError, KeyError)):  # how this code reports bad input
        return _flat(err.args[0] if isinstance(err, KeyError) and err.args else err)
    return None


def one_line_errors(main: F) -> F:
    """Wrap an entry point's `main`: a failure `describe` knows prints `error: <one line>` and returns 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - everything `describe` names; the rest is re-raised
            line = describe(err)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            return 2

    return wrapped  # type: ignore[return-value]


def _os_error(err: OSError) -> str:
    name = err.filename if err.filename is not None else None
    where = f" {name}" if name is not None else ""
    if err.errno == errno.ENOSPC:
        return f"the disk is full: nothing more could be written{' to' + where if where else ''}; free space and retry"
    if err.errno == errno.EDQUOT:
        return f"the disk quota is used up writing{where}; free space and retry"
    if err.errno == errno.EFBIG:
        return f"{name or 'a file'} grew past the largest file this process may write ({err.strerror})"
    if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on{where or ' a file or folder'}: this user may not read or write it there"
    if err.errno == errno.EROFS:
        return f"{name or 'the target'} is on a read-only file system; give a folder that can be written"
    if isinstance(err, IsADirectoryError):
        return f"{name} is a folder, where a file was expected"
    if isinstance(err, NotADirectoryError):
        return f"{name} is not a folder: part of that path is a file, where a folder was expected"
    if isinstance(err, FileNotFoundError) and name is not None:
        return f"no such file or folder: {name}"
    message = _flat(err)
    return f"{message}{'' if name is None or str(name) in message else ' (' + str(name) + ')'}"


def _is_out_of_memory(err: BaseException) -> bool:
    if type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, whatever the device
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory", "Failed to allocate")
    )


def _flat(x: object) -> str:
    return " ".join(str(x).split())
