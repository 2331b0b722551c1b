"""Face detectors: face-alignment's S3FD and BlazeFace networks, and the two that need no weights.

:class:`FaceDetector` backends: face-alignment's S3FD and BlazeFace networks (weights loaded only
through :func:`core.weights.load_state_dict`, never downloaded here), :class:`CenterDetector` and
:class:`NoneDetector`. :func:`make_detector` builds one by its UI name; :func:`get_detector` does
the same with the weights found (or downloaded) by :func:`core.weights.resolve` and keeps it in
the model cache. Boxes are in the pixel-centre coordinates of :mod:`core.face.crop`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import weights
from ..cache import CACHE
from ..device import resolve_device
from ..errors import CheckpointError, InputError, TalkingHeadError, WeightsMissingError
from ..weights import check_state_dict, load_state_dict
from .crop import Box, DeviceLike, _device, _opt_array

DETECTOR_CHOICES = ["face-alignment sfd", "face-alignment blazeface", "center", "none (already cropped)"]
WEIGHT_IDS = {
    "s3fd": "face_detection/s3fd",
    "blazeface": "face_detection/blazeface",
    "blazeface_anchors": "face_detection/blazeface_anchors",
}


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


def get_detector(name: str, device="auto", download: bool = True) -> FaceDetector:
    """A detector by UI name, cached (and unloadable) like every other model."""
    dev = resolve_device(device)
    resolver: Callable[[str], Any] = lambda fid: weights.resolve(fid, download=download)  # noqa: E731
    try:
        return CACHE.get("face", name, lambda: make_detector(name, resolver, dev), dev,
                         info={"file": name})
    except WeightsMissingError as exc:
        # offline, the detector is often the only thing between a user and a first video
        raise WeightsMissingError(f"{exc}\nOr use a detector that needs no weights: 'center' (a photo with the "
                                  f"face near the middle) or 'none (already cropped)' (a face crop).") from exc


__all__ = ["CenterDetector", "DETECTOR_CHOICES", "Face", "FaceAlignmentBlazeFace", "FaceAlignmentSFD", "FaceDetector",
           "NO_FACE_MESSAGE", "NoneDetector", "WEIGHT_IDS", "get_detector", "make_detector", "pick_largest"]
