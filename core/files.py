"""Writing files so that nothing half-written is ever seen under the final name.

Every file the pack produces (videos, weights, converted checkpoints, motion files, images, training
checkpoints) is written next to its destination under a hidden temporary name and renamed into place
only once it is complete: a crash, a cancel or a full disk leaves the old file (or none), never a
truncated one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]
#: the process's umask, read once at import (reading it means setting it, which is not thread-safe later)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def new_file_mode() -> int:
    """The permissions a newly created file gets here (0666 less the umask)."""
    return 0o666 & ~_UMASK


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
