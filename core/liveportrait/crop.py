"""The face crop LivePortrait's networks were trained on, and pasting frames back.

The official cropper (``src/utils/crop.py``) takes two anchor points, the eye centre (mean of
both eyes' centres) and the lip centre, rotates the frame so the eye-to-lip axis points straight
down, takes the bounding box of all landmarks in that rotated frame, makes it square (its longer
side), scales it (source 2.3, driving 2.2) and shifts it by ``vy_ratio`` of its side along the
eye-to-lip axis (negative = towards the forehead). The result is a similarity transform to a
``dsize`` square; ``vx_ratio`` is accepted by the official function but never applied.

Landmark layouts: InsightFace 106 points (the official detector; eyes 33/35/40/39 and
87/89/94/93, lips 52/61) and the 68-point layout of face-alignment (eyes 36-41 / 42-47, the
inner-lip corners 60/64), so LoadPortrait's own landmarks give the same kind of crop.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..frames import FrameStream
from ..face import NO_FACE_MESSAGE, CropRecord, crop_image, pick_largest
from .load import OUTPUT_SIZE

SOURCE_SCALE, SOURCE_VY = 2.3, -0.125
DRIVING_SCALE, DRIVING_VY = 2.2, -0.1
#: driving frames the face is looked for in (evenly spaced, first and last included)
DRIVING_DETECT_FRAMES = 8

_ANCHORS = {  # layout size -> (left-eye indices, right-eye indices, lip indices)
    106: ((33, 35, 40, 39), (87, 89, 94, 93), (52, 61)),
    68: ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47), (60, 64)),
}


def anchor_points(landmarks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(eye centre, lip centre) of a 106- or 68-point landmark set."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if len(pts) not in _ANCHORS:
        raise ValueError(f"expected 106 or 68 landmarks, got {len(pts)}")
    left, right, lip = _ANCHORS[len(pts)]
    eye = (pts[list(left)].mean(0) + pts[list(right)].mean(0)) / 2
    return eye, pts[list(lip)].mean(0)


def crop_square(landmarks: np.ndarray, scale: float = SOURCE_SCALE, vy_ratio: float = SOURCE_VY,
                rotate: bool = True) -> Tuple[np.ndarray, float, float]:
    """(centre xy, side, angle in radians) of the official square face crop."""
    pts = np.asarray(landmarks, dtype=np.float64)
    eye, lip = anchor_points(pts)
    uy = lip - eye
    length = float(np.linalg.norm(uy))
    uy = np.array([0.0, 1.0]) if length <= 1e-3 else uy / length
    ux = np.array([uy[1], -uy[0]])
    angle = math.acos(max(-1.0, min(1.0, ux[0])))
    if ux[1] < 0:
        angle = -angle
    if not rotate:
        ux, uy, angle = np.array([1.0, 0.0]), np.array([0.0, 1.0]), 0.0
    basis = np.stack([ux, uy])
    centre0 = pts.mean(0)
    rotated = (pts - centre0) @ basis.T
    lo, hi = rotated.min(0), rotated.max(0)
    mid = (lo + hi) / 2
    side = float(max(hi - lo)) * scale
    centre = centre0 + ux * mid[0] + uy * mid[1] + uy * (vy_ratio * side)
    return centre, side, angle


def crop_matrix(landmarks: np.ndarray, dsize: int = OUTPUT_SIZE, scale: float = SOURCE_SCALE,
                vy_ratio: float = SOURCE_VY, rotate: bool = True) -> np.ndarray:
    """3x3 similarity transform, original pixel coordinates -> ``dsize`` crop coordinates
    (pixel centres at integers, as cv2.warpAffine uses them)."""
    (cx, cy), side, angle = crop_square(landmarks, scale, vy_ratio, rotate)
    s = dsize / side
    cos, sin = math.cos(angle), math.sin(angle)
    t = dsize / 2
    return np.array([[s * cos, s * sin, t - s * (cos * cx + sin * cy)],
                     [-s * sin, s * cos, t - s * (-sin * cx + cos * cy)],
                     [0.0, 0.0, 1.0]])


def crop_record(landmarks: np.ndarray, full_hw: Sequence[int], dsize: int = OUTPUT_SIZE, scale: float = SOURCE_SCALE,
                vy_ratio: float = SOURCE_VY, rotate: bool = True, detector: str = "landmarks") -> CropRecord:
    """The official crop as a :class:`CropRecord` (usable with ``face.crop_image`` / ``paste_back``)."""
    m = crop_matrix(landmarks, dsize, scale, vy_ratio, rotate)
    inv = np.linalg.inv(m)
    return CropRecord(matrix=m[:2], inverse=inv[:2], crop_size=int(dsize), full_size=tuple(int(v) for v in full_hw),
                      bbox=None, score=1.0, landmarks=np.asarray(landmarks, dtype=np.float64), detector=detector,
                      num_faces=1)


def record_from_box(box, full_hw: Sequence[int], size: int, scale: float = SOURCE_SCALE, vy: float = SOURCE_VY,
                    face_box: bool = True) -> CropRecord:
    """LivePortrait's crop from a detection box. The official crop is ``scale`` x the landmarks'
    extent, shifted by ``vy`` x its side; a detector box spans about that extent, so the shift in
    box units is ``vy * scale``. Boxes that already are the crop (center / none) are used as is."""
    from ..face import crop_from_box

    if not face_box:
        return crop_from_box(box, full_hw, size, scale=1.0, vy=0.0)
    return crop_from_box(box, full_hw, size, scale=scale, vy=vy * scale)


def _detect_picks(count: int) -> np.ndarray:
    """The frames (indices) the driving video's face is looked for in: up to :data:`DRIVING_DETECT_FRAMES`,
    evenly spaced, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(DRIVING_DETECT_FRAMES, count)).round().astype(int))


