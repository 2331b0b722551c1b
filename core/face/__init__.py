"""Faces: detection, 68-point landmarks, square face crops and pasting the crops back.

Modules, by job:

* :mod:`.crop` - :class:`CropRecord` (where a square crop came from), :func:`crop_from_box`, the
  default framing (:data:`DEFAULT_SCALE`, :data:`DEFAULT_VY`, :data:`DEFAULT_CROP_SIZE`) and the
  pixel-centre coordinate convention every module here uses;
* :mod:`.warp` - :func:`crop_image`, :func:`paste_back` and :func:`square_mask`;
* :mod:`.detectors` - the face detectors (:data:`DETECTOR_CHOICES`, :func:`make_detector`,
  :func:`get_detector`), :func:`pick_largest` and :data:`NO_FACE_MESSAGE`;
* :mod:`.landmarks` - face-alignment's 2D-FAN (68 landmarks): :func:`get_landmarker`,
  :func:`face_landmarks`;
* :mod:`.portrait` - :func:`detect_and_crop`, :func:`load_portrait` and the :class:`Portrait`
  LoadPortrait hands to the renderers.

Library use::

    from core.face import load_portrait, paste_back
    portrait = load_portrait(image, detector="center", crop_size=512)   # crop + full + record
    frames = paste_back(portrait.full, animated_crops, portrait.record)
"""
from __future__ import annotations

from . import crop, detectors, landmarks, portrait, warp
from .crop import (DEFAULT_CROP_SIZE, DEFAULT_SCALE, DEFAULT_VY, Box, CropRecord, DeviceLike, crop_from_box,
                   invert_affine, to_3x3, transform_points)
from .detectors import (DETECTOR_CHOICES, NO_FACE_MESSAGE, WEIGHT_IDS, CenterDetector, Face, FaceAlignmentBlazeFace,
                        FaceAlignmentSFD, FaceDetector, NoneDetector, get_detector, make_detector, pick_largest)
from .landmarks import NUM_LANDMARKS, FANLandmarks, face_landmarks, get_landmarker
from .portrait import Portrait, detect_and_crop, load_portrait
from .warp import PADDING_MODES, crop_image, paste_back, square_mask

__all__ = ["Box", "CenterDetector", "CropRecord", "DEFAULT_CROP_SIZE", "DEFAULT_SCALE", "DEFAULT_VY",
           "DETECTOR_CHOICES", "DeviceLike", "FANLandmarks", "Face", "FaceAlignmentBlazeFace", "FaceAlignmentSFD",
           "FaceDetector", "NO_FACE_MESSAGE", "NUM_LANDMARKS", "NoneDetector", "PADDING_MODES", "Portrait",
           "WEIGHT_IDS", "crop", "crop_from_box", "crop_image", "detect_and_crop", "detectors", "face_landmarks",
           "get_detector", "get_landmarker", "invert_affine", "landmarks", "load_portrait", "make_detector",
           "paste_back", "pick_largest", "portrait", "square_mask", "to_3x3", "transform_points", "warp"]
