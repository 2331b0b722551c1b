"""Square face crops as records: boxes, the crop matrices and the default framing rules.

Coordinates
-----------
Every coordinate in :mod:`core.face` (boxes, landmarks, the crop matrices) uses *pixel-centre*
coordinates: pixel ``image[y, x]`` has its centre at ``(x, y)`` and covers
``[x - 0.5, x + 0.5] x [y - 0.5, y + 0.5]``. A whole ``H x W`` image therefore spans
``(-0.5, -0.5) .. (W - 0.5, H - 0.5)``, and that is the box :class:`~core.face.NoneDetector` returns.
Detector outputs (which use the "image spans 0..W" convention) are shifted by -0.5 there.

A :class:`CropRecord` holds the affine ``matrix`` (2x3) that maps full-image coordinates to crop
coordinates and its ``inverse``. A square crop of side ``L`` (full-image pixels) centred on
``(cx, cy)`` and sampled at ``S x S`` is ``u = (S / L) * (x - cx) + (S - 1) / 2`` (same for
``v``/``y``), so the crop's outer edges ``-0.5`` and ``S - 0.5`` fall exactly on the square's edges.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..device import resolve_device
from ..errors import InputError

#: Side of the square crop relative to the larger side of the detected face box. Detector boxes
#: (S3FD, BlazeFace) are tight, roughly eyebrows to chin; 1.8x gives the whole head with hair,
#: chin and a bit of neck, close to the FFHQ/VoxCeleb-style framing talking-head models expect.
DEFAULT_SCALE = 1.8
#: Vertical shift of the crop centre, in units of the box size (positive = downwards). Boxes are
#: centred near the nose; moving the square up by 0.1 leaves room for the forehead and hair.
DEFAULT_VY = -0.1
DEFAULT_CROP_SIZE = 512

DeviceLike = Union[str, torch.device, None]
Box = Tuple[float, float, float, float]


def _device(device: DeviceLike) -> torch.device:
    """``device`` as a torch device (None = "auto")."""
    return resolve_device("auto" if device is None else device)


# --------------------------------------------------------------------------- matrices
def to_3x3(m) -> np.ndarray:
    """2x3 (or 3x3) affine -> 3x3 float64 with last row ``0 0 1``."""
    a = np.asarray(m, dtype=np.float64)
    if a.shape == (3, 3):
        return a.copy()
    if a.shape != (2, 3):
        raise ValueError(f"expected a 2x3 or 3x3 affine matrix, got shape {a.shape}")
    return np.vstack([a, [0.0, 0.0, 1.0]])


def invert_affine(m) -> np.ndarray:
    """Inverse of a 2x3 affine matrix, as 2x3."""
    return np.linalg.inv(to_3x3(m))[:2]


def transform_points(m, points) -> np.ndarray:
    """Apply a 2x3 affine to ``[N, 2]`` points (x, y)."""
    a = np.asarray(m, dtype=np.float64)[:2]
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p @ a[:, :2].T + a[:, 2]


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _resize_matrix(src_hw: Tuple[int, int], dst_hw: Tuple[int, int]) -> np.ndarray:
    """3x3 map from pixel centres of an image to those of the same image resized."""
    ry, rx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return np.array([[rx, 0.0, 0.5 * (rx - 1.0)], [0.0, ry, 0.5 * (ry - 1.0)], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------- crop record
def _opt_array(v, shape_tail=None) -> Optional[np.ndarray]:
    if v is None:
        return None
    a = np.asarray(v, dtype=np.float64)
    if shape_tail is not None:
        a = a.reshape(-1, *shape_tail)
    return a


@dataclass(eq=False)
class CropRecord:
    """Where a square crop came from, so that results can be pasted back.

    ``matrix`` maps full-image pixel coordinates to crop pixel coordinates (2x3), ``inverse``
    the other way. ``bbox`` is the detected face box ``(x0, y0, x1, y1)`` in full-image pixels
    (or None), ``landmarks`` the detector's ``[N, 2]`` points in full-image pixels (or None).
    """

    matrix: np.ndarray
    inverse: Optional[np.ndarray]
    crop_size: int
    full_size: Tuple[int, int]
    bbox: Optional[Box] = None
    score: Optional[float] = None
    landmarks: Optional[np.ndarray] = None
    detector: str = ""
    num_faces: int = 1

    def __post_init__(self) -> None:
        self.matrix = to_3x3(self.matrix)[:2]
        self.inverse = invert_affine(self.matrix) if self.inverse is None else to_3x3(self.inverse)[:2]
        self.crop_size = int(self.crop_size)
        self.full_size = (int(self.full_size[0]), int(self.full_size[1]))
        if self.bbox is not None:
            self.bbox = tuple(float(v) for v in self.bbox)
        self.score = None if self.score is None else float(self.score)
        self.landmarks = _opt_array(self.landmarks, (2,))
        self.num_faces = int(self.num_faces)

    # 3x3 helpers
    @property
    def matrix3(self) -> np.ndarray:
        """Full -> crop as 3x3."""
        return to_3x3(self.matrix)

    @property
    def inverse3(self) -> np.ndarray:
        """Crop -> full as 3x3."""
        return to_3x3(self.inverse)

    @property
    def scale(self) -> float:
        """Crop pixels per full-image pixel (> 1: the crop enlarges the face)."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def to_crop(self, points) -> np.ndarray:
        """Full-image points ``[N, 2]`` -> crop points."""
        return transform_points(self.matrix, points)

    def to_full(self, points) -> np.ndarray:
        """Crop points ``[N, 2]`` -> full-image points."""
        return transform_points(self.inverse, points)

    def landmarks_in_crop(self) -> Optional[np.ndarray]:
        return None if self.landmarks is None else self.to_crop(self.landmarks)

    def with_crop_size(self, size: int) -> "CropRecord":
        """The same square region sampled at ``size x size`` (e.g. a model's own resolution)."""
        size = int(size)
        if size < 1:
            raise InputError(f"crop size must be at least 1, got {size}")
        r = _resize_matrix((self.crop_size, self.crop_size), (size, size))
        return CropRecord(matrix=(r @ self.matrix3)[:2], inverse=None, crop_size=size,
                          full_size=self.full_size, bbox=self.bbox, score=self.score,
                          landmarks=self.landmarks, detector=self.detector, num_faces=self.num_faces)

    def to_dict(self) -> Dict[str, Any]:
        """Plain, JSON-serialisable dict (lists and numbers)."""
        return {
            "version": 1,
            "matrix": self.matrix.tolist(),
            "inverse": self.inverse.tolist(),
            "crop_size": self.crop_size,
            "full_size": list(self.full_size),
            "bbox": None if self.bbox is None else list(self.bbox),
            "score": self.score,
            "landmarks": None if self.landmarks is None else self.landmarks.tolist(),
            "detector": self.detector,
            "num_faces": self.num_faces,
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CropRecord":
        try:
            return cls(matrix=d["matrix"], inverse=d.get("inverse"), crop_size=d["crop_size"],
                       full_size=tuple(d["full_size"]), bbox=d.get("bbox"), score=d.get("score"),
                       landmarks=d.get("landmarks"), detector=d.get("detector", ""),
                       num_faces=d.get("num_faces", 1))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a valid face crop record: {exc}") from exc


def crop_from_box(box: Sequence[float], full_hw: Tuple[int, int], crop_size: int = DEFAULT_CROP_SIZE,
                  scale: float = DEFAULT_SCALE, vy: float = DEFAULT_VY, vx: float = 0.0, *,
                  score: Optional[float] = None, landmarks=None, detector: str = "",
                  num_faces: int = 1) -> CropRecord:
    """Square crop around a box: side ``scale * max(w, h)``, centre = box centre shifted by
    ``(vx, vy) * max(w, h)`` (positive ``vy`` moves it down). The square may extend past the
    image (the crop is padded there)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    size = max(x1 - x0, y1 - y0)
    if not (x1 > x0 and y1 > y0) or not math.isfinite(size):
        raise InputError(f"invalid face box {tuple(box)}: it must have a positive width and height")
    crop_size = int(crop_size)
    if crop_size < 1:
        raise InputError(f"crop size must be at least 1, got {crop_size}")
    if not scale > 0:
        raise InputError(f"crop scale must be positive, got {scale}")
    side = float(scale) * size
    cx = 0.5 * (x0 + x1) + float(vx) * size
    cy = 0.5 * (y0 + y1) + float(vy) * size
    s = crop_size / side
    c = 0.5 * (crop_size - 1)
    matrix = np.array([[s, 0.0, c - s * cx], [0.0, s, c - s * cy]])
    return CropRecord(matrix=matrix, inverse=None, crop_size=crop_size, full_size=tuple(full_hw),
                      bbox=(x0, y0, x1, y1), score=score, landmarks=landmarks, detector=detector,
                      num_faces=num_faces)



__all__ = ["Box", "CropRecord", "DEFAULT_CROP_SIZE", "DEFAULT_SCALE", "DEFAULT_VY", "DeviceLike", "crop_from_box",
           "invert_affine", "to_3x3", "transform_points"]
