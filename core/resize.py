"""Batch resize to a square (ResizePad256): kornia on the device, whole batches at once.

``pad``: scale so the long side is ``size`` (aspect ratio kept), pad centred to a square.
``crop``: scale so the short side is ``size``, crop the centre square.
``stretch``: resize straight to ``size x size``.

With ``interpolation="bilinear"``, ``align_corners=False``, no antialias and zero padding,
``pad`` reproduces the classic pipeline's 128x96 -> 256x256 step exactly (deepstory's
``F.interpolate(scale_factor=2)`` then 32 px of zeros left and right).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from kornia.geometry.transform import resize as kornia_resize

from .device import resolve_device
from .progress import Progress, ProgressFn

RESIZE_MODES = ["pad", "crop", "stretch"]
PAD_MODES = ["constant", "edge", "reflect"]
INTERPOLATIONS = ["bilinear", "bicubic", "area", "nearest"]


@dataclass(frozen=True)
class SquareGeometry:
    """Where the input lands in the square output: resized size, then its top-left offset
    (positive = padding in ``pad`` mode, negative = cropped away in ``crop`` mode)."""

    resized_h: int
    resized_w: int
    top: int
    left: int
    size: int

    def pads(self):
        """(left, right, top, bottom) padding for ``F.pad`` (all >= 0 in pad mode)."""
        return (self.left, self.size - self.resized_w - self.left,
                self.top, self.size - self.resized_h - self.top)


def square_geometry(h: int, w: int, size: int, mode: str = "pad") -> SquareGeometry:
    if h <= 0 or w <= 0:
        raise ValueError(f"image has an empty side ({h}x{w})")
    if mode == "stretch":
        return SquareGeometry(size, size, 0, 0, size)
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    scale = size / (max(h, w) if mode == "pad" else min(h, w))
    rh, rw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    return SquareGeometry(rh, rw, (size - rh) // 2, (size - rw) // 2, size)


def _reflect_pad(x: torch.Tensor, pads) -> torch.Tensor:
    """Reflect padding that also works when the pad is wider than the image (repeated mirror)."""
    left, right, top, bottom = pads
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        if not any(step):  # a 1-pixel side cannot be mirrored: repeat it instead
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (a - b for a, b in zip((left, right, top, bottom), step))
    return x


def _pad(x: torch.Tensor, pads, pad_mode: str, value: float) -> torch.Tensor:
    if not any(pads):
        return x
    if pad_mode == "constant":
        return F.pad(x, pads, mode="constant", value=value)
    if pad_mode == "edge":
        return F.pad(x, pads, mode="replicate")
    if pad_mode == "reflect":
        return _reflect_pad(x, pads)
    raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")


def resize_square_nchw(x: torch.Tensor, size: int = 256, mode: str = "pad", pad_mode: str = "constant",
                       pad_value: float = 0.0, interpolation: str = "bilinear",
                       antialias: bool = False) -> torch.Tensor:
    """One batch ``[B,C,H,W]`` -> ``[B,C,size,size]`` on whatever device ``x`` lives."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    g = square_geometry(x.shape[-2], x.shape[-1], size, mode)
    if (g.resized_h, g.resized_w) != tuple(x.shape[-2:]):
        align = False if interpolation in ("bilinear", "bicubic") else None
        x = kornia_resize(x, (g.resized_h, g.resized_w), interpolation=interpolation,
                          align_corners=align, antialias=antialias and interpolation != "area")
        if interpolation == "bicubic":
            x = x.clamp(0.0, 1.0)
    if mode == "crop":
        top, left = -g.top, -g.left
        return x[..., top:top + size, left:left + size]
    return _pad(x, g.pads(), pad_mode, pad_value)


def resize_pad(images: torch.Tensor, size: int = 256, mode: str = "pad", pad_mode: str = "constant",
               pad_value: float = 0.0, interpolation: str = "bilinear", antialias: bool = False,
               device=None, chunk: Optional[int] = None, channels_last: bool = True,
               out_device: Optional[torch.device] = None, progress: Optional[ProgressFn] = None) -> torch.Tensor:
    """Resize a whole batch of frames to ``size x size``.

    ``images``: ``[B,H,W,C]`` (ComfyUI IMAGE, ``channels_last=True``) or ``[B,C,H,W]``.
    Frames move to ``device`` (``None``/"auto" = the best available) ``chunk`` at a time, are
    processed as one batch each, and come back to ``out_device`` (default: the input's device),
    so device memory stays bounded for long videos. Output dtype = input dtype (float).
    ``chunk=None``: 16 frames on the CPU (cache-friendly: ~2.5x the throughput of 256 in
    ``bench/bench_foundation.py``), 256 on a GPU (fewer, larger transfers and kernels).
    """
    if images.ndim != 4:
        raise ValueError(f"expected a 4-D batch of images, got shape {tuple(images.shape)}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    dev = resolve_device(device)
    chunk = chunk or (16 if dev.type == "cpu" else 256)
    out_device = images.device if out_device is None else out_device
    if not images.is_floating_point():
        images = images.float() / 255.0
    n = images.shape[0]
    out = None
    bar = Progress((n + chunk - 1) // chunk, progress)
    for start in range(0, n, chunk):
        x = images[start:start + chunk].to(dev, non_blocking=True)
        if channels_last:  # NCHW in contiguous memory: the resize kernels run faster on it
            x = x.permute(0, 3, 1, 2).contiguous()
        y = resize_square_nchw(x, size, mode, pad_mode, pad_value, interpolation, antialias)
        if channels_last:
            y = y.permute(0, 2, 3, 1)
        if out is None:
            out = torch.empty((n,) + tuple(y.shape[1:]), dtype=y.dtype, device=out_device)
        out[start:start + y.shape[0]] = y.to(out_device)
        bar.step()
    if out is None:  # empty batch
        shape = (0, size, size, images.shape[-1]) if channels_last else (0, images.shape[1], size, size)
        out = images.new_zeros(shape, device=out_device)
    return out


def image_to_square_nchw(images: torch.Tensor, size: int, device=None, channels_last: bool = False) -> torch.Tensor:
    """IMAGE ``[B,H,W,3]`` (0..1) -> ``[B,3,size,size]`` float32 on ``device``, area-resized when
    its size differs (what the models' input steps do: deepstory's portrait resize, LivePortrait's
    512 -> 256 INTER_AREA). ``channels_last``: return the memory layout convolutions prefer."""
    from .errors import InputError

    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"expected an IMAGE batch [B,H,W,3], got shape {tuple(images.shape)}")
    x = images.to(device, torch.float32).permute(0, 3, 1, 2).contiguous()
    if tuple(x.shape[2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
