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

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from ..device import autocast, full_precision, resolve_device, resolve_dtype
from ..errors import InputError
from ..geometry import hull_measure
from ..progress import Progress, ProgressFn
from ..resize import image_to_square_nchw
from .load import FOM, RESOLUTION
from .model import KP


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


def find_best_frame(landmarks_source: np.ndarray, landmarks_driving: Iterable[Optional[np.ndarray]]) -> int:
    """Index of the driving frame whose face landmarks best match the source's.

    Landmarks are centred and divided by sqrt(hull area); the frame with the smallest sum of
    squared differences wins (the first one on ties). Frames without landmarks (``None``: no face
    found) are skipped; if no frame has any, frame 0 is used."""
    def normalise(kp):
        kp = np.asarray(kp, dtype=np.float64)
        kp = kp - kp.mean(axis=0, keepdims=True)
        kp[:, :2] = kp[:, :2] / np.sqrt(hull_area(kp[:, :2]))
        return kp

    src = normalise(landmarks_source)
    best, best_norm = 0, float("inf")
    for i, lm in enumerate(landmarks_driving):
        if lm is None:
            continue
        norm = float(((src - normalise(lm)) ** 2).sum())
        if norm < best_norm:
            best, best_norm = i, norm
    return best


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
    dtype = resolve_dtype(precision, dev)
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


def animate(fom: FOM, source: torch.Tensor, driving: torch.Tensor, *, relative: bool = True,
            adapt_movement_scale: bool = True, initial_index: int = 0, batch_size: int = 8, device=None,
            precision: str = "auto", progress: Optional[ProgressFn] = None,
            out: Optional[torch.Tensor] = None, resolution: Optional[int] = None) -> torch.Tensor:
    """Animate a whole IMAGE batch: ``source`` ``[1,H,W,3]``, ``driving`` ``[T,H,W,3]`` (0..1,
    any size: both are brought to ``resolution`` squared, default the model's
    :attr:`~.load.FOM.input_size`, 256) -> ``[T,S,S,3]`` float32 on the CPU.

    Driving frames move to the device ``batch_size`` at a time and results are written into
    ``out`` (allocated here if not given) as they come, so only one batch is on the device.
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
    dev = resolve_device(device)
    res = fom.input_size if resolution is None else int(resolution)
    if out is None:
        out = torch.empty((n, res, res, 3), dtype=torch.float32)
    batches = (to_model_input(driving[i:i + batch_size], res, dev) for i in range(0, n, batch_size))
    bar = Progress((n + batch_size - 1) // batch_size, progress)
    initial = to_model_input(driving[initial_index:initial_index + 1], res, dev)
    done = 0
    for frames in animate_stream(fom, to_model_input(source[:1], res, dev), batches, relative=relative,
                                 adapt_movement_scale=adapt_movement_scale, initial=initial, device=dev,
                                 precision=precision):
        out[done:done + frames.shape[0]] = frames.permute(0, 2, 3, 1)
        done += frames.shape[0]
        bar.step(preview=out[done - 1])
    return out

