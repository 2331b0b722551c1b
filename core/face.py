"""Face detection, square face crops and pasting the crops back.

Coordinates
-----------
Every coordinate in this module (boxes, landmarks, the crop matrices) uses *pixel-centre*
coordinates: pixel ``image[y, x]`` has its centre at ``(x, y)`` and covers
``[x - 0.5, x + 0.5] x [y - 0.5, y + 0.5]``. A whole ``H x W`` image therefore spans
``(-0.5, -0.5) .. (W - 0.5, H - 0.5)``, and that is the box :class:`NoneDetector` returns.
Detector outputs (which use the "image spans 0..W" convention) are shifted by -0.5 here.

A :class:`CropRecord` holds the affine ``matrix`` (2x3) that maps full-image coordinates to crop
coordinates and its ``inverse``. A square crop of side ``L`` (full-image pixels) centred on
``(cx, cy)`` and sampled at ``S x S`` is ``u = (S / L) * (x - cx) + (S - 1) / 2`` (same for
``v``/``y``), so the crop's outer edges ``-0.5`` and ``S - 0.5`` fall exactly on the square's edges.

Warping
-------
:func:`crop_image` and :func:`paste_back` sample with ``torch.nn.functional.grid_sample``
(bilinear, ``align_corners=False``, which is exactly the pixel-centre convention above) on the
chosen device, batched and in chunks. The sampling grid is computed once per call in float64 on
the CPU; warps that are pure integer translations are done by indexing, so they reproduce pixels
exactly. When a warp shrinks the picture by more than 25 % the source is first resized with an
antialiasing filter, so downscaled crops (big photos) and pasted crops (small faces) do not
alias. ``"reflection"`` padding mirrors about the image edges (the edge pixel is repeated).

Detectors
---------
:class:`FaceDetector` backends: face-alignment's S3FD and BlazeFace networks (weights loaded only
through :func:`core.weights.load_state_dict`, never downloaded here), :class:`CenterDetector` and
:class:`NoneDetector`. :func:`make_detector` builds one by its UI name.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .device import resolve_device
from .errors import CheckpointError, InputError, TalkingHeadError
from .image import ensure_image
from .progress import Progress, ProgressFn
from .weights import check_state_dict, load_state_dict

log = logging.getLogger(__name__)

#: Side of the square crop relative to the larger side of the detected face box. Detector boxes
#: (S3FD, BlazeFace) are tight, roughly eyebrows to chin; 1.8x gives the whole head with hair,
#: chin and a bit of neck, close to the FFHQ/VoxCeleb-style framing talking-head models expect.
DEFAULT_SCALE = 1.8
#: Vertical shift of the crop centre, in units of the box size (positive = downwards). Boxes are
#: centred near the nose; moving the square up by 0.1 leaves room for the forehead and hair.
DEFAULT_VY = -0.1
DEFAULT_CROP_SIZE = 512
PADDING_MODES = ("zeros", "border", "reflection")

DETECTOR_CHOICES = ["face-alignment sfd", "face-alignment blazeface", "center", "none (already cropped)"]
WEIGHT_IDS = {
    "s3fd": "face_detection/s3fd",
    "blazeface": "face_detection/blazeface",
    "blazeface_anchors": "face_detection/blazeface_anchors",
}

DeviceLike = Union[str, torch.device, None]
Box = Tuple[float, float, float, float]


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


# --------------------------------------------------------------------------- warping
def _device(device: DeviceLike) -> torch.device:
    return resolve_device("auto" if device is None else device)


def _integer_translation(m: np.ndarray, tol: float = 1e-6) -> Optional[Tuple[int, int]]:
    """``(tx, ty)`` when the 2x3 map is ``u = x + tx, v = y + ty`` with integer offsets."""
    if not np.allclose(m[:, :2], np.eye(2), rtol=0.0, atol=1e-9):
        return None
    t = m[:, 2]
    r = np.round(t)
    if np.all(np.abs(t - r) <= tol):
        return int(r[0]), int(r[1])
    return None


def _source_index(n_out: int, offset: int, n_src: int, padding_mode: str, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices into a source axis for an integer shift, and a validity mask (zeros padding)."""
    idx = torch.arange(n_out, device=device) - offset
    valid = (idx >= 0) & (idx < n_src)
    if padding_mode == "border":
        idx = idx.clamp(0, n_src - 1)
    elif padding_mode == "reflection":  # mirror about the edges: ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...
        period = 2 * n_src
        idx = idx % period
        idx = torch.where(idx >= n_src, period - 1 - idx, idx)
    else:
        idx = idx.clamp(0, n_src - 1)
    return idx, valid


