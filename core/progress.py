"""Progress reporting and cancellation for long loops: one path for both.

Every long loop in core counts its steps on a :class:`Progress`; :meth:`Progress.step` is the one
place a run is cancelled: it asks the host (:func:`check_cancel`: ComfyUI's interrupt, the headless
runner's Ctrl-C) and then calls the loop's callback ``progress(done, total, preview=None)``, which
may raise to cancel too (ComfyUI's ProgressBar raises its interrupt exception; the headless runner
raises :class:`~.errors.Cancelled`).

Core functions take ``progress`` as a callback (or None), or as a :class:`Progress` when the loop is
part of a larger count (the windows of a motion sequence, say): :func:`as_progress` turns either into
the :class:`Progress` the loop steps.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Union

from tqdm import tqdm

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


def as_progress(progress: Union["Progress", ProgressFn, None], total: int) -> Progress:
    """The :class:`Progress` a loop of ``total`` steps reports through: ``progress`` itself when it is
    one (the loop counts into the caller's larger total), else ``Progress(total, progress)`` for a
    callback or None (None still checks for cancellation at every step)."""
    return progress if isinstance(progress, Progress) else Progress(total, progress)


class TerminalBar:
    """A progress bar on the terminal (``tqdm``, on stderr unless ``stream`` is given), usable as a
    progress callback ``bar(done, total, preview=None)`` (``preview`` is ignored).

    The bar appears on the first call and closes when ``done`` reaches ``total``; a later call (or
    one whose ``done`` goes back, i.e. another loop reporting through the same callback) starts a new
    bar. ``total`` may grow between calls (a download that learns its size). Other keyword arguments
    go to ``tqdm`` (``unit="B"``, ``unit_scale=True``...)."""

    def __init__(self, label: str = "", stream=None, **tqdm_options) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.options = {"dynamic_ncols": True, "mininterval": 0.1, **tqdm_options}
        self._bar: Optional[tqdm] = None
        self._start: Optional[float] = time.time()  # the loop starts when its callback is made

    def __call__(self, done: int, total: int, preview=None) -> None:
        done = max(int(done), 0)
        total = max(int(total), done, 1)
        bar = self._bar
        if bar is not None and done < bar.n:
            self.close()
            bar = None
        if bar is None:
            bar = self._bar = tqdm(total=total, desc=self.label, file=self.stream, leave=True, **self.options)
            if self._start is not None:  # the first bar: its rate counts from the loop's start, not its first step
                bar.start_t = min(bar.start_t, self._start)
                self._start = None
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Finish the current bar (its line stays on the terminal)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
