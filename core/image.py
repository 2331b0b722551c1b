"""Image files and ComfyUI IMAGE tensors.

Convention: a ComfyUI ``IMAGE`` is a ``torch.float32`` tensor ``[B, H, W, 3]`` with values in
0..1, on the CPU. A ``MASK``/alpha is ``[B, H, W]`` float in 0..1.

* :func:`load_image` / :func:`load_image_with_alpha` read a file with Pillow (EXIF orientation
  applied, first frame only) and convert every common Pillow mode to that convention.
* :func:`image_to_uint8`, :func:`uint8_to_image` and :func:`ensure_image` convert and validate.
* :func:`safe_join` resolves a user-supplied file name inside a root folder and refuses
  anything that could escape it.

Only Pillow, numpy and torch are used here.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

log = logging.getLogger(__name__)

#: Default refusal limit for :func:`load_image` (pixels = width * height). 100 megapixels is
#: already 1.2 GB as a float32 IMAGE; anything larger is almost certainly a mistake (or a
#: decompression bomb). Pillow's own hard limit (``2 * Image.MAX_IMAGE_PIXELS``, about 179 MP by
#: default) still applies on top of this one.
MAX_PIXELS = 100_000_000

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- loading
def load_image(path: PathLike, max_pixels: Optional[int] = None) -> torch.Tensor:
    """Read an image file as a ComfyUI IMAGE ``[1, H, W, 3]`` float32 in 0..1.

    An alpha channel, if any, is dropped (the colour channels are kept as stored, not
    composited); use :func:`load_image_with_alpha` to get it.
    """
    return load_image_with_alpha(path, max_pixels=max_pixels)[0]


def load_image_with_alpha(path: PathLike, max_pixels: Optional[int] = None
                          ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Read an image file as ``(image [1,H,W,3], alpha [1,H,W] or None)``.

    * EXIF orientation is applied (``ImageOps.exif_transpose``).
    * Multi-frame files (GIF, APNG, TIFF stacks, MPO...) give their first frame.
    * Alpha (RGBA, LA, PA, palette with transparency, premultiplied modes) is returned separately,
      1 = opaque; the colour channels are kept as stored (like ComfyUI's LoadImage, which returns
      ``1 - alpha`` as its MASK).
    * 16-bit grayscale (``I;16*``) is scaled by 65535, 32-bit integer (``I``) by its real bit
      range (16 bits when the values fit, else 2**31 - 1), float (``F``) is used as is when it is
      in 0..1, else scaled by 255, 65535 or its maximum, whichever first covers the values.
    * CMYK, YCbCr, LAB, HSV and other colour modes are converted to RGB by Pillow.
    * 48/64-bit RGB(A) PNGs: Pillow (13 included) opens them as 8-bit RGB(A), keeping the high
      byte of each channel; the error is below one 8-bit step, so they are accepted as such.

    Missing, unreadable, corrupt or truncated files and images above ``max_pixels``
    (default :data:`MAX_PIXELS`) raise :class:`InputError` naming the file.
    """
    p = Path(path)
    name = p.name or str(path)
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if not p.exists():
        raise InputError(f"image file '{name}' not found ({p})")
    if not p.is_file():
        raise InputError(f"'{name}' is not a file (a folder?), cannot load it as an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if limit > 0 and w * h > limit:
                    raise InputError(_too_big(name, w, h, limit))
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                img.load()
                img = _exif_transpose(img, name)
                rgb, alpha = _pil_to_arrays(img, name)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"image '{name}' is too large to load safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"'{name}' is not a readable image (unknown format or corrupt file)") from exc
    except PermissionError as exc:
        raise InputError(f"image '{name}' cannot be read: permission denied") from exc
    except MemoryError as exc:
        raise InputError(f"image '{name}' is too large for the available memory") from exc
    except Exception as exc:  # truncated data, broken streams, decoder errors
        raise InputError(f"image '{name}' could not be decoded (truncated or corrupt file?): "
                         f"{type(exc).__name__}: {exc}") from exc
    image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).unsqueeze(0)
    mask = None
    if alpha is not None:
        mask = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32)).unsqueeze(0)
    return image, mask


