"""A portrait ready for animation: the face crop, the full picture and the crop record.

This is what LoadPortrait hands to the renderers: they animate ``crop`` and paste the frames
back into ``full`` through ``record`` (see :func:`core.face.paste_back`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict

import torch

from . import face, weights
from .cache import CACHE
from .device import resolve_device
from .errors import WeightsMissingError
from .image import ensure_image

log = logging.getLogger(__name__)


@dataclass
class Portrait:
    crop: torch.Tensor          # [1, S, S, 3] float 0..1, CPU
    full: torch.Tensor          # [1, H, W, 3] float 0..1, CPU
    record: face.CropRecord
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def crop_size(self) -> int:
        return int(self.crop.shape[1])

    def summary(self) -> str:
        r = self.record
        text = (f"{self.full.shape[2]}x{self.full.shape[1]} portrait, {self.crop_size}px crop "
                f"by '{r.detector}'")
        if r.num_faces > 1:
            text += f"; {r.num_faces} faces found, the largest was used"
        return text


def get_detector(name: str, device="auto", download: bool = True) -> face.FaceDetector:
    """A detector by UI name, cached (and unloadable) like every other model."""
    dev = resolve_device(device)
    resolver: Callable[[str], Any] = lambda fid: weights.resolve(fid, download=download)  # noqa: E731
    try:
        return CACHE.get("face", name, lambda: face.make_detector(name, resolver, dev), dev,
                         info={"file": name})
    except WeightsMissingError as exc:
        # offline, the detector is often the only thing between a user and a first video
        raise WeightsMissingError(f"{exc}\nOr use a detector that needs no weights: 'center' (a photo with the "
                                  f"face near the middle) or 'none (already cropped)' (a face crop).") from exc


def load_portrait(image: torch.Tensor, detector: str = "face-alignment sfd",
                  crop_size: int = face.DEFAULT_CROP_SIZE, scale: float = face.DEFAULT_SCALE,
                  vy: float = face.DEFAULT_VY, device="auto", download: bool = True) -> Portrait:
    """Detect the face in an IMAGE ``[1,H,W,3]`` and cut the square crop (largest face wins)."""
    full = ensure_image(image)[:1]
    det = get_detector(detector, device, download)
    crop, record = face.detect_and_crop(full, det, crop_size=crop_size, scale=scale, vy=vy, device=device)
    portrait = Portrait(crop.cpu(), full.cpu(), record, {"detector": detector})
    if record.num_faces > 1:
        log.warning(portrait.summary())
    return portrait