def _shift(src: torch.Tensor, t: Tuple[int, int], dsize: Tuple[int, int], padding_mode: str) -> torch.Tensor:
    """Exact integer-translation warp of ``[B, C, h, w]`` into ``dsize``."""
    h, w = src.shape[-2:]
    ix, vx = _source_index(dsize[1], t[0], w, padding_mode, src.device)
    iy, vy = _source_index(dsize[0], t[1], h, padding_mode, src.device)
    out = src.index_select(-2, iy).index_select(-1, ix)
    if padding_mode == "zeros":
        out = out * (vy[:, None] & vx[None, :]).to(out.dtype)
    return out


def _sampling_grid(m_src_to_dst: np.ndarray, src_hw: Tuple[int, int], dsize: Tuple[int, int]) -> torch.Tensor:
    """grid_sample grid ``[1, h, w, 2]`` (align_corners=False) for a src->dst 2x3 map."""
    inv = np.linalg.inv(to_3x3(m_src_to_dst))
    h, w = dsize
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    x = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    y = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    gx = (2.0 * x + 1.0) / src_hw[1] - 1.0
    gy = (2.0 * y + 1.0) / src_hw[0] - 1.0
    return torch.from_numpy(np.stack([gx, gy], axis=-1).astype(np.float32))[None]


