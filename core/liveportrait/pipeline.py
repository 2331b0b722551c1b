"""A LivePortrait model set chosen once and shared by every stage that needs it.

:class:`LivePortraitSet` is what travels between the stages of a graph (LoadLivePortrait's output in
ComfyUI): which files (``variant``, optional ``folder``), where they run and in what precision. The
networks themselves stay in :data:`core.cache.CACHE`, so a set can be unloaded (UnloadModels,
``keep_model_loaded=False``) and comes back on the next use; the set never pins them in memory.

It also remembers the portrait sources it made (the crop, its motion and appearance volume), one per
portrait, so the motion producers and the renderer of one graph compute a portrait's source once::

    lp = LivePortraitSet("human", device="auto", precision="auto").load()
    source = lp.source(portrait)                 # once; later calls return the same object
    x_d = motion_keypoints(lp.models(), source, motion)
    frames, faces = render_images(lp.models(), source, x_d, full=portrait.full)
    stream = render_stream(lp, source, x_d, full=portrait.full)  # the same frames, made when pulled
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import torch

from ..checks import require_finite_output
from ..frames import FrameStream
from ..progress import ProgressFn
from .load import LivePortraitModels
from .render import LivePortraitSource, portrait_source, render_pasted


@dataclass(eq=False)
class LivePortraitSet:
    """The LivePortrait model set a graph uses: ``variant`` (one of ``VARIANTS``), device, precision."""

    variant: str = "human"
    device: str = "auto"
    precision: str = "auto"
    download: bool = True
    folder: Optional[Path] = None
    _sources: dict = field(default_factory=dict, repr=False)  # id(portrait) -> (weakrefs to it and the models, source)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def models(self) -> LivePortraitModels:
        """The networks (from the cache; loaded again if something unloaded them)."""
        from . import get_liveportrait

        return get_liveportrait(self.variant, device=self.device, download=self.download, folder=self.folder)

    def load(self) -> "LivePortraitSet":
        """Load the networks now (so missing weights are reported by the loader); returns ``self``."""
        self.models()
        return self

    def source(self, portrait) -> LivePortraitSource:
        """The portrait's LivePortrait source (its crop, motion and appearance volume), made once per portrait
        and model instance: the motion producers and the renderer of a graph share it."""
        models = self.models()
        with self._lock:
            # portraits are compared by identity (a graph hands the same object to every stage); only weak
            # references are kept, so the set pins neither the portraits nor networks that were unloaded
            for key in [k for k, (ref, _, _) in self._sources.items() if ref() is None]:
                del self._sources[key]
            made = self._sources.get(id(portrait))
            if made is not None and made[0]() is portrait and made[1]() is models:
                return made[2]
            source = portrait_source(models, portrait, device=self.device, precision=self.precision)
            self._sources[id(portrait)] = (weakref.ref(portrait), weakref.ref(models), source)
            return source

    def describe(self) -> str:
        where = f" from {self.folder}" if self.folder else ""
        return f"LivePortrait ({self.variant}{where}) on {self.device}, precision {self.precision}"


def render_images(models: LivePortraitModels, source: LivePortraitSource, x_d: torch.Tensor,
                  full: Optional[torch.Tensor] = None, batch_size: int = 4, device=None, precision: str = "auto",
                  progress: Optional[ProgressFn] = None) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """Render every frame into two IMAGE tensors: ``(pasted [T,H,W,3] or None, faces [T,S,S,3])``.

    ``pasted`` is ``None`` unless ``full`` (the portrait ``[1,H,W,3]``) is given. The tensors are
    allocated once at their final size and filled batch by batch (no list of batches, no copy at the
    end); for a video of any length use :func:`~.render.render_to_video`, which keeps one batch."""
    n = int(x_d.shape[0])
    size = models.output_size
    faces = torch.empty((n, size, size, 3), dtype=torch.float32)
    pasted = None
    if full is not None:
        pasted = torch.empty((n, int(full.shape[1]), int(full.shape[2]), 3), dtype=torch.float32)
    done = 0
    for face, frames in render_pasted(models, source, x_d, full, batch_size=batch_size, device=device,
                                      precision=precision, progress=progress):
        count = int(face.shape[0])
        faces[done:done + count] = face
        if pasted is not None:
            pasted[done:done + count] = frames
        done += count
    return pasted, faces


def render_stream(lp: Union[LivePortraitSet, LivePortraitModels], source: LivePortraitSource, x_d: torch.Tensor,
                  full: Optional[torch.Tensor] = None, batch_size: int = 4, device=None,
                  precision: Optional[str] = None, progress: Optional[ProgressFn] = None,
                  label: str = "LivePortrait's frames", fps: Optional[float] = None) -> FrameStream:
    """The rendered frames as a :class:`~..frames.FrameStream`, made batch by batch (:func:`~.render.render_pasted`)
    each time the stream is pulled: the faces pasted back into ``full`` (the portrait ``[1,H,W,3]``), or the face
    crops ``[S,S]`` when ``full`` is None. The same frames as :func:`render_images`, one batch in memory.

    ``lp``: a :class:`LivePortraitSet` (its networks are fetched from the cache on every pull, so a stream pulled
    after an unload loads them again; its device and precision are the defaults) or the networks themselves.
    Every batch is checked for NaN/inf before it is handed on (:class:`~..errors.NonFiniteOutputError`: "a batch
    of <label> has ...")."""
    is_set = isinstance(lp, LivePortraitSet)
    if is_set:
        device = lp.device if device is None else device
        precision = lp.precision if precision is None else precision
    precision = "auto" if precision is None else precision
    if full is not None:
        height, width = int(full.shape[1]), int(full.shape[2])
    else:  # the face crops, at the networks' output size
        height = width = int((lp.models() if is_set else lp).output_size)

    def frames(start: int = 0, stop: Optional[int] = None) -> Iterator[torch.Tensor]:
        # a section renders whole batches from the one holding `start`, the batches a whole pull renders: every
        # frame is computed in the same batch, so it is the same frame whichever part of the video is asked for
        stop = int(x_d.shape[0]) if stop is None else stop
        first, last = start - start % batch_size, min(int(x_d.shape[0]), -(-stop // batch_size) * batch_size)
        models = lp.models() if is_set else lp
        at = first
        for faces, pasted in render_pasted(models, source, x_d[first:last], full, batch_size=batch_size,
                                           device=device, precision=precision, progress=progress):
            out = faces if full is None else pasted
            n = int(out.shape[0])
            lo, hi = max(start - at, 0), min(stop - at, n)
            at += n
            if lo >= hi:
                continue
            out = out[lo:hi]
            require_finite_output("image", out, f"a batch of {label}")
            yield out

    return FrameStream(frames, int(x_d.shape[0]), height, width, fps=fps, label=label, ranged=frames)


__all__ = ["LivePortraitSet", "render_images", "render_stream"]