def driving_record(picked: Sequence[torch.Tensor], frame_hw: Tuple[int, int], detector, size: int) -> CropRecord:
    """The one crop for a whole driving video from the frames it was looked for in (``[H, W, 3]`` each): the
    largest face's box of each frame where one is found, averaged, then :func:`record_from_box` with
    :data:`DRIVING_SCALE` / :data:`DRIVING_VY` (or the box as is when the detector's boxes already are the crop).
    No face in any of them: :class:`InputError` naming the fallback detectors."""
    boxes = [pick_largest(found).box for found in (detector.detect(frame) for frame in picked) if found]
    if not boxes:
        raise InputError(NO_FACE_MESSAGE.replace("the image", "the driving video"))
    box = np.mean(np.asarray(boxes, dtype=np.float64), axis=0)
    return record_from_box(box, tuple(frame_hw), size, DRIVING_SCALE, DRIVING_VY,
                           getattr(detector, "is_face_box", True))


def crop_driving_video(frames: torch.Tensor, detector, size: int, device=None) -> torch.Tensor:
    """A driving video cut to LivePortrait's driving crop, one box for the whole video.

    ``frames``: IMAGE ``[T, H, W, 3]``; ``detector``: a :class:`core.face.FaceDetector`. The box comes from
    :func:`driving_record` over the frames :func:`_detect_picks` chooses; every frame is cut to it:
    ``[T, size, size, 3]`` float32 on the CPU, black where the square runs past the frame. ``device``: where the
    crops are resampled.
    """
    record = driving_record([frames[i] for i in _detect_picks(frames.shape[0])], frames.shape[1:3], detector, size)
    return crop_image(frames, record, padding_mode="zeros", device=device)


def crop_driving_stream(frames: FrameStream, detector, size: int, device=None) -> FrameStream:
    """:func:`crop_driving_video` for a :class:`~core.frames.FrameStream`: one pull now keeps only the frames the
    face is looked for in (a few), the box is found, and the returned stream cuts each batch to it as it is
    pulled - the same frames as the IMAGE version, with a batch in memory instead of the video."""
    if frames.count == 0:
        raise InputError("the driving video has no frames")
    picks = set(int(i) for i in _detect_picks(frames.count))
    picked, start = [], 0
    for batch in frames:
        picked += [batch[i - start].clone() for i in range(start, start + int(batch.shape[0])) if i in picks]
        start += int(batch.shape[0])
    record = driving_record(picked, (frames.height, frames.width), detector, size)
    del picked
    return frames.map(lambda batch: crop_image(batch, record, padding_mode="zeros", device=device), size, size,
                      f"{frames.label}, cut to the face")