def _prepare(src: torch.Tensor, m: np.ndarray) -> Tuple[torch.Tensor, np.ndarray]:
    """Antialiased pre-shrink of ``src`` when ``m`` shrinks it by more than 25 %."""
    h, w = src.shape[-2:]
    s = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if s >= 0.75 or (h <= 1 and w <= 1):
        return src, m
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) == (h, w):
        return src, m
    small = F.interpolate(src, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    m2 = (to_3x3(m) @ np.linalg.inv(_resize_matrix((h, w), (nh, nw))))[:2]
    return small, m2


class _Warper:
    """Warps batches of ``[B, C, h, w]`` with one 2x3 src->dst map (grid built once)."""

    def __init__(self, m: np.ndarray, src_hw: Tuple[int, int], dsize: Tuple[int, int],
                 padding_mode: str, mode: str = "bilinear", antialias: bool = True) -> None:
        if padding_mode not in PADDING_MODES:
            raise InputError(f"padding_mode must be one of {list(PADDING_MODES)}, got {padding_mode!r}")
        self.m = np.asarray(m, dtype=np.float64)[:2]
        self.src_hw, self.dsize, self.padding_mode, self.mode = src_hw, dsize, padding_mode, mode
        self.antialias = antialias and mode == "bilinear"
        self.shift = _integer_translation(self.m)
        self._grid: Dict[Any, torch.Tensor] = {}

    def __call__(self, src: torch.Tensor) -> torch.Tensor:
        if self.shift is not None:
            return _shift(src, self.shift, self.dsize, self.padding_mode)
        src, m = _prepare(src, self.m) if self.antialias else (src, self.m)
        key = (tuple(src.shape[-2:]), src.device, src.dtype)
        grid = self._grid.get(key)
        if grid is None:
            grid = _sampling_grid(m, tuple(src.shape[-2:]), self.dsize).to(src.device, src.dtype)
            self._grid = {key: grid}
        return F.grid_sample(src, grid.expand(src.shape[0], -1, -1, -1), mode=self.mode,
                             padding_mode=self.padding_mode, align_corners=False)


def _footprint(m_crop_to_full: np.ndarray, crop_size: int) -> np.ndarray:
    e = crop_size - 0.5
    corners = np.array([[-0.5, -0.5], [e, -0.5], [-0.5, e], [e, e]])
    return transform_points(m_crop_to_full, corners)


def _roi(points: np.ndarray, hw: Tuple[int, int], margin: float) -> Optional[Tuple[int, int, int, int]]:
    """Integer pixel range ``(x0, y0, x1, y1)`` (end exclusive) covering points, clipped."""
    h, w = hw
    x0 = max(0, int(math.floor(points[:, 0].min() - margin)))
    y0 = max(0, int(math.floor(points[:, 1].min() - margin)))
    x1 = min(w, int(math.ceil(points[:, 0].max() + margin)) + 1)
    y1 = min(h, int(math.ceil(points[:, 1].max() + margin)) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _check_full_size(images: torch.Tensor, record: CropRecord, what: str) -> None:
    hw = tuple(images.shape[1:3])
    if hw != tuple(record.full_size):
        raise InputError(f"{what} is {hw[1]}x{hw[0]} but the face crop record was made for a "
                         f"{record.full_size[1]}x{record.full_size[0]} image; use the same image "
                         f"(or frames of the same size) that the face was detected in")


def crop_image(images: torch.Tensor, record: CropRecord, padding_mode: str = "zeros",
               device: DeviceLike = None, chunk: int = 16, mode: str = "bilinear") -> torch.Tensor:
    """Cut the record's square out of every frame: ``[B, H, W, 3]`` -> ``[B, S, S, 3]`` (CPU float32).

    Parts of the square outside the image are filled per ``padding_mode``: ``"zeros"`` (black),
    ``"border"`` (edge pixels repeated) or ``"reflection"`` (mirrored about the image edge).
    """
    images = ensure_image(images)
    _check_full_size(images, record, "the image")
    if padding_mode not in PADDING_MODES:
        raise InputError(f"padding_mode must be one of {list(PADDING_MODES)}, got {padding_mode!r}")
    dev = _device(device)
    B, H, W, _ = images.shape
    S = record.crop_size
    m = record.matrix
    # Only the part of the image under the square (plus the filter's reach) goes to the device.
    # Reflection may sample anywhere in the image, so it keeps the whole frame.
    roi = None
    if padding_mode != "reflection":
        margin = 2.0 + 2.0 / max(record.scale, 1e-6)
        roi = _roi(_footprint(record.inverse, S), (H, W), margin)
        if roi is None and padding_mode == "zeros":
            return torch.zeros(B, S, S, 3, dtype=torch.float32)
    if roi is None:
        roi = (0, 0, W, H)
    x0, y0, x1, y1 = roi
    m_roi = (to_3x3(m) @ _translation(x0, y0))[:2]
    warp = _Warper(m_roi, (y1 - y0, x1 - x0), (S, S), padding_mode, mode)
    out = torch.empty(B, S, S, 3, dtype=torch.float32)
    step = max(1, int(chunk))
    with torch.inference_mode():
        for i in range(0, B, step):
            src = images[i:i + step, y0:y1, x0:x1].to(dev, torch.float32).permute(0, 3, 1, 2)
            res = warp(src)
            out[i:i + step] = res.permute(0, 2, 3, 1).to("cpu", torch.float32)
    return out


def square_mask(size: int, feather: float = 0.1) -> torch.Tensor:
    """``[S, S]`` mask: 1 inside, falling smoothly to 0 over the outer ``feather * S`` pixels."""
    size = int(size)
    f = float(feather) * size
    if f <= 0:
        return torch.ones(size, size)
    i = torch.arange(size, dtype=torch.float64)
    d = torch.minimum(i + 0.5, size - 0.5 - i)  # distance of the pixel centre to the edge
    t = (d / f).clamp(0.0, 1.0)
    ramp = t * t * (3.0 - 2.0 * t)  # smoothstep
    return (ramp[:, None] * ramp[None, :]).to(torch.float32)


def _prepare_mask(mask, batch: int, size: int) -> torch.Tensor:
    """A user mask -> ``[1 or B, 1, S, S]`` float in 0..1."""
    m = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, torch.Tensor) else mask
    m = m.detach().to("cpu")
    integer = not (m.is_floating_point() or m.dtype == torch.bool)
    m = m.to(torch.float32)
    if integer and m.numel() and m.max() > 1:
        m = m / 255.0
    if m.dim() == 4 and m.shape[-1] in (1, 3, 4):  # [B, S, S, C] image-like
        m = m[..., :3].mean(-1)
    elif m.dim() == 3 and m.shape[-1] in (3, 4) and m.shape[0] not in (1, batch):  # [S, S, C]
        m = m[..., :3].mean(-1)
    elif m.dim() == 3 and m.shape[-1] == 1 and m.shape[0] != 1:  # [S, S, 1]
        m = m[..., 0]
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3 or m.shape[-1] < 1 or m.shape[-2] < 1:
        raise InputError(f"the paste mask must be [S,S], [B,S,S] or an image, got shape {tuple(np.shape(mask))}")
    if m.shape[0] not in (1, batch):
        raise InputError(f"the paste mask has {m.shape[0]} frames but there are {batch} crops")
    m = m[:, None].clamp(0.0, 1.0)
    if tuple(m.shape[-2:]) != (size, size):
        m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return m


def paste_back(full: torch.Tensor, crops: torch.Tensor, record: CropRecord, feather: float = 0.1,
               mask=None, chunk: int = 16, device: DeviceLike = None,
               progress: Optional[ProgressFn] = None, antialias: bool = True,
               premultiplied: bool = True) -> torch.Tensor:
    """Blend (processed) crops back into the full frame(s): ``[B, H, W, 3]`` on the CPU, float32.

    ``full`` is one frame (``[H,W,3]`` or ``[1,H,W,3]``, used for every crop) or ``B`` frames;
    ``crops`` are ``[B, S', S', 3]`` — a size other than the record's is fine (the record is
    rescaled). Blending uses ``mask`` (``[S,S]``, ``[B,S,S]`` or an image, any size, resized) or
    else :func:`square_mask` with ``feather``. Compositing is premultiplied, so the pasted area
    fades out at the crop's edge even without feathering, and pixels outside the crop's footprint
    are the original ones exactly. Frames are processed ``chunk`` at a time on ``device``.

    ``antialias=False, premultiplied=False`` reproduces LivePortrait's own paste-back (cv2: the
    crop and the mask are warped separately, bilinear without pre-filtering, then
    ``mask * crop + (1 - mask) * frame``).
    """
    if isinstance(full, torch.Tensor) and full.dim() == 3:
        full = full[None]
    full = ensure_image(full)
    crops = ensure_image(crops)
    _check_full_size(full, record, "the full image")
    Bf, H, W, _ = full.shape
    Bc, Sh, Sw, _ = crops.shape
    if Sh != Sw:
        raise InputError(f"face crops must be square, got {Sw}x{Sh}")
    if Bf not in (1, Bc) and Bc != 1:
        raise InputError(f"{Bc} crops cannot be pasted into {Bf} frames (give 1 frame, or one per crop)")
    if Sh != record.crop_size:
        record = record.with_crop_size(Sh)
    S = Sh
    B = max(Bf, Bc)
    m_mask = square_mask(S, feather)[None, None] if mask is None else _prepare_mask(mask, Bc, S)

    out = torch.empty(B, H, W, 3, dtype=torch.float32)
    margin = 2.0 + 1.0 / max(record.scale, 1e-6)  # one crop pixel of bilinear reach, in full pixels
    roi = _roi(_footprint(record.inverse, S), (H, W), margin)
    step = max(1, int(chunk))
    bar = Progress(math.ceil(B / step), progress)
    if roi is None:  # the crop lies entirely outside the frame
        for i in range(0, B, step):
            out[i:i + step] = full[i:i + step] if Bf > 1 else full[0]
            bar.step()
        return out
    x0, y0, x1, y1 = roi
    m_paste = (_translation(-x0, -y0) @ record.inverse3)[:2]
    warp = _Warper(m_paste, (S, S), (y1 - y0, x1 - x0), "zeros", antialias=antialias)
    dev = _device(device)
    with torch.inference_mode():
        for i in range(0, B, step):
            n = min(step, B - i)
            bg = full[i:i + n] if Bf > 1 else full[:1].expand(n, -1, -1, -1)
            out[i:i + n] = bg
            c = crops[i:i + n] if Bc > 1 else crops[:1].expand(n, -1, -1, -1)
            c = c.to(dev, torch.float32).permute(0, 3, 1, 2)
            mk = m_mask[i:i + n] if m_mask.shape[0] > 1 else m_mask.expand(n, -1, -1, -1)
            mk = mk.to(dev, torch.float32)
            colour = c * mk if premultiplied else c
            warped = warp(torch.cat([colour, mk.expand(n, -1, -1, -1)], dim=1))  # colour + alpha
            alpha = warped[:, 3:4].clamp(0.0, 1.0)
            region = bg[:, y0:y1, x0:x1].to(dev, torch.float32).permute(0, 3, 1, 2)
            pasted = warped[:, :3] if premultiplied else warped[:, :3] * alpha
            blended = region * (1.0 - alpha) + pasted
            out[i:i + n, y0:y1, x0:x1] = blended.clamp(0.0, 1.0).permute(0, 2, 3, 1).to("cpu")
            bar.step()
    return out


# --------------------------------------------------------------------------- detectors
@dataclass(eq=False)
class Face:
    """One detected face: ``box`` (x0, y0, x1, y1) in pixel-centre coordinates, ``score``,
    optional ``landmarks`` ``[N, 2]`` (BlazeFace: right eye, left eye, nose, mouth, right ear,
    left ear, as seen from the subject)."""

    box: Box
    score: float = 1.0
    landmarks: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.box = tuple(float(v) for v in self.box)
        self.score = float(self.score)
        self.landmarks = _opt_array(self.landmarks, (2,))

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


def _as_hwc(image) -> Tuple[torch.Tensor, int, int]:
    """Any accepted detector input -> float RGB ``[1, 3, H, W]`` in 0..255 (CPU)."""
    if isinstance(image, np.ndarray):
        a = image
        if a.dtype == np.uint8:
            t = torch.from_numpy(np.ascontiguousarray(a)).float()
        elif np.issubdtype(a.dtype, np.floating):
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) * 255.0
        else:
            raise InputError(f"unsupported image array dtype {a.dtype} for face detection")
    elif isinstance(image, torch.Tensor):
        t = image.detach().to("cpu")
        t = t.float() if t.dtype == torch.uint8 else t.float() * 255.0
    else:
        raise InputError(f"face detection needs an image array or tensor, got {type(image).__name__}")
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise InputError(f"face detection takes one image at a time, got a batch of {t.shape[0]}")
        t = t[0]
    if t.dim() == 2:
        t = t[..., None]
    if t.dim() != 3 or t.shape[-1] not in (1, 3, 4) or min(t.shape[:2]) < 1:
        raise InputError(f"face detection needs an image [H, W, 3], got shape {tuple(t.shape)}")
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, 3)
    t = t[..., :3].clamp(0.0, 255.0)
    h, w = t.shape[:2]
    return t.permute(2, 0, 1)[None].contiguous(), h, w


