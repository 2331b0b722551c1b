"""LivePortrait rendering: source processing once, motion extraction, batched warp + decode.

* :func:`prepare_source`: the 256x256 face crop -> appearance volume ``f_s``, the source's own
  motion (canonical keypoints, pose, expression, ``x_s``) and, when 203-point landmarks are
  given, its eye/lip open ratios. Done once per portrait.
* :func:`extract_motion`: driving frames (face crops) -> a :class:`~.motion.Motion`, in batches.
* :func:`render_frames`: driving keypoints -> frames, ``batch_size`` at a time on the device,
  yielded as they come (memory bounded for long sequences).
* :func:`motion_keypoints`: a :class:`~.motion.Motion` + the render flags -> driving keypoints.
* :func:`render_pasted`: :func:`render_frames` with each batch pasted back into the full
  portrait, yielded as ``(faces, frames)``; :func:`render_to_video` hands every batch to a frame
  sink (a :class:`core.video.VideoWriter`) as it comes, so memory does not grow with the length.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple, Union

import torch

from ..device import autocast, full_precision, resolve_device, resolve_dtype, resolve_run_dtype
from ..errors import InputError
from ..frames import FrameStream
from ..progress import Progress, ProgressFn
from ..resize import image_to_square_nchw
from . import kinematics as K
from .load import INPUT_SIZE, LivePortraitModels
from .motion import DriveOptions, Motion, SourceMotion, driving_keypoints



MASK_TEMPLATE = Path(__file__).resolve().parent / "configs" / "mask_template.png"
_MASK: Optional[torch.Tensor] = None


def mask_template() -> torch.Tensor:
    """LivePortrait's paste-back mask ``[S,S]`` (0..1), loaded once."""
    global _MASK
    if _MASK is None:
        from ..image import load_image
        _MASK = load_image(MASK_TEMPLATE)[0, ..., 0]
    return _MASK


@dataclass
class LivePortraitSource:
    """Everything about the portrait that every frame reuses."""

    feature_3d: Optional[torch.Tensor]  # [1, C, D, H, W] appearance volume (on the device); None = motion only
    motion: SourceMotion        # kp, pose, exp, x_s (float32, CPU)
    raw: Optional[dict] = None  # the motion extractor's raw heads (pose as 66-bin logits), float32 CPU
    record: Optional[object] = None  # CropRecord of the face crop in the full portrait (portrait_source)


def to_input(images: torch.Tensor, size: int = INPUT_SIZE, device=None) -> torch.Tensor:
    """IMAGE ``[B,H,W,3]`` 0..1 -> ``[B,3,size,size]`` on ``device`` (area-resized when needed,
    like the official 512 -> 256 INTER_AREA step)."""
    return image_to_square_nchw(images, size, device)


@torch.inference_mode()
def motion_info(models: LivePortraitModels, x: torch.Tensor, return_raw: bool = False):
    """Motion extractor on ``[B,3,H,W]`` -> per-frame info (kp, exp, degrees, t, scale), float32 CPU
    (and the raw heads too with ``return_raw``)."""
    raw = {k: v.float() for k, v in models.motion(x).items()}
    with full_precision(x.device):
        info = K.kp_info(raw)
    info = {k: v.cpu() for k, v in info.items()}
    return (info, {k: v.cpu() for k, v in raw.items()}) if return_raw else info


@torch.inference_mode()
def prepare_source(models: LivePortraitModels, crop: torch.Tensor, lmk203: Optional[torch.Tensor] = None,
                   device=None, precision: str = "fp32", size: Optional[int] = None,
                   appearance: bool = True) -> LivePortraitSource:
    """``crop``: the face crop as IMAGE ``[1,H,W,3]`` (resized to ``size``, default the models'
    :attr:`~.load.LivePortraitModels.input_size`). ``appearance=False``: only the portrait's own motion
    (what motion producers need), without the appearance volume."""
    dev = resolve_device(device)
    x = to_input(crop[:1], models.input_size if size is None else size, dev)
    with autocast(dev, resolve_dtype(precision, dev)):
        feature = models.appearance(x) if appearance else None
        info, raw = motion_info(models, x, return_raw=True)
    eyes = lip = None
    if lmk203 is not None:
        eyes, lip = K.eye_ratio(lmk203).reshape(1, 2), K.lip_ratio(lmk203).reshape(1, 1)
    return LivePortraitSource(feature_3d=feature, motion=SourceMotion.from_kp_info(info, eyes=eyes, lip=lip),
                              raw=raw)


