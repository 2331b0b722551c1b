"""Live mode: a portrait that answers speech as it streams in (see :mod:`.session`).

:func:`load_parts` loads the networks a live server shares between its sessions (LivePortrait, Ditto's
LMDM, its HuBERT); :func:`prepare_portrait` makes a portrait's LivePortrait source once, at the size the
frames are sent at; :class:`LiveSession` is one conversation.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..device import resolve_device
from ..errors import InputError
from ..image import ensure_image
from .session import HOP, LiveConfig, LiveParts, LiveSession, encode_jpeg, pcm16

#: the longest side of the frames a live session sends, unless asked otherwise
DEFAULT_MAX_SIDE = 512


def load_parts(variant: str = "human", checkpoint: str = "ditto/lmdm_v0.4_hubert.pth",
               encoder: str = "hubert-large-ls960-ft", device="auto", precision: str = "auto",
               download: bool = True) -> LiveParts:
    """The networks of a live server, from the model folders (missing files: the loaders' errors say which
    file, where it goes and where to get it). ``checkpoint``: a Ditto LMDM (``ditto/<file>``; live mode runs
    Ditto's streaming windows)."""
    from ..audio_features import get_encoder
    from ..liveportrait import get_liveportrait
    from ..motion import dit

    family, path = dit.resolve_checkpoint(checkpoint, download)
    if family != "ditto":
        raise InputError(f"live mode runs Ditto's streaming motion model; {checkpoint!r} is a {family} checkpoint")
    dev = resolve_device(device)
    lmdm = dit._load("ditto", path, dev)
    enc = get_encoder(encoder, device=dev, precision="auto")
    lp = get_liveportrait(variant, device=dev, download=download)
    return LiveParts(lp, lmdm, enc, device=dev, precision=precision)


def fit_image(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """An IMAGE ``[1, H, W, 3]`` scaled down (area filter) so that its longest side is at most ``max_side``."""
    image = ensure_image(image)[:1]
    h, w = int(image.shape[1]), int(image.shape[2])
    if max_side < 64:
        raise InputError(f"the frame size must be at least 64 pixels, got {max_side}")
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), size=size, mode="area")
    return out.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def prepare_portrait(parts: LiveParts, image: torch.Tensor, detector: str = "face-alignment sfd",
                     max_side: int = DEFAULT_MAX_SIDE, download: bool = True) -> Tuple[object, torch.Tensor]:
    """``(source, full)`` of a portrait IMAGE: the face found and cropped (:func:`core.face.load_portrait`),
    its LivePortrait source, and the picture the faces are pasted into, no larger than ``max_side``."""
    from ..face import load_portrait
    from ..liveportrait import portrait_source

    full = fit_image(image, max_side)
    portrait = load_portrait(full, detector=detector, device=parts.device, download=download)
    source = portrait_source(parts.lp_models, portrait, device=parts.device, precision=parts.precision)
    return source, portrait.full


__all__ = ["DEFAULT_MAX_SIDE", "HOP", "LiveConfig", "LiveParts", "LiveSession", "encode_jpeg", "fit_image",
           "load_parts", "pcm16", "prepare_portrait"]