class FaceDetector:
    """Interface: ``detect(image) -> list[Face]`` (best score first).

    ``image`` is ``[H, W, 3]`` (or ``[1, H, W, 3]``): a float tensor in 0..1 or a uint8 array.
    ``is_face_box`` is False for detectors whose box is already the wanted crop region
    (:class:`CenterDetector`, :class:`NoneDetector`); :func:`detect_and_crop` then crops that box
    as is instead of enlarging it by ``scale``.
    """

    name = "base"
    is_face_box = True

    def detect(self, image) -> List[Face]:  # pragma: no cover - interface
        raise NotImplementedError

    def modules_for_cache(self) -> List[torch.nn.Module]:
        """The networks the model cache (and ComfyUI's memory manager) should manage."""
        net = getattr(self, "net", None)
        return [net] if isinstance(net, torch.nn.Module) else []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class CenterDetector(FaceDetector):
    """The centred square of side ``min(H, W)`` (for portraits that are already centred)."""

    name = "center"
    is_face_box = False

    def detect(self, image) -> List[Face]:
        _, h, w = _as_hwc(image)
        m = min(h, w)
        x0, y0 = (w - m) // 2 - 0.5, (h - m) // 2 - 0.5
        return [Face(box=(x0, y0, x0 + m, y0 + m), score=1.0)]


