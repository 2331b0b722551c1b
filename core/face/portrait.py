"""A portrait ready for animation: the face crop, the full picture and the crop record.

This is what LoadPortrait hands to the renderers: they animate ``crop`` and paste the frames
back into ``full`` through ``record`` (see :func:`core.face.paste_back`). :func:`detect_and_crop`
is the step under it: detect the face in one frame and crop every frame around it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import torch

from ..errors import InputError
from ..image import ensure_image
from .crop import DEFAULT_CROP_SIZE, DEFAULT_SCALE, DEFAULT_VY, CropRecord, DeviceLike, crop_from_box
from .detectors import NO_FACE_MESSAGE, FaceDetector, get_detector, pick_largest
from .warp import crop_image

log = logging.getLogger(__name__)


@dataclass
class Portrait:
    crop: torch.Tensor          # [1, S, S, 3] float 0..1, CPU
    full: torch.Tensor          # [1, H, W, 3] float 0..1, CPU
    record: CropRecord
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


def load_portrait(image: torch.Tensor, detector: str = "face-alignment sfd",
                  crop_size: int = DEFAULT_CROP_SIZE, scale: float = DEFAULT_SCALE,
                  vy: float = DEFAULT_VY, device="auto", download: bool = True) -> Portrait:
    """Detect the face in an IMAGE ``[1,H,W,3]`` and cut the square crop (largest face wins)."""
    full = ensure_image(image)[:1]
    det = get_detector(detector, device, download)
    crop, record = detect_and_crop(full, det, crop_size=crop_size, scale=scale, vy=vy, device=device)
    portrait = Portrait(crop.cpu(), full.cpu(), record, {"detector": detector})
    if record.num_faces > 1:
        log.warning(portrait.summary())
    return portrait


__all__ = ["Portrait", "detect_and_crop", "load_portrait"]