def _too_big(name: str, w: int, h: int, limit: int) -> str:
    return (f"image '{name}' is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of "
            f"{limit / 1e6:.1f} megapixels; resize it first")


def _exif_transpose(img: Image.Image, name: str) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block must not make a good image unusable
        log.warning("image '%s': EXIF orientation ignored (unreadable EXIF: %s)", name, exc)
        return img
    return img if out is None else out


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _u8(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / 255.0


def _int_range(img: Image.Image, arr: np.ndarray) -> float:
    """Full-scale value of a mode 'I' (int32) image: its bit depth when the file says so."""
    bits = None
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        try:
            bps = tags.get(258)
            bits = int(bps[0] if isinstance(bps, (tuple, list)) else bps) if bps is not None else None
        except Exception:
            bits = None
    if bits in (8, 16):
        return float(2 ** bits - 1)
    if bits is None and arr.size and arr.max() <= 65535:
        return 65535.0
    return float(2 ** 31 - 1)


def _float_range(arr: np.ndarray) -> float:
    finite = arr[np.isfinite(arr)]
    top = float(finite.max()) if finite.size else 1.0
    for scale in (1.0, 255.0, 65535.0):
        if top <= scale:
            return scale
    return top


def _pil_to_arrays(img: Image.Image, name: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Pillow image -> (rgb float32 [H,W,3] in 0..1, alpha float32 [H,W] or None)."""
    mode = img.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    elif mode == "RGBa":
        img, mode = img.convert("RGBA"), "RGBA"
    elif mode == "La":
        img, mode = img.convert("RGBa").convert("RGBA"), "RGBA"

    if mode == "RGB":
        return _u8(np.asarray(img)), None
    if mode == "RGBA":
        a = np.asarray(img)
        return _u8(a[..., :3]), _u8(a[..., 3])
    if mode == "L":
        return _gray_to_rgb(_u8(np.asarray(img))), None
    if mode == "LA":
        a = np.asarray(img)
        return _gray_to_rgb(_u8(a[..., 0])), _u8(a[..., 1])
    if mode == "1":
        return _gray_to_rgb(np.asarray(img).astype(np.float32)), None
    if mode.startswith("I;16"):
        a = np.asarray(img).astype(np.float32) / 65535.0
        return _gray_to_rgb(np.clip(a, 0.0, 1.0)), None
    if mode == "I":
        a = np.asarray(img).astype(np.float64)
        a = np.clip(a / _int_range(img, a), 0.0, 1.0).astype(np.float32)
        return _gray_to_rgb(a), None
    if mode == "F":
        a = np.asarray(img).astype(np.float32)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        a = np.clip(a / _float_range(a), 0.0, 1.0)
        return _gray_to_rgb(a.astype(np.float32)), None
    if mode in ("RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return _u8(np.asarray(img.convert("RGB"))), None
    try:  # anything else Pillow knows how to turn into RGB
        return _u8(np.asarray(img.convert("RGB"))), None
    except Exception as exc:
        raise InputError(f"image '{name}' has an unsupported pixel format (Pillow mode {mode!r})") from exc


# --------------------------------------------------------------------------- conversions
def image_to_uint8(images: torch.Tensor) -> np.ndarray:
    """IMAGE ``[B,H,W,3]`` (or ``[H,W,3]``) float 0..1 -> numpy uint8 of the same shape.

    Values are clipped to 0..1 and rounded to the nearest 8-bit step; NaN becomes 0.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise InputError(f"expected an image tensor, got {type(images).__name__}")
    x = images.detach().to("cpu", torch.float32)
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
    return (x * 255.0).round_().to(torch.uint8).numpy()


def uint8_to_image(array: np.ndarray) -> torch.Tensor:
    """uint8 numpy ``[H,W,3]`` or ``[B,H,W,3]`` (also ``[H,W]`` gray, 1 or 4 channels) -> IMAGE.

    The result is always ``[B,H,W,3]`` float32 in 0..1 on the CPU.
    """
    a = np.asarray(array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        raise InputError(f"expected a uint8 image array, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise InputError(f"expected an image array [H,W,3] or [B,H,W,3], got shape {tuple(a.shape)}")
    t = torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32).div_(255.0)
    return _fix_channels(t, tuple(a.shape))


def as_uint8_rgb(image, what: str = "image") -> np.ndarray:
    """One picture -> uint8 ``[H, W, 3]`` for code that works on 8-bit RGB (face landmarks, SDA).

    Accepts numpy uint8 (``[H, W]``, ``[H, W, 1|3|4]``), float or bool arrays and tensors in 0..1
    (``[H, W, C]`` or a one-image IMAGE batch ``[1, H, W, C]``; rounded like :func:`image_to_uint8`)
    and PIL images. Alpha is dropped, gray repeated. ``what`` names the input in error messages.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        a = t.numpy() if t.dtype == torch.uint8 else image_to_uint8(t.float())
    elif isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            a = image
        elif image.dtype == np.bool_ or np.issubdtype(image.dtype, np.floating):
            a = image_to_uint8(torch.from_numpy(np.asarray(image, dtype=np.float32)))
        else:
            raise InputError(f"unsupported {what} dtype {image.dtype} (give uint8, or floats in 0..1)")
    else:
        raise InputError(f"the {what} must be an image array or tensor, got {type(image).__name__}")
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise InputError(f"the {what} must be one image, got a batch of {a.shape[0]}")
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or min(a.shape[:2]) < 1:
        raise InputError(f"the {what} must be [H, W, 3], got shape {tuple(a.shape)}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def _fix_channels(t: torch.Tensor, shape) -> torch.Tensor:
    c = t.shape[-1]
    if c == 3:
        return t
    if c == 4:
        return t[..., :3].contiguous()
    if c == 1:
        return t.expand(*t.shape[:-1], 3).contiguous()
    raise InputError(f"an image must have 1, 3 or 4 channels in the last dimension, got shape {shape}")


def ensure_image(x) -> torch.Tensor:
    """Validate a ComfyUI IMAGE and return it as float32 ``[B,H,W,3]`` (same device).

    Four channels -> alpha dropped; one channel -> repeated; uint8 -> divided by 255; half
    precision -> float32. Anything else (not a tensor, not 4-D, empty, other channel counts,
    integer or complex types) raises :class:`InputError`.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected an IMAGE tensor [B,H,W,3], got {type(x).__name__}")
    shape = tuple(x.shape)
    if x.dim() != 4:
        hint = " (a MASK is [B,H,W]; did you connect a mask instead of an image?)" if x.dim() == 3 else ""
        raise InputError(f"expected an IMAGE tensor [B,H,W,3], got shape {shape}{hint}")
    if min(shape[:3]) < 1:
        raise InputError(f"the IMAGE is empty (shape {shape})")
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    elif x.dtype == torch.bool:
        x = x.to(torch.float32)
    elif not x.is_floating_point():
        raise InputError(f"an IMAGE must hold floats in 0..1, got dtype {x.dtype}")
    elif x.dtype != torch.float32:
        x = x.to(torch.float32)
    return _fix_channels(x, shape)


# --------------------------------------------------------------------------- paths
def safe_join(root: PathLike, name: PathLike) -> Path:
    """Resolve a user-supplied (relative) file name inside ``root``.

    Subfolders are fine (``"sub/face.png"``, also with Windows backslashes). Refused with
    :class:`InputError`: empty names, NUL bytes, absolute paths, drive letters and UNC paths,
    ``..`` components, and names that end up outside ``root`` after resolving symlinks.
    The file does not have to exist.
    """
    raw = os.fspath(name)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "surrogateescape")
    shown = repr(raw)
    if "\x00" in raw:
        raise InputError(f"file name {shown} contains a NUL byte and is refused")
    if not raw.strip():
        raise InputError("an empty file name was given")
    win = PureWindowsPath(raw)
    if raw.startswith(("/", "\\")) or win.drive or win.root or PurePosixPath(raw).is_absolute():
        raise InputError(f"file name {shown} is an absolute path; it must be relative to (inside) "
                         f"the input folder, outside the input folder is not allowed")
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InputError(f"file name {shown} uses '..' and would point outside the input folder")
    if not parts:
        raise InputError(f"file name {shown} does not name a file")
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and not target.is_relative_to(base):
        raise InputError(f"file name {shown} resolves to a place outside the input folder "
                         f"(a symlink leading out of it?)")
    return target