class NoneDetector(FaceDetector):
    """The whole image is the face crop ("none (already cropped)")."""

    name = "none (already cropped)"
    is_face_box = False

    def detect(self, image) -> List[Face]:
        _, h, w = _as_hwc(image)
        return [Face(box=(-0.5, -0.5, w - 0.5, h - 0.5), score=1.0)]


def _load_net_weights(net: torch.nn.Module, weights_path, what: str) -> None:
    path = Path(weights_path)
    state = load_state_dict(path)
    check_state_dict(net, state, f"{what} '{path.name}'")
    net.load_state_dict(state, strict=True)


def _import_face_alignment(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TalkingHeadError(
            f"the {what} detector needs the 'face-alignment' package (pip install face-alignment); "
            f"or use the \"center\" or \"none (already cropped)\" detector. ({exc})") from exc


class FaceAlignmentSFD(FaceDetector):
    """face-alignment's S3FD detector (BSD-3-Clause), run with our own loading and decoding.

    Same pre/post-processing as face-alignment (BGR, mean 104/117/123, candidates above 0.05,
    NMS 0.3, keep score > 0.5), except that images whose longer side exceeds ``max_side`` are
    first shrunk (antialiased) to that size, which keeps the VGG-16 backbone affordable on large
    photos; boxes are mapped back to the original pixels. Pictures with a side under 32 pixels (which the
    network cannot take) are padded at the bottom/right with the mean colour.
    """

    name = "face-alignment sfd"
    #: smallest side the network takes (smaller pictures are padded up to it)
    MIN_SIDE = 32

    def __init__(self, weights_path, device: DeviceLike = "auto", threshold: float = 0.5,
                 nms_threshold: float = 0.3, max_side: Optional[int] = 1024) -> None:
        s3fd = _import_face_alignment("face_alignment.detection.sfd.net_s3fd", "S3FD").s3fd
        self._nms = _import_face_alignment("face_alignment.detection.sfd.bbox", "S3FD").nms

        self.device = _device(device)
        self.threshold = float(threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = max_side
        net = s3fd()
        _load_net_weights(net, weights_path, "S3FD face detector weights")
        self.net = net.to(self.device).eval()

    @staticmethod
    def _decode(outputs: List[np.ndarray]) -> np.ndarray:
        """S3FD heads -> candidate boxes ``[N, 5]`` (x0, y0, x1, y1, score), image spans 0..W."""
        found = []
        for i in range(len(outputs) // 2):
            cls, reg = outputs[2 * i][0], outputs[2 * i + 1][0]
            stride = 2 ** (i + 2)
            ys, xs = np.nonzero(cls[1] > 0.05)
            if ys.size == 0:
                continue
            prior = stride * 4.0
            pcx, pcy = stride / 2.0 + xs * stride, stride / 2.0 + ys * stride
            loc = reg[:, ys, xs].astype(np.float64)
            cx = pcx + loc[0] * 0.1 * prior
            cy = pcy + loc[1] * 0.1 * prior
            bw = prior * np.exp(loc[2] * 0.2)
            bh = prior * np.exp(loc[3] * 0.2)
            found.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2,
                                   cls[1, ys, xs].astype(np.float64)], axis=1))
        return np.concatenate(found, 0) if found else np.zeros((0, 5))

    def detect(self, image) -> List[Face]:
        x, h, w = _as_hwc(image)
        x = x.to(self.device)
        if self.max_side and max(h, w) > self.max_side:
            r = self.max_side / max(h, w)
            x = F.interpolate(x, size=(max(1, round(h * r)), max(1, round(w * r))), mode="bilinear",
                              align_corners=False, antialias=True)
        sh, sw = h / x.shape[-2], w / x.shape[-1]
        x = x.flip(1)  # RGB -> BGR
        x = x - torch.tensor([104.0, 117.0, 123.0], device=self.device).view(1, 3, 1, 1)
        # VGG-16's five poolings need 32 pixels a side: pad tiny or very flat pictures at the bottom/right with
        # the mean colour (0 after the subtraction), which keeps the boxes in the picture's own pixels
        short_h, short_w = max(0, self.MIN_SIDE - x.shape[-2]), max(0, self.MIN_SIDE - x.shape[-1])
        if short_h or short_w:
            x = F.pad(x, (0, short_w, 0, short_h))
        with torch.inference_mode():
            outs = self.net(x)
        arrays = []
        for k, o in enumerate(outs):
            o = F.softmax(o, dim=1) if k % 2 == 0 else o
            arrays.append(o.float().cpu().numpy())
        dets = self._decode(arrays)
        if len(dets):
            dets = dets[self._nms(dets, self.nms_threshold)]
            dets = dets[dets[:, 4] > self.threshold]
        faces = [Face(box=(d[0] * sw - 0.5, d[1] * sh - 0.5, d[2] * sw - 0.5, d[3] * sh - 0.5),
                      score=d[4]) for d in dets]
        faces.sort(key=lambda f: -f.score)
        return faces