NO_FACE_BOX_DETECTORS = ("center", "none (already cropped)", "none")


def portrait_source(models: LivePortraitModels, portrait, device=None, precision: str = "fp32",
                    appearance: bool = True) -> LivePortraitSource:
    """A :class:`core.face.Portrait` (from LoadPortrait) -> its LivePortrait source, cropped the
    way LivePortrait was trained (``record`` = the crop at the output size, for paste-back).
    ``appearance=False`` skips the appearance volume (see :func:`prepare_source`)."""
    from ..face import crop_image
    from .crop import SOURCE_SCALE, SOURCE_VY, record_from_box

    in_size, out_size = models.input_size, models.output_size
    rec = portrait.record
    box = rec.bbox if rec.bbox is not None else (-0.5, -0.5, rec.full_size[1] - 0.5, rec.full_size[0] - 0.5)
    record = record_from_box(box, rec.full_size, out_size, SOURCE_SCALE, SOURCE_VY,
                             rec.detector not in NO_FACE_BOX_DETECTORS)
    crop = crop_image(portrait.full, record.with_crop_size(in_size), padding_mode="border", device=device)
    source = prepare_source(models, crop, device=device, precision=precision, size=in_size, appearance=appearance)
    source.record = record
    return source


@torch.inference_mode()
def extract_motion(models: LivePortraitModels, frames: Union[torch.Tensor, FrameStream], fps: float = 25.0,
                   batch_size: int = 8, device=None, precision: str = "fp32", size: Optional[int] = None,
                   progress: Optional[ProgressFn] = None) -> Motion:
    """Driving face crops -> their :class:`Motion` (video-driven mode), resized to ``size`` (default the models'
    :attr:`~.load.LivePortraitModels.input_size`). ``frames``: an IMAGE ``[T,H,W,3]`` or a
    :class:`~core.frames.FrameStream` (pulled ``batch_size`` frames at a time: only the motion, a few hundred
    bytes a frame, is kept)."""
    dev = resolve_device(device)
    size = models.input_size if size is None else size
    batch_size = max(int(batch_size), 1)
    if not isinstance(frames, FrameStream):
        frames = FrameStream.from_images(frames, batch_size=batch_size, label="the driving video")
    n = len(frames)
    if n == 0:
        raise InputError("the driving video has no frames")
    bar = Progress(-(-n // batch_size), progress)
    parts = []
    with autocast(dev, resolve_dtype(precision, dev)):
        for batch in frames.batches(batch_size):
            parts.append({k: v.to("cpu") for k, v in motion_info(models, to_input(batch, size, dev)).items()})
            bar.step()
    info = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return Motion.from_kp_info(info, fps=fps)


@torch.inference_mode()
def warp_decode(models: LivePortraitModels, feature_3d: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> dict:
    """One batch: warp the source volume to the driving keypoints and decode (B from ``x_d``)."""
    b = x_d.shape[0]
    warped = models.warping(feature_3d, kp_driving=x_d, kp_source=x_s.expand(b, -1, -1))
    return {"out": models.spade(warped["out"]), "occlusion_map": warped["occlusion_map"]}


def render_frames(models: LivePortraitModels, source: LivePortraitSource, x_d: torch.Tensor, batch_size: int = 4,
                  device=None, precision: str = "auto", progress: Optional[ProgressFn] = None) -> Iterator[torch.Tensor]:
    """Yield rendered frames ``[B,3,S,S]`` (float32 in (0,1), CPU) for driving keypoints ``x_d`` [T,21,3]."""
    dev = resolve_device(device)
    dtype = resolve_run_dtype(precision, dev, "LivePortrait renders")
    n = int(x_d.shape[0])
    bar = Progress(-(-n // batch_size), progress)
    if source.feature_3d is None:
        raise InputError("this LivePortrait source was prepared without its appearance volume (appearance=False); "
                         "prepare it with appearance=True to render it")
    x_s = source.motion.x_s.to(dev)
    feature = source.feature_3d.to(dev)
    # on the CPU one frame at a time is fastest (batch 4 costs 1.25x more per frame in bf16: the
    # activations of several frames no longer stay in the caches); the batch still sets how many
    # frames are handed on together
    step = 1 if dev.type == "cpu" else batch_size
    with autocast(dev, dtype):
        for i in range(0, n, batch_size):
            x_b = x_d[i:i + batch_size].to(dev)
            out = torch.cat([warp_decode(models, feature, x_s, x_b[j:j + step])["out"]
                             for j in range(0, int(x_b.shape[0]), step)])
            frames = out.float().cpu()
            bar.step(preview=frames[-1].permute(1, 2, 0))
            yield frames


def motion_keypoints(models: LivePortraitModels, source: LivePortraitSource, motion: Motion, relative: bool = True,
                     region: str = "all", stitching: bool = True, multiplier: float = 1.0,
                     expression_friendly: bool = False, normalize_lip: bool = False) -> torch.Tensor:
    """Driving keypoints ``x_d`` [T,21,3] for ``motion`` on ``source`` with the render flags. A composed
    motion (MotionDiT / procedural) that carries lip and eye open ratios drives them through
    LivePortrait's retargeting networks."""
    retarget = bool(motion.composed)
    opts = DriveOptions(relative=relative, region=region, stitching=stitching, multiplier=multiplier,
                        expression_friendly=expression_friendly, normalize_lip=normalize_lip,
                        lip_retargeting=retarget and motion.lip is not None,
                        eye_retargeting=retarget and motion.eyes is not None)
    return driving_keypoints(source.motion, motion, opts, models.stitching, models.lip, models.eye)


def render_pasted(models: LivePortraitModels, source: LivePortraitSource, x_d: torch.Tensor,
                  full: Optional[torch.Tensor] = None, batch_size: int = 4, device=None, precision: str = "auto",
                  progress: Optional[ProgressFn] = None,
                  mask: Optional[torch.Tensor] = None) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Yield ``(faces [B,S,S,3], frames [B,H,W,3])`` per batch (IMAGE layout, float32 CPU): the rendered
    face crops and, when ``full`` (the portrait ``[1,H,W,3]``) is given, the faces pasted back into it
    the way LivePortrait does (``source.record``, its mask template, no pre-filtering); else ``None``.
    Nothing is kept between batches."""
    if full is not None and source.record is None:
        raise InputError("paste-back needs the face crop's record (make the source with portrait_source)")
    if full is not None and mask is None:
        mask = mask_template()
    from ..face import paste_back

    for batch in render_frames(models, source, x_d, batch_size=batch_size, device=device, precision=precision,
                               progress=progress):
        faces = batch.permute(0, 2, 3, 1)
        frames = None
        if full is not None:
            frames = paste_back(full, faces, source.record, mask=mask, device=device, antialias=False,
                                premultiplied=False)
        yield faces, frames


def render_to_video(models: LivePortraitModels, source: LivePortraitSource, x_d: torch.Tensor, writer,
                    full: Optional[torch.Tensor] = None, batch_size: int = 4, device=None, precision: str = "auto",
                    progress: Optional[ProgressFn] = None, mask: Optional[torch.Tensor] = None) -> int:
    """Render and hand every batch to ``writer`` as soon as it is ready: the pasted frames (or the face
    crops without ``full``) as IMAGE ``[B,H,W,3]``. ``writer`` is a :class:`core.video.VideoWriter` or
    any object with ``write(frames)`` (or a plain callable). Memory stays at one batch whatever the
    length. Returns the number of frames written."""
    sink: Callable[[torch.Tensor], None] = writer.write if hasattr(writer, "write") else writer
    done = 0
    for faces, frames in render_pasted(models, source, x_d, full, batch_size=batch_size, device=device,
                                       precision=precision, progress=progress, mask=mask):
        out = frames if frames is not None else faces
        sink(out)
        done += int(out.shape[0])
    return done
