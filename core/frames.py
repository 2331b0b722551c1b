"""Frames as a stream: a video of any length with a few batches in memory.

A :class:`FrameStream` knows its frame count, size and rate up front and makes its frames only when it
is pulled, batch by batch (``[B,H,W,3]`` float32 0..1 on the CPU, like ComfyUI's IMAGE). The producer
(a renderer, a resizer, a decoder) hands over a *source*: a function that starts the computation anew
and yields batches. So a stream can be pulled any number of times; each pull runs its chain again from
the start (nothing is kept between pulls, memory stays bounded by a batch per stage), and a chain of
streams (SDA -> resize -> FOM -> encoder) runs with one batch of each stage alive at a time.

A whole video as one IMAGE tensor is what other packs' nodes take; :meth:`FrameStream.materialize`
makes it, after checking that it fits in the memory that is free, and refuses otherwise with the size it
would need (:class:`FramesTooLargeError`), before any work is done.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

import torch

from .errors import FramesTooLargeError, InputError, TalkingHeadError
from .progress import check_cancel

Source = Callable[[], Iterable[torch.Tensor]]
#: ``ranged(start, stop)``: the batches of frames ``start .. stop - 1`` only, made without making the others
Ranged = Callable[[int, int], Iterable[torch.Tensor]]
#: the share of the free memory one IMAGE batch may take (the rest is for the graph, ComfyUI, the OS)
MEMORY_SHARE = 0.8


def available_memory() -> Optional[int]:
    """Bytes of memory the process can still take without swapping (Linux: ``MemAvailable``, capped by a
    cgroup limit when one is set; elsewhere the free physical pages), or None when unknown."""
    found: Optional[int] = None
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if found is not None:
        for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                       ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                        "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
            try:
                with open(limit_file, encoding="ascii") as f:
                    limit = f.read().strip()
                with open(usage_file, encoding="ascii") as f:
                    usage = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if limit.isdigit() and int(limit) < (1 << 60):
                found = min(found, max(int(limit) - usage, 0))
            break
        return found
    if sys.platform != "win32" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            return None
    return None


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


class FrameStream:
    """``count`` frames of ``height`` x ``width`` (at ``fps``, when known), made by ``source()`` on each pull.

    ``source()`` returns an iterable of IMAGE batches ``[B,H,W,3]``; the stream checks every batch (size,
    dtype, the total count) so that a producer that yields too few or too many frames is an error, not a
    shorter or longer video. ``label`` names the stream in messages (``"LivePortraitRender's frames"``).

    ``ranged``, when the producer can make any part of the video on its own (a renderer whose frames depend only on
    their own motion), makes :meth:`section` cheap: ``ranged(start, stop)`` yields just those frames, equal to the
    same frames of a whole pull. Without it a section pulls from the start and drops what comes before.
    """

    def __init__(self, source: Source, count: int, height: int, width: int, fps: Optional[float] = None,
                 label: str = "frames", ranged: Optional[Ranged] = None) -> None:
        if count < 0 or height <= 0 or width <= 0:
            raise ValueError(f"a frame stream needs a count >= 0 and a positive size, got {count} x {height}x{width}")
        self._source = source
        self.count = int(count)
        self.height = int(height)
        self.width = int(width)
        self.fps = None if fps is None else float(fps)
        self.label = label
        self._ranged = ranged

    # ---------------------------------------------------------------- making streams
    @classmethod
    def from_images(cls, images: torch.Tensor, fps: Optional[float] = None, batch_size: int = 16,
                    label: str = "frames") -> "FrameStream":
        """A stream over an IMAGE tensor that exists already (views of it, no copy)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"{label}: expected an IMAGE batch [B,H,W,3], got shape {tuple(images.shape)}")
        step = max(int(batch_size), 1)
        return cls(lambda: (images[i:i + step] for i in range(0, images.shape[0], step)), images.shape[0],
                   images.shape[1], images.shape[2], fps, label,
                   ranged=lambda a, b: (images[i:min(i + step, b)] for i in range(a, b, step)))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], height: int, width: int,
            label: Optional[str] = None) -> "FrameStream":
        """A stream of ``fn(batch)`` for each batch of this one (same count; ``fn`` keeps the batch size and works
        frame by frame, so the sections of the result are ``fn`` of this stream's sections)."""
        return FrameStream(lambda: (fn(batch) for batch in self), self.count, height, width, self.fps,
                           label or self.label, ranged=lambda a, b: (fn(batch) for batch in self.section(a, b)))

    def derive(self, around: Callable[[Iterable[torch.Tensor], int], Iterable[torch.Tensor]]) -> "FrameStream":
        """The same frames, each pull (of the whole or of a section) going through ``around(batches, count)``: a
        generator that yields the batches it is given and adds something around them (a progress bar, a model
        unloaded when the pull ends)."""
        return FrameStream(lambda: around(self, self.count), self.count, self.height, self.width, self.fps,
                           self.label, ranged=lambda a, b: around(self.section(a, b), b - a))

    def section(self, start: int, stop: int) -> "FrameStream":
        """Frames ``start .. stop - 1`` as a stream of their own (see ``ranged``)."""
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.count:
            raise InputError(f"{self.label}: frames {start}..{stop} are not within its {self.count} frames")
        label = f"{self.label} [{start}:{stop}]"
        if self._ranged is not None:
            ranged = self._ranged
            return FrameStream(lambda: ranged(start, stop), stop - start, self.height, self.width, self.fps, label)

        def dropping() -> Iterator[torch.Tensor]:
            done = 0
            for batch in self:
                n = int(batch.shape[0])
                lo, hi = max(start - done, 0), min(stop - done, n)
                if lo < hi:
                    yield batch[lo:hi]
                done += n
                if done >= stop:
                    return
        return FrameStream(dropping, stop - start, self.height, self.width, self.fps, label)

    @staticmethod
    def concat(streams: Sequence["FrameStream"], label: str = "frames") -> "FrameStream":
        """The streams one after another (all of one size; the first one's rate)."""
        if not streams:
            raise InputError(f"{label}: nothing to join")
        first = streams[0]
        for s in streams[1:]:
            if (s.height, s.width) != (first.height, first.width):
                raise InputError(f"{label}: {s.label} is {s.width}x{s.height}, {first.label} is "
                                 f"{first.width}x{first.height}; resize them to one size before joining")

        def source() -> Iterator[torch.Tensor]:
            for s in streams:
                yield from s

        def ranged(start: int, stop: int) -> Iterator[torch.Tensor]:
            offset = 0
            for s in streams:
                lo, hi = max(start - offset, 0), min(stop - offset, s.count)
                if lo < hi:
                    yield from s.section(lo, hi)
                offset += s.count
        return FrameStream(source, sum(s.count for s in streams), first.height, first.width, first.fps, label,
                           ranged=ranged)

    # ---------------------------------------------------------------- pulling
    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        """The size of the whole video as one float32 IMAGE batch."""
        return self.count * self.height * self.width * 3 * 4

    def __iter__(self) -> Iterator[torch.Tensor]:
        made = 0
        produced = iter(self._source())
        try:
            for batch in produced:
                if batch.ndim != 4 or tuple(batch.shape[1:]) != (self.height, self.width, 3):
                    raise TalkingHeadError(f"{self.label}: a batch of shape {tuple(batch.shape)} in a stream of "
                                           f"{self.width}x{self.height} frames")
                made += int(batch.shape[0])
                if made > self.count:
                    raise TalkingHeadError(f"{self.label}: the producer made more than the {self.count} frames "
                                           f"it announced")
                yield batch
                check_cancel()
        finally:
            # a pull that stops early (a cancel, an error downstream) ends the producer now, so that its own
            # clean-up (unloading a model, closing a decoder) runs at once, not when the traceback is freed
            close = getattr(produced, "close", None)
            if close is not None:
                close()
        if made != self.count:
            raise TalkingHeadError(f"{self.label}: the producer ended after {made} of the {self.count} frames it "
                                   f"announced")

    def batches(self, size: int) -> Iterator[torch.Tensor]:
        """The frames in batches of exactly ``size`` (the last one smaller), whatever the producer's size."""
        size = max(int(size), 1)
        pending: List[torch.Tensor] = []
        held = 0
        for batch in self:
            while batch.shape[0]:
                take = min(size - held, int(batch.shape[0]))
                pending.append(batch[:take])
                held += take
                batch = batch[take:]
                if held == size:
                    # drop the parts before handing the chunk on: the consumer holds one chunk, not two
                    chunk = pending[0] if len(pending) == 1 else torch.cat(pending)
                    pending, held = [], 0
                    yield chunk
                    del chunk
            del batch
        if held:
            chunk = pending[0] if len(pending) == 1 else torch.cat(pending)
            del pending
            yield chunk

    def check_fits(self, what: Optional[str] = None, alternative: str = "") -> None:
        """Refuse (:class:`FramesTooLargeError`) when the whole video as one IMAGE batch would take more
        than :data:`MEMORY_SHARE` of the free memory, naming the size, what is free and ``alternative``."""
        free = available_memory()
        if free is None or self.nbytes <= MEMORY_SHARE * free:
            return
        raise FramesTooLargeError(
            f"{what or self.label}: {self.count} frames of {self.width}x{self.height} as one IMAGE batch would need "
            f"{_gib(self.nbytes)}, and {_gib(free)} of memory is free. {alternative}".rstrip())

    def materialize(self, what: Optional[str] = None, alternative: str = "") -> torch.Tensor:
        """The whole video as one IMAGE tensor ``[count,H,W,3]``, after :meth:`check_fits` (before any work)."""
        self.check_fits(what, alternative)
        out = torch.empty((self.count, self.height, self.width, 3), dtype=torch.float32)
        done = 0
        for batch in self:
            out[done:done + batch.shape[0]] = batch
            done += int(batch.shape[0])
        return out

    def __repr__(self) -> str:
        rate = f" at {self.fps:g} fps" if self.fps else ""
        return f"FrameStream({self.label}: {self.count} frames of {self.width}x{self.height}{rate})"


__all__ = ["FrameStream", "FramesTooLargeError", "MEMORY_SHARE", "available_memory"]