class FaceAlignmentBlazeFace(FaceDetector):
    """face-alignment's BlazeFace (front camera model, 128x128; BSD-3-Clause port of MediaPipe).

    The image is letterboxed to a square (zeros) and resized to 128 (antialiased) — face-alignment
    crops the centre square instead, which loses faces near the long sides; for square images
    both are the same. Score threshold 0.5 and weighted NMS 0.3, as in face-alignment. Each face
    also has BlazeFace's 6 keypoints as ``landmarks``.
    """

    name = "face-alignment blazeface"
    input_size = 128

    def __init__(self, weights_path, anchors_path, device: DeviceLike = "auto", threshold: float = 0.5,
                 nms_threshold: float = 0.3) -> None:
        BlazeFace = _import_face_alignment("face_alignment.detection.blazeface.net_blazeface",
                                           "BlazeFace").BlazeFace

        self.device = _device(device)
        net = BlazeFace(back_model=False)
        _load_net_weights(net, weights_path, "BlazeFace face detector weights")
        anchors = self._load_anchors(anchors_path, net.num_anchors)
        net = net.to(self.device).eval()
        net.load_anchors_from_npy(anchors, self.device)
        net.min_score_thresh = float(threshold)
        net.min_suppression_threshold = float(nms_threshold)
        self.net = net

    @staticmethod
    def _load_anchors(path, count: int) -> np.ndarray:
        path = Path(path)
        try:
            a = np.load(path, allow_pickle=False)
        except FileNotFoundError as exc:
            raise CheckpointError(f"BlazeFace anchors file {path} does not exist") from exc
        except Exception as exc:
            raise CheckpointError(f"{path.name}: not a readable BlazeFace anchors .npy file "
                                  f"(corrupt or wrong file?): {exc}") from exc
        if not isinstance(a, np.ndarray) or a.shape != (count, 4) or not np.issubdtype(a.dtype, np.number):
            raise CheckpointError(f"{path.name}: BlazeFace anchors must be a numeric array of shape "
                                  f"({count}, 4), got {getattr(a, 'shape', None)}")
        return a.astype(np.float32)

    def _predict(self, x: torch.Tensor) -> np.ndarray:
        """BlazeFace.predict_on_batch for one image, minus degenerate boxes before the NMS
        (face-alignment's weighted NMS never ends on a box of zero or negative size)."""
        net = self.net
        with torch.inference_mode():
            raw_boxes, raw_scores = net(net._preprocess(x))
            dets = net._tensors_to_detections(raw_boxes, raw_scores, net.anchors)[0]
            ok = torch.isfinite(dets).all(dim=1) & (dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])
            faces = net._weighted_non_max_suppression(dets[ok])
        if not faces:
            return np.zeros((0, 17), np.float32)
        return torch.stack(faces).float().cpu().numpy()

    def detect(self, image) -> List[Face]:
        x, h, w = _as_hwc(image)
        side = max(h, w)
        px, py = (side - w) // 2, (side - h) // 2
        if side != h or side != w:
            x = F.pad(x, (px, side - w - px, py, side - h - py))
        n = self.input_size
        if side != n:
            x = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False, antialias=side > n)
        preds = self._predict(x.to(self.device))
        faces = []
        for p in preds:
            ymin, xmin, ymax, xmax = p[:4] * side
            box = (xmin - px - 0.5, ymin - py - 0.5, xmax - px - 0.5, ymax - py - 0.5)
            pts = p[4:16].reshape(6, 2) * side - np.array([px + 0.5, py + 0.5])
            faces.append(Face(box=box, score=p[16], landmarks=pts))
        faces.sort(key=lambda f: -f.score)
        return faces


