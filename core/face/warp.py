"""Warping with crop records: cutting face crops out of frames and pasting them back.

:func:`crop_image` and :func:`paste_back` sample with ``torch.nn.functional.grid_sample``
(bilinear, ``align_corners=False``, which is exactly the pixel-centre convention of
:mod:`core.face.crop`) on the chosen device, batched and in chunks. The sampling grid is computed
once per call in float64 on the CPU; warps that are pure integer translations are done by
indexing, so they reproduce pixels exactly. When a warp shrinks the picture by more than 25 % the
source is first resized with an antialiasing filter, so downscaled crops (big photos) and pasted
crops (small faces) do not alias. ``"reflection"`` padding mirrors about the image edges (the edge
pixel is repeated).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..image import ensure_image
from ..progress import Progress, ProgressFn
from .crop import CropRecord, DeviceLike, _device, _resize_matrix, _translation, to_3x3, transform_points

PADDING_MODES = ("zeros", "border", "reflection")


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


__all__ = ["PADDING_MODES", "crop_image", "paste_back", "square_mask"]
