"""First Order Motion Model (vox-256): networks, official-checkpoint loading, batched inference.

Library use::

    from core.fom import get_fom, animate, best_frame_index
    fom = get_fom("vox-cpk.pth.tar")                      # cached; or load_fom(path) uncached
    frames = animate(fom, portrait, driving, relative=True, adapt_movement_scale=True)
    start = best_frame_index(portrait, driving)           # face landmarks (S3FD + 2D-FAN)
    frames = animate(fom, portrait, driving, relative=True, initial_index=start)
    # a video that comes batch by batch (a core.frames.FrameStream), never held whole:
    start, first = best_frame_in_stream(portrait, driving_stream)       # pulls it once
    stream = frame_stream(fom, portrait, driving_stream, initial=first)  # pulls it again when pulled
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import numpy as np
import torch

from .. import weights
from ..cache import CACHE, file_key
from ..device import resolve_device
from ..errors import InputError
from ..progress import Progress, ProgressFn
from .animate import (RESOLUTION, BestFrameSearch, ModelSource, animate, animate_stream, find_best_frame, frame_stream,
                      hull_area, keypoints, movement_scale, normalize_kp, prepare_source, render, to_model_input)
from .load import FOM, infer_config, load_fom, preset

FILE_ID = "fom/vox-256"


def get_fom(checkpoint: str = "vox-cpk.pth.tar", device="auto", download: bool = True) -> FOM:
    """The checkpoint (a name in the ``fom`` models folder, or the official file) loaded once,
    optimised for inference (:meth:`FOM.optimize_for_inference`) and cached; the networks stay in
    float32 (half precision comes from autocast at run time)."""
    path = weights.resolve_choice(FILE_ID, checkpoint, download=download)
    dev = resolve_device(device)
    return CACHE.get("fom", file_key(path), lambda: load_fom(path).optimize_for_inference(), dev, torch.float32,
                     info={"file": path.name})


def _landmark_tools(portrait: torch.Tensor, device, download: bool):
    """The face detector and landmarker, and the portrait's landmarks (:class:`InputError` without a face)."""
    from ..face import face_landmarks, get_detector, get_landmarker

    detector = get_detector("face-alignment sfd", device, download)
    landmarker = get_landmarker(device, download)
    (source,) = face_landmarks(portrait[:1], detector, landmarker)
    if source is None:
        raise InputError("find_best_frame: no face was found in the portrait; switch find_best_frame off")
    return detector, landmarker, source


def best_frame_index(portrait: torch.Tensor, driving: torch.Tensor, device="auto", download: bool = True,
                     progress: Optional[ProgressFn] = None) -> int:
    """Index of the driving frame whose face landmarks best match the portrait's (the reference
    frame of ``animate(..., initial_index=...)``).

    ``portrait``: IMAGE ``[B, H, W, 3]`` (its first image is used); ``driving``: IMAGE ``[T, H, W, 3]``.
    The landmarks come from the "face-alignment sfd" detector and the 2D-FAN landmarker
    (:func:`core.face.get_detector`, :func:`core.face.get_landmarker`, weights found or, with
    ``download``, downloaded), the match from :func:`find_best_frame`; driving frames without a face
    are skipped (frame 0 when none has one). ``progress(done, total)`` is called per driving frame.
    No face in the portrait: :class:`InputError`.
    """
    from ..face import face_landmarks

    detector, landmarker, source = _landmark_tools(portrait, device, download)
    found = face_landmarks(driving, detector, landmarker, progress=progress)
    return find_best_frame(source, found)


def best_frame_in_stream(portrait: torch.Tensor, driving: Iterable[torch.Tensor], device="auto",
                         download: bool = True, progress: Optional[ProgressFn] = None,
                         total: Optional[int] = None) -> Tuple[int, torch.Tensor]:
    """:func:`best_frame_index` for a driving video that comes in IMAGE batches (a
    :class:`~core.frames.FrameStream`, pulled once here): ``(index, frame)``, the frame as IMAGE ``[1,H,W,3]``.
    The best frame so far is kept while the batches pass (:class:`~.animate.BestFrameSearch`), so the video
    need not be held, nor pulled again to find that frame. ``progress(done, total)`` is called per batch,
    counting frames of ``total`` (default ``len(driving)``)."""
    from ..face import face_landmarks

    detector, landmarker, source = _landmark_tools(portrait, device, download)
    search = BestFrameSearch(source)
    bar = Progress(total if total is not None else len(driving), progress)
    for batch in driving:
        found: List[Optional[np.ndarray]] = face_landmarks(batch, detector, landmarker)
        for lm, frame in zip(found, batch):
            search.add(lm, frame[None])
        bar.step(int(batch.shape[0]))
    if search.frame is None:
        raise InputError("find_best_frame: the driving video has no frames")
    return search.index, search.frame


__all__ = ["FOM", "FILE_ID", "RESOLUTION", "BestFrameSearch", "ModelSource", "animate", "animate_stream",
           "best_frame_in_stream", "best_frame_index", "find_best_frame", "frame_stream", "get_fom", "hull_area",
           "infer_config", "keypoints", "load_fom", "movement_scale", "normalize_kp", "prepare_source", "preset",
           "render", "to_model_input"]