def make_detector(name: str, weights_resolver: Optional[Callable[[str], Path]] = None,
                  device: DeviceLike = "auto") -> FaceDetector:
    """Build a detector by its UI name (:data:`DETECTOR_CHOICES`).

    ``weights_resolver(file_id) -> Path`` is asked for ``"face_detection/s3fd"``,
    ``"face_detection/blazeface"`` and ``"face_detection/blazeface_anchors"`` as needed.
    """
    key = (name or "").strip().lower()
    if key == "center":
        return CenterDetector()
    if key in ("none (already cropped)", "none"):
        return NoneDetector()
    if key in ("face-alignment sfd", "face-alignment blazeface"):
        if weights_resolver is None:
            raise InputError(f"the '{name}' detector needs model weights but no weights resolver was given")
        if key.endswith("sfd"):
            return FaceAlignmentSFD(weights_resolver(WEIGHT_IDS["s3fd"]), device=device)
        return FaceAlignmentBlazeFace(weights_resolver(WEIGHT_IDS["blazeface"]),
                                      weights_resolver(WEIGHT_IDS["blazeface_anchors"]), device=device)
    raise InputError(f"unknown face detector {name!r}; choose one of: {', '.join(DETECTOR_CHOICES)}")


NO_FACE_MESSAGE = (
    "No face was found in the image. Use a larger, clearer, front-facing photo of one face, or "
    "pick the \"center\" detector (the image is centred on the face) or the "
    "\"none (already cropped)\" detector (the image is already a face crop).")


