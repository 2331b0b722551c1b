"""Progress reporting and cancellation for long loops.

Core functions take an optional ``progress`` callable ``progress(done, total, preview=None)``.
It may raise to cancel (ComfyUI's ProgressBar raises its interrupt exception; the headless
runner raises :class:`~.errors.Cancelled`). :class:`Progress` wraps such a callable so a loop
only calls ``step()``.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional

from .host import HOST

ProgressFn = Callable[..., None]


def check_cancel() -> None:
    """Raise if the host says the user cancelled (no-op standalone)."""
    if HOST.check_interrupt is not None:
        HOST.check_interrupt()


class Progress:
    """Counts steps of a loop of known length and forwards them to a callback."""

    def __init__(self, total: int, callback: Optional[ProgressFn] = None) -> None:
        self.total = max(int(total), 1)
        self.done = 0
        self.callback = callback

    def step(self, n: int = 1, preview=None) -> None:
        self.done = min(self.done + n, self.total)
        check_cancel()
        if self.callback is not None:
            if preview is None:
                self.callback(self.done, self.total)
            else:
                self.callback(self.done, self.total, preview)


class TerminalBar:
    """A dependency-free progress bar for the command line, usable as a progress callback."""

    def __init__(self, label: str = "", stream=None, width: int = 30) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, total: int, preview=None) -> None:
        now = time.perf_counter()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        frac = done / max(total, 1)
        filled = int(self.width * frac)
        rate = done / max(now - self.start, 1e-9)
        line = f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {rate:.1f}/s"
        self.stream.write(line)
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
