"""First Order Motion Model inference: drive a source image with a video, batch by batch.

The source is encoded once (its keypoints, generator features and the downscaled copy the
dense-motion network reads do not depend on the frame); driving frames then go through the
keypoint detector, dense motion and decoder in batches on the device. Frames stream in and out
(:func:`animate_stream`), so memory does not grow with the video's length.

Relative mode (what ``demo.py --relative --adapt_scale`` does): each frame's keypoints move the
source keypoints by their displacement from an initial driving frame (the first, or the one
whose face best matches the source with ``find_best_frame``), scaled by the ratio of the
keypoint convex-hull sizes; jacobians are composed the same way.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Iterator, Optional, Union

import numpy as np
import torch

from ..device import autocast, full_precision, resolve_device, resolve_run_dtype
from ..errors import InputError
from ..frames import FrameStream
from ..geometry import hull_measure
from ..progress import Progress, ProgressFn
from ..resize import image_to_square_nchw
from .load import FOM, RESOLUTION
from .model import KP

#: the model for one pull of a :func:`frame_stream`: the model itself, or a function returning a context
#: manager that gives it (and may free it when the pull ends)
ModelSource = Union[FOM, Callable[[], ContextManager[FOM]]]

# --------------------------------------------------------------------------- keypoint maths
hull_area = hull_measure  # area of the convex hull of 2-D points


def movement_scale(kp_source: KP, kp_initial: KP) -> float:
    """sqrt(source hull area) / sqrt(initial driving hull area), from the first batch item."""
    src = kp_source["value"][0].detach().float().cpu().numpy()
    drv = kp_initial["value"][0].detach().float().cpu().numpy()
    return float(np.sqrt(hull_area(src)) / np.sqrt(hull_area(drv)))


def normalize_kp(kp_source: KP, kp_driving: KP, kp_driving_initial: KP, adapt_movement_scale: bool = False,
                 use_relative_movement: bool = False, use_relative_jacobian: bool = False,
                 scale: Optional[float] = None) -> KP:
    """Driving keypoints as the generator should see them.

    Absolute mode returns ``kp_driving`` unchanged. Relative mode moves the source keypoints by
    ``(driving - initial) * scale`` and, with ``use_relative_jacobian``, sets each jacobian to
    ``J_driving @ inv(J_initial) @ J_source``. ``scale`` (if given) overrides the hull ratio that
    ``adapt_movement_scale`` computes, so a long video computes it once.
    """
    out = dict(kp_driving)
    if not use_relative_movement:
        return out
    if scale is None:
        scale = movement_scale(kp_source, kp_driving_initial) if adapt_movement_scale else 1.0
    out["value"] = (kp_driving["value"] - kp_driving_initial["value"]) * scale + kp_source["value"]
    if use_relative_jacobian:
        rel = torch.matmul(kp_driving["jacobian"], torch.inverse(kp_driving_initial["jacobian"]))
        out["jacobian"] = torch.matmul(rel, kp_source["jacobian"])
    return out


def _normalise_landmarks(kp) -> np.ndarray:
    """Landmarks centred and divided by sqrt(hull area) (float64), as find_best_frame compares them."""
    kp = np.asarray(kp, dtype=np.float64)
    kp = kp - kp.mean(axis=0, keepdims=True)
    kp[:, :2] = kp[:, :2] / np.sqrt(hull_area(kp[:, :2]))
    return kp


class BestFrameSearch:
    """:func:`find_best_frame` one driving frame at a time, for a video that is not held whole: :meth:`add`
    each frame's landmarks in order (and, optionally, the frame itself); :attr:`index` is the best frame so
    far (0 while no frame had a face) and :attr:`frame` a copy of that frame, when frames were given."""

    def __init__(self, landmarks_source: np.ndarray) -> None:
        self._source = _normalise_landmarks(landmarks_source)
        self._best_norm = float("inf")
        self.seen = 0
        self.index = 0
        self.frame: Optional[torch.Tensor] = None

    def add(self, landmarks: Optional[np.ndarray], frame: Optional[torch.Tensor] = None) -> None:
        i = self.seen
        self.seen += 1
        if i == 0 and frame is not None:
            self.frame = frame.clone()  # frame 0 is the answer until a frame with a face matches better
        if landmarks is None:
            return
        norm = float(((self._source - _normalise_landmarks(landmarks)) ** 2).sum())
        if norm < self._best_norm:  # strictly: the first one wins on ties
            self.index, self._best_norm = i, norm
            if frame is not None:
                self.frame = frame.clone()  # a copy, so the rest of its batch can be freed


def find_best_frame(landmarks_source: np.ndarray, landmarks_driving: Iterable[Optional[np.ndarray]]) -> int:
    """Index of the driving frame whose face landmarks best match the source's.

    Landmarks are centred and divided by sqrt(hull area); the frame with the smallest sum of
    squared differences wins (the first one on ties). Frames without landmarks (``None``: no face
    found) are skipped; if no frame has any, frame 0 is used."""
    search = BestFrameSearch(landmarks_source)
    for lm in landmarks_driving:
        search.add(lm)
    return search.index


# --------------------------------------------------------------------------- images
def to_model_input(images: torch.Tensor, size: int = RESOLUTION, device=None) -> torch.Tensor:
    """IMAGE ``[B,H,W,3]`` (0..1) -> ``[B,3,size,size]`` channels-last on ``device``; other sizes
    are resized with area averaging (deepstory's portrait step)."""
    return image_to_square_nchw(images, size, device, channels_last=True)


# --------------------------------------------------------------------------- inference
@dataclass
class SourceState:
    """Everything about the source that every frame reuses."""

    kp: KP
    encoded: torch.Tensor       # generator features after first + down blocks
    small: torch.Tensor         # the source at the dense-motion network's resolution


def _float_kp(kp: KP) -> KP:
    return {k: v.float() for k, v in kp.items()}


@torch.inference_mode()
def prepare_source(fom: FOM, source: torch.Tensor) -> SourceState:
    """``source`` ``[1,3,H,W]`` on the model's device."""
    return SourceState(kp=_float_kp(fom.kp_detector(source)), encoded=fom.generator.encode(source),
                       small=fom.generator.dense_motion_network.downsample(source))


@torch.inference_mode()
def keypoints(fom: FOM, frames: torch.Tensor) -> KP:
    return _float_kp(fom.kp_detector(frames))


@torch.inference_mode()
def render(fom: FOM, state: SourceState, kp_driving: KP) -> torch.Tensor:
    """Frames ``[B,3,H,W]`` in (0,1) for normalised driving keypoints (batch B)."""
    motion = fom.generator.dense_motion_network(state.small, kp_driving, state.kp)
    return fom.generator.decode(state.encoded, motion)


def animate_stream(fom: FOM, source: torch.Tensor, driving: Iterable[torch.Tensor], *, relative: bool = True,
                   adapt_movement_scale: bool = True, initial: Optional[torch.Tensor] = None,
                   device=None, precision: str = "auto") -> Iterator[torch.Tensor]:
    """Yield animated frames ``[B,3,S,S]`` (float32, CPU; ``S`` = :attr:`~.load.FOM.output_size`) per driving
    batch.

    ``source``: ``[1,3,H,W]`` in 0..1; ``driving``: batches ``[B,3,H,W]`` (the batch size is the
    caller's choice); ``initial``: the relative-mode reference frame ``[1,3,H,W]`` (default: the
    first driving frame). Networks run under autocast at ``precision`` on a GPU; keypoint maths
    (inverses, hull areas) stays in float32.
    """
    dev = resolve_device(device)
    dtype = resolve_run_dtype(precision, dev, "FOM animates")
    with autocast(dev, dtype):
        state = prepare_source(fom, source.to(dev, torch.float32))
        kp_initial = keypoints(fom, initial.to(dev, torch.float32)) if initial is not None else None
        scale: Optional[float] = None
        for batch in driving:
            batch = batch.to(dev, torch.float32)
            kp_driving = keypoints(fom, batch)
            if kp_initial is None:
                kp_initial = {k: v[:1] for k, v in kp_driving.items()}
            if scale is None:  # once per video
                scale = movement_scale(state.kp, kp_initial) if relative and adapt_movement_scale else 1.0
            with full_precision(dev):
                kp_norm = normalize_kp(state.kp, kp_driving, kp_initial, use_relative_movement=relative,
                                       use_relative_jacobian=relative, scale=scale)
            yield render(fom, state, kp_norm).float().cpu()


def frame_stream(model: ModelSource, source: torch.Tensor, driving: FrameStream, *, relative: bool = True,
                 adapt_movement_scale: bool = True, initial: Optional[torch.Tensor] = None, batch_size: int = 8,
                 device=None, precision: str = "auto", resolution: Optional[int] = None,
                 progress: Optional[ProgressFn] = None, label: str = "FOM's frames") -> FrameStream:
    """The animation of ``source`` (IMAGE ``[1,H,W,3]``) by ``driving`` (a :class:`~core.frames.FrameStream` of
    any frame size) as a FrameStream of ``[B,S,S,3]`` float32 CPU batches, ``batch_size`` driving frames each:
    nothing runs now; each pull pulls ``driving`` once and runs :func:`animate_stream` on it.

    ``initial``: the relative-mode reference frame, IMAGE ``[1,H,W,3]`` (default: the first driving frame).
    ``resolution``: the side ``S`` frames are brought to and come out at (default: the model's
    :attr:`~.load.FOM.input_size`). ``model``: the :class:`~.load.FOM`, or a zero-argument function returning a
    context manager that gives the model for the length of one pull (e.g. loading it through the model cache
    and freeing it after, so a stream pulled long after it was made still finds its model); then
    ``resolution`` is required. ``progress(done, total, preview)`` is called per batch of every pull with the
    batch's last frame."""
    if source.ndim != 4 or source.shape[0] < 1:
        raise InputError("the source must be an IMAGE with at least one picture")
    if len(driving) == 0:
        raise InputError("the driving video has no frames")
    if batch_size < 1:
        raise InputError("batch_size must be at least 1")
    if isinstance(model, FOM):
        held = model
        resolution = held.input_size if resolution is None else resolution
        open_model: Callable[[], ContextManager[FOM]] = lambda: contextlib.nullcontext(held)  # noqa: E731
    else:
        if resolution is None:
            raise ValueError("frame_stream needs the resolution when the model is loaded at pull time")
        open_model = model
    res, n, step = int(resolution), len(driving), int(batch_size)
    portrait = source[:1]

    def pull() -> Iterator[torch.Tensor]:
        with open_model() as fom:
            dev = resolve_device(device)
            batches = driving.batches(step)
            first = next(batches)  # the stream has frames (checked above), or it raises its own error
            reference = initial if initial is not None else first[:1]
            frames = (to_model_input(b, res, dev) for b in itertools.chain([first], batches))
            bar = Progress(-(-n // step), progress)
            for out in animate_stream(fom, to_model_input(portrait, res, dev), frames, relative=relative,
                                      adapt_movement_scale=adapt_movement_scale,
                                      initial=to_model_input(reference, res, dev), device=dev, precision=precision):
                out = out.permute(0, 2, 3, 1).contiguous()
                bar.step(preview=out[-1])
                yield out

    return FrameStream(pull, n, res, res, driving.fps, label)


def animate(fom: FOM, source: torch.Tensor, driving: torch.Tensor, *, relative: bool = True,
            adapt_movement_scale: bool = True, initial_index: int = 0, batch_size: int = 8, device=None,
            precision: str = "auto", progress: Optional[ProgressFn] = None,
            out: Optional[torch.Tensor] = None, resolution: Optional[int] = None) -> torch.Tensor:
    """Animate a whole IMAGE batch: ``source`` ``[1,H,W,3]``, ``driving`` ``[T,H,W,3]`` (0..1,
    any size: both are brought to ``resolution`` squared, default the model's
    :attr:`~.load.FOM.input_size`, 256) -> ``[T,S,S,3]`` float32 on the CPU.

    Driving frames move to the device ``batch_size`` at a time (:func:`frame_stream`) and results are
    written into ``out`` (allocated here if not given) as they come, so only one batch is on the device.
    """
    if source.ndim != 4 or source.shape[0] < 1:
        raise InputError("the source must be an IMAGE with at least one picture")
    n = int(driving.shape[0])
    if n == 0:
        raise InputError("the driving video has no frames")
    if not 0 <= initial_index < n:
        raise InputError(f"initial frame {initial_index} is outside the driving video (0..{n - 1})")
    if batch_size < 1:
        raise InputError("batch_size must be at least 1")
    res = fom.input_size if resolution is None else int(resolution)
    if out is None:
        out = torch.empty((n, res, res, 3), dtype=torch.float32)
    stream = frame_stream(fom, source, FrameStream.from_images(driving, batch_size=batch_size),
                          relative=relative, adapt_movement_scale=adapt_movement_scale,
                          initial=driving[initial_index:initial_index + 1], batch_size=batch_size, device=device,
                          precision=precision, resolution=res, progress=progress)
    done = 0
    for frames in stream:
        out[done:done + frames.shape[0]] = frames
        done += frames.shape[0]
    return out
