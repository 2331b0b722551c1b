"""68 face landmarks with face-alignment's 2D-FAN, run on the boxes of our face detectors.

Library use::

    from core.face import face_landmarks, get_detector, get_landmarker

    found = face_landmarks(frames, get_detector("face-alignment sfd"), get_landmarker())
    # found[i]: [68, 2] landmarks of the largest face of frame i, or None

The network is face-alignment's ``FAN(4)`` (BSD-3-Clause), loaded only through
:func:`core.weights.load_state_dict` (official ``2DFAN4-11f355bf06.pth.tar`` or its
``.safetensors`` twin). :meth:`FANLandmarks.landmarks` is face-alignment's
``FaceAlignment.get_landmarks_from_image`` for one given box, built from face-alignment's own
helpers (``utils.crop``, ``utils.flip``, ``utils.get_preds_fromhm``):

* centre = box centre, moved up by ``CENTER_Y_OFFSET`` (0.12) x box height;
* scale = (box width + box height) / ``reference_scale`` (S3FD's, 195, face-alignment's default
  for every detector that does not override it, BlazeFace included);
* ``crop`` cuts the square of side ``200 * scale`` around the centre (corners cut to whole
  pixels, zeros outside the picture) from the uint8 image and resizes it to 256 x 256; the net
  sees it as float 0..1;
* with ``flip_input`` the mirrored crop goes through the net too and its left/right-swapped,
  mirrored heatmaps are added to the first ones;
* ``get_preds_fromhm`` takes each heatmap's argmax with the quarter-pixel nudge towards the
  larger neighbour.

Coordinates
-----------
Boxes and landmarks here use the pack's *pixel-centre* convention (see :mod:`core.face.crop`):
pixel ``image[y, x]`` is centred on ``(x, y)``. face-alignment's boxes use the "image spans 0..W"
convention (pixel ``x`` covers ``[x, x + 1]``), so a box goes to face-alignment as ``box + 0.5``.

``get_preds_fromhm`` returns two things. ``preds`` are heatmap coordinates in the same
"spans 0..64" convention (the 0-based argmax cell ``k`` gives ``k + 0.5``, +-0.25): cell ``k``
covers ``[k, k + 1]``. Its second result maps them to the image with face-alignment's inverse crop
transform, ``x = p * (200 * scale) / 64 + centre - 200 * scale / 2`` (spans-0..W convention), and
then *truncates to integers* (``transform_np`` ends in ``astype(int32)``). We use ``preds`` and
apply that same map in float64, then subtract 0.5, so our landmarks keep their sub-pixel part:

    ours (pixel-centre) = x_span - 0.5,   face-alignment's = int(x_span) (truncated towards 0)

For points right of / below the image's outer top-left corner (``x_span > 0``, i.e. every point
on the picture) ``int(x_span) = floor(ours + 0.5)``: face-alignment's integers are the index of
the pixel holding the point, which already *is* the nearest pixel-centre coordinate. They lie
within [-0.5, +0.5) of ours and must not be shifted by another 0.5. (Points left of / above the
picture, possible when the crop square runs past its edge, truncate the other way.)

Cost
----
One 256 x 256 forward of FAN(4) is ~0.3 s on a 2-core CPU (two with ``flip_input``).
``get_preds_fromhm`` is numba-compiled (not cached on disk) on the first call in each process:
5-8 s once, before the first landmarks come out.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .. import weights
from ..cache import CACHE, file_key
from ..device import resolve_device
from ..errors import InputError
from ..image import as_uint8_rgb, ensure_image
from ..progress import Progress, ProgressFn
from ..weights import check_state_dict, load_state_dict
from .detectors import FaceDetector, _import_face_alignment, pick_largest

log = logging.getLogger(__name__)

FILE_ID = "face_detection/2dfan4"
NUM_LANDMARKS = 68
#: face-alignment's reference scale of the S3FD detector (``detection.core.REFERENCE_SCALE``)
S3FD_REFERENCE_SCALE = 195.0
#: FAN's stacked hourglasses (2DFAN4 = 4)
NETWORK_SIZE = 4


def _fa_utils():
    return _import_face_alignment("face_alignment.utils", "2D-FAN landmark")


def _check_box(box: Sequence[float], w: int, h: int):
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise InputError(f"a face box is (x0, y0, x1, y1), got {box!r}") from exc
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (x1 > x0 and y1 > y0):
        raise InputError(f"invalid face box {tuple(box)}: it must have a positive width and height")
    if x1 < -0.5 or y1 < -0.5 or x0 > w - 0.5 or y0 > h - 0.5:
        raise InputError(f"the face box {tuple(box)} lies outside the {w}x{h} image")
    return x0, y0, x1, y1


class FANLandmarks:
    """face-alignment's 2D-FAN (``FAN(4)``): 68 landmarks of the face in a given box.

    ``weights_path``: the official ``2DFAN4-11f355bf06.pth.tar`` (a plain state dict) or its
    ``.safetensors`` twin. ``reference_scale`` is the box-to-crop calibration of the detector
    the boxes come from (S3FD's 195; face-alignment uses it for BlazeFace too).
    """

    name = "face-alignment 2D-FAN"

    def __init__(self, weights_path, device="auto", flip_input: bool = True,
                 reference_scale: float = S3FD_REFERENCE_SCALE) -> None:
        FAN = _import_face_alignment("face_alignment.models", "2D-FAN landmark").FAN
        self._utils = _fa_utils()
        self.device = resolve_device("auto" if device is None else device)
        self.flip_input = bool(flip_input)
        self.reference_scale = float(reference_scale)
        path = Path(weights_path)
        net = FAN(NETWORK_SIZE)
        state = load_state_dict(path)
        check_state_dict(net, state, f"2D-FAN landmark weights '{path.name}'")
        net.load_state_dict(state, strict=True)
        self.net = net.to(self.device).eval().requires_grad_(False)

    def modules_for_cache(self) -> List[torch.nn.Module]:
        return [self.net]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(flip_input={self.flip_input}, device={self.device})"

    # ------------------------------------------------------------------ steps
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[-1] if isinstance(out, (list, tuple)) else out  # last hourglass' heatmaps

    def heatmaps(self, crop: torch.Tensor) -> np.ndarray:
        """``[B, 3, 256, 256]`` float 0..1 crops -> ``[B, 68, 64, 64]`` float32 heatmaps (CPU),
        the mirrored pass added when ``flip_input``."""
        p = next(self.net.parameters())
        x = crop.to(p.device, p.dtype)
        flip = self._utils.flip
        with torch.inference_mode():
            out = self._forward(x)
            if self.flip_input:
                out = out + flip(self._forward(flip(x)), is_label=True)
        return np.ascontiguousarray(out.to("cpu", torch.float32).numpy())

    def crop_params(self, box: Sequence[float]):
        """face-alignment's ``(centre, scale)`` for a pixel-centre box; ``centre`` is in its
        spans-0..W convention. The arithmetic follows face-alignment's operation by operation,
        so ``crop`` cuts the very same pixels."""
        u = self._utils
        x0, y0, x1, y1 = (float(v) + 0.5 for v in box)
        centre = np.array([x1 - (x1 - x0) / 2.0, y1 - (y1 - y0) / 2.0])
        centre[1] = centre[1] - (y1 - y0) * u.CENTER_Y_OFFSET
        scale = (x1 - x0 + y1 - y0) / self.reference_scale
        return centre, scale

    # ------------------------------------------------------------------ public
    def landmarks(self, image, box: Sequence[float]) -> np.ndarray:
        """The 68 landmarks ``[68, 2]`` (x, y; float64, pixel-centre coordinates of ``image``)
        of the face in ``box`` (x0, y0, x1, y1; pixel-centre, as :class:`core.face.Face` has it).

        ``image``: ``[H, W, 3]`` (or ``[1, H, W, 3]``), a float tensor/array in 0..1 or uint8.
        The box should be a tight face box like S3FD's (eyebrows to chin); the square crop
        regions of the "center"/"none" detectors are too loose for FAN.
        """
        u = self._utils
        # face-alignment's crop writes into a uint8 buffer: a float 0..1 image would come out black
        img = as_uint8_rgb(image, "image for face landmarks")
        h, w = img.shape[:2]
        box = _check_box(box, w, h)
        centre, scale = self.crop_params(box)
        patch = u.crop(img, centre, scale)
        x = torch.from_numpy(patch.transpose((2, 0, 1)).astype(np.float32) / 255.0)[None]
        hm = self.heatmaps(x)
        preds, _, _ = u.get_preds_fromhm(hm, centre, scale)  # [1, 68, 2], heatmap spans 0..64
        side = u.SCALE_FACTOR * scale  # the crop square's side in image pixels
        pts = preds[0].astype(np.float64) * (side / hm.shape[-1]) + (centre - side / 2.0)
        return pts - 0.5  # spans-0..W -> pixel-centre


def get_landmarker(device="auto", download: bool = True) -> FANLandmarks:
    """The 2D-FAN landmarker, loaded once and cached (family "face", unloadable with the
    detectors); the weights are found or downloaded by :func:`core.weights.resolve`."""
    path = weights.resolve(FILE_ID, download=download)
    dev = resolve_device(device)
    return CACHE.get("face", ("2dfan4",) + file_key(path), lambda: FANLandmarks(path, dev), dev,
                     torch.float32, info={"file": path.name})


def face_landmarks(images: torch.Tensor, detector: FaceDetector, landmarker: FANLandmarks,
                   progress: Optional[ProgressFn] = None) -> List[Optional[np.ndarray]]:
    """For each frame of an IMAGE ``[B, H, W, 3]``: the ``[68, 2]`` landmarks (pixel-centre) of
    its largest detected face, or None when ``detector`` finds no face in that frame."""
    frames = ensure_image(images)
    bar = Progress(frames.shape[0], progress)
    found: List[Optional[np.ndarray]] = []
    for frame in frames:
        faces = detector.detect(frame)
        found.append(landmarker.landmarks(frame, pick_largest(faces).box) if faces else None)
        bar.step()
    missing = sum(lm is None for lm in found)
    if missing:
        log.info("face landmarks: no face in %d of %d frames", missing, len(found))
    return found


__all__ = ["FILE_ID", "FANLandmarks", "NUM_LANDMARKS", "S3FD_REFERENCE_SCALE", "face_landmarks",
           "get_landmarker"]
