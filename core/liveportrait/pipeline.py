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
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import torch

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


__all__ = ["LivePortraitSet", "render_images"]
