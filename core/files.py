"""Writing files so that nothing half-written is ever seen under the final name.

Every file the pack produces (videos, weights, converted checkpoints, motion files, images, training
checkpoints) is written next to its destination under a hidden temporary name and renamed into place
only once it is complete: a crash, a cancel or a full disk leaves the old file (or none), never a
truncated one.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, List, Union

from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
#: the process's umask, read once at import (reading it means setting it, which is not thread-safe later)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def new_file_mode() -> int:
    """The permissions a newly created file gets here (0666 less the umask)."""
    return 0o666 & ~_UMASK


def relative_parts(root: PathLike, name: str, what: str, example: str) -> List[str]:
    """The parts of ``name``, a path the user gives relative to the output folder ``root`` (sub-folders allowed,
    ``\\`` read as ``/``), after refusing what would write elsewhere: NUL bytes, an empty name, absolute paths,
    drive letters, ``..``, and sub-folders that lead out of ``root`` through a symlink. ``what`` names the input in
    the messages, ``example`` shows a good value."""
    text = (name or "").replace("\\", "/").strip()
    if "\x00" in text:
        raise InputError(f"{what} {text!r} contains a NUL byte and is refused")
    if not text:
        raise InputError(f"{what} must not be empty")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or ".." in parts or not parts:
        raise InputError(f"{what} {text!r} points outside the output folder; use {example}")
    top = Path(root).resolve()
    folder = top.joinpath(*parts[:-1]).resolve()
    if folder != top and top not in folder.parents:
        raise InputError(f"{what} {text!r} points outside the output folder")
    return parts


@contextlib.contextmanager
def atomic_write(path: PathLike, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block ends without an
    exception, delete it otherwise.

    ``suffix`` ends the temporary name (``".partial.mp4"`` keeps a container's extension for tools that
    choose the format by it). The folder is created when missing::

        with atomic_write(dst) as tmp:
            save_file(tensors, tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    # mkstemp makes the file private (0600); the result gets the permissions of any file the user makes,
    # and tools that replace the temporary file instead of writing into it find those kept by chmod below
    os.chmod(tmp, new_file_mode())
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = ["atomic_write", "new_file_mode"]