def pick_largest(faces: Sequence[Face]) -> Face:
    """The face with the largest box (ties: higher score)."""
    if not faces:
        raise InputError(NO_FACE_MESSAGE)
    return max(faces, key=lambda f: (f.area, f.score))


def detect_and_crop(image: torch.Tensor, detector: FaceDetector, crop_size: int = DEFAULT_CROP_SIZE,
                    scale: float = DEFAULT_SCALE, vy: float = DEFAULT_VY, vx: float = 0.0,
                    padding_mode: str = "border", device: DeviceLike = None,
                    frame: int = 0) -> Tuple[torch.Tensor, CropRecord]:
    """Detect the face in ``image[frame]`` and crop every frame: ``([B, S, S, 3], CropRecord)``.

    Several faces: the largest box is used and ``record.num_faces`` says how many there were.
    No face: :class:`InputError` naming the fallbacks. With :class:`CenterDetector` or
    :class:`NoneDetector` the box is cropped as is (``scale``/``vy``/``vx`` are not applied).
    ``padding_mode`` defaults to ``"border"`` so a square reaching past the photo edge shows
    stretched edge pixels rather than black bars, which face models handle better.
    """
    images = ensure_image(image)
    if not 0 <= frame < images.shape[0]:
        raise InputError(f"frame {frame} does not exist in a batch of {images.shape[0]} images")
    faces = detector.detect(images[frame])
    if not faces:
        raise InputError(NO_FACE_MESSAGE)
    best = pick_largest(faces)
    if not getattr(detector, "is_face_box", True):
        scale, vy, vx = 1.0, 0.0, 0.0
    record = crop_from_box(best.box, tuple(images.shape[1:3]), crop_size, scale=scale, vy=vy, vx=vx,
                           score=best.score, landmarks=best.landmarks,
                           detector=getattr(detector, "name", type(detector).__name__),
                           num_faces=len(faces))
    if len(faces) > 1:
        log.info("%d faces found, using the largest", len(faces))
    crop = crop_image(images, record, padding_mode=padding_mode, device=device)
    return crop, record
