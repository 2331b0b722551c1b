"""Dataset building: talking-face videos -> cached training clips, one ``.safetensors`` per clip.

Per clip, LivePortrait motion of every frame of the face crop at 25 fps as the 265-d vector
``[scale-1 | pitch 66 | yaw 66 | roll 66 | t 3 | exp 63]`` (raw motion-extractor heads, pose as
66-bin logits; :func:`motion_vectors`, the batched twin of
:func:`~..core.motion.ditto.compose.source_vector`) plus the 63-d canonical keypoints ``kp``,
1024-d HuBERT features at 25 fps (Ditto's offline chunking), per-frame emotion probabilities (8)
and eye features (``eye_open`` 2 | ``eye_ball`` 6) (:data:`~.common.CLIP_FORMAT`).
Clips that exist and are complete are kept, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..core.errors import InputError
from ..core.progress import check_cancel
from ..core.motion.ditto.compose import LAYOUT
from ..core.motion.ditto.conditions import AUDIO_DIM, EMO_DIM, NEUTRAL, emo_vector
from .common import AUDIO_SPEC, CLIP_FORMAT, CLIP_VERSION, EYE_DIM, MIN_FRAMES, NEUTRAL_EYE, PathLike, say
from .dataset import clip_is_complete, save_clip

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


def motion_vectors(raw: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Raw motion-extractor heads of B frames -> (B, 265) Ditto motion vectors
    ``[scale-1 | pitch | yaw | roll | t | exp]`` (the batched
    :func:`~..core.motion.ditto.compose.source_vector`)."""
    parts = []
    b = None
    for key, n in LAYOUT:
        if key not in raw:
            raise InputError(f"motion-extractor output lacks '{key}' (raw heads are needed: return_raw=True)")
        v = torch.as_tensor(raw[key]).float()
        v = v.reshape(v.shape[0], -1)
        if v.shape[1] != n:
            raise InputError(f"motion-extractor '{key}' has {v.shape[1]} values per frame, expected {n}")
        b = v.shape[0] if b is None else b
        parts.append(v - 1 if key == "scale" else v)
    return torch.cat(parts, dim=1)


def clip_name(video: PathLike) -> str:
    """Cache name of a video: its stem (safe characters) plus a short hash of its absolute path."""
    p = Path(video).expanduser().resolve()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.stem).strip("._") or "clip"
    return f"{stem[:80]}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"


def find_videos(inputs: Iterable) -> List[Tuple[Path, Optional[Path]]]:
    """Video files (with an optional separate audio file) from paths, folders (searched
    recursively for :data:`VIDEO_EXTENSIONS`) and ``(video, audio)`` pairs."""
    out: List[Tuple[Path, Optional[Path]]] = []
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    for item in inputs:
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise InputError(f"a (video, audio) pair needs two paths, got {item!r}")
            out.append((Path(item[0]), Path(item[1]) if item[1] else None))
            continue
        p = Path(item)
        if p.is_dir():
            out.extend((f, None) for f in sorted(p.rglob("*")) if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file())
        else:
            out.append((p, None))
    return out


def _video_fps(path: Path) -> Optional[float]:
    """The frame rate ffmpeg reports for a video (reads only its header)."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path.resolve()), pix_fmt="rgb24")
    try:
        meta = next(gen)
    except (RuntimeError, OSError, StopIteration) as exc:
        raise InputError(f"could not decode video file '{path.name}': {exc}") from exc
    finally:
        gen.close()
    fps = meta.get("fps")
    return float(fps) if fps else None


def _at_fps(frames: Iterable[np.ndarray], src_fps: Optional[float], fps: float) -> Iterator[np.ndarray]:
    """Frames at ``fps``: output frame n is the source frame nearest to time n / fps (frames are
    dropped or repeated; nothing is interpolated). Unchanged when the rates agree."""
    if not src_fps or abs(src_fps - fps) < 1e-3:
        yield from frames
        return
    n = 0
    for i, frame in enumerate(frames):
        while int(math.floor(n * src_fps / fps + 0.5)) == i:
            yield frame
            n += 1


def _batches(frames: Iterable[np.ndarray], size: int) -> Iterator[torch.Tensor]:
    buf: List[np.ndarray] = []
    for f in frames:
        buf.append(f)
        if len(buf) == size:
            yield torch.from_numpy(np.stack(buf)).float().div_(255.0)
            buf = []
    if buf:
        yield torch.from_numpy(np.stack(buf)).float().div_(255.0)


def _detection_frames(frames: Iterable[np.ndarray], count: int = 8) -> List[np.ndarray]:
    """About ``count`` frames spread over the whole video, in one streaming pass (memory bounded:
    every kept frame is thinned out by half whenever 2 x count are held)."""
    kept: List[np.ndarray] = []
    stride = 1
    for i, f in enumerate(frames):
        if i % stride == 0:
            kept.append(np.array(f, copy=True))
            if len(kept) >= 2 * count:
                kept = kept[::2]
                stride *= 2
    if not kept:
        return []
    idx = np.unique(np.linspace(0, len(kept) - 1, min(count, len(kept))).round().astype(int))
    return [kept[i] for i in idx]


def _per_frame(value, n: int, dim: int, what: str) -> torch.Tensor:
    if isinstance(value, (tuple, list)) and len(value) == 2 and what == "eye":
        value = torch.cat([torch.as_tensor(value[0]).float().reshape(n, -1),
                           torch.as_tensor(value[1]).float().reshape(n, -1)], dim=1)
    v = torch.as_tensor(value).float()
    if v.ndim == 1:
        v = v[None].expand(n, -1)
    if tuple(v.shape) != (n, dim):
        raise InputError(f"{what}_fn must return ({n}, {dim}) values for {n} frames, got {tuple(v.shape)}")
    return v.cpu()


def _features_array(out, what: str = "features_fn") -> Tuple[torch.Tensor, Optional[dict]]:
    """A features_fn result (tensor / array / AudioEmbeddings) -> ([T, 1024] float32, spec or None)."""
    spec = None
    if hasattr(out, "features") and hasattr(out, "spec"):
        spec = dict(out.spec)
        n = getattr(out, "num_frames", None)
        out = out.features if n is None else out.features[:n]
    f = torch.as_tensor(np.asarray(out) if isinstance(out, np.ndarray) else out).detach().float().cpu()
    if f.ndim != 2 or f.shape[1] != AUDIO_DIM:
        raise InputError(f"{what} must return [frames, {AUDIO_DIM}] audio features, got {tuple(f.shape)}")
    return f, spec


def hubert_features_fn(device="auto", precision="auto", model_path=None, download: bool = True,
                       encoder: str = AUDIO_SPEC["encoder"], chunking: str = AUDIO_SPEC["chunking"]) -> Callable:
    """``features_fn`` computing HuBERT features with Ditto's offline chunking through
    :func:`core.audio_features.compute_embeddings` (needs the hubert-large-ls960-ft weights)."""
    try:
        from ..core.audio_features import compute_embeddings
    except ImportError as exc:  # pragma: no cover - depends on the other module being present
        raise InputError("core.audio_features is not available: pass your own features_fn(audio_16k) -> "
                         "[T, 1024]") from exc

    def features_fn(audio_16k: torch.Tensor):
        return compute_embeddings(audio_16k, encoder=encoder, chunking=chunking, device=device, precision=precision,
                                  model_path=model_path, download=download, max_minutes=None, allow_silent=True,
                                  envelope=False)

    features_fn.spec = {"encoder": encoder, "layer": AUDIO_SPEC["layer"], "chunking": chunking, "dim": AUDIO_DIM}
    return features_fn


def build_dataset(videos, out_dir: PathLike, lp_models=None, features_fn: Optional[Callable] = None,
                  fps: float = 25.0, *, crop: bool = True, detector: Any = "face-alignment sfd",
                  crop_scale: Optional[float] = None, crop_vy: Optional[float] = None, detect_frames: int = 8,
                  padding_mode: str = "zeros", batch_size: int = 16, precision: str = "fp32",
                  emo_fn: Optional[Callable] = None, eye_fn: Optional[Callable] = None, flip: bool = False,
                  min_frames: int = MIN_FRAMES, device=None, download: bool = True,
                  log_fn: Optional[Callable[[str], None]] = print) -> Dict[str, list]:
    """Cache the training data of talking-face videos, one ``<clip>.safetensors`` per video.

    * ``videos``: video files, folders (searched recursively) or ``(video, audio)`` pairs; the audio
      track of the video is used unless a separate audio file is paired with it.
    * ``lp_models``: :class:`core.liveportrait.LivePortraitModels` (None: the official human set
      through the weights manager). The motion extractor runs in batches of ``batch_size`` frames
      at ``precision`` on the device its weights are on.
    * ``features_fn(audio_16k [N] float32) -> [T, 1024]`` (a tensor, array or ``AudioEmbeddings``)
      at 25 fps; None: HuBERT with Ditto's offline chunking (:func:`hubert_features_fn`).
    * Frames are taken at ``fps`` (nearest source frame; no interpolation).
    * ``crop``: one fixed LivePortrait crop per clip from the mean detection box of
      ``detect_frames`` frames spread over the clip (``detector``: a name of
      :data:`core.face.DETECTOR_CHOICES` or a detector object; ``crop_scale`` / ``crop_vy`` default
      to the source crop, 2.3 / -0.125, which is Ditto's), cut at the extractor's input size;
      ``crop=False``: frames used as they are (already face crops), resized to the input size.
    * ``emo_fn(crops [B, S, S, 3] 0..1) -> [B, 8]`` emotion probabilities (order of
      :data:`~..core.motion.ditto.conditions.EMOTIONS`); None: the neutral label
      (``softmax(8 onehot(4))``) on every frame. ``eye_fn(crops) -> [B, 8]`` or ``(eye_open [B, 2],
      eye_ball [B, 6])`` (see :func:`~..core.motion.ditto.conditions.eye_features`); None:
      :data:`~.common.NEUTRAL_EYE` on every frame.
    * ``flip``: also cache a mirrored copy (``<clip>-flip``): the motion extractor (and the emotion /
      eye functions) run on the horizontally flipped crops, the audio is shared (the reference's
      horizontal-flip copies).
    * Clips with fewer than ``min_frames`` (81) usable frames are skipped with a message; existing
      complete cache files are kept (the call is resumable); files are written atomically.

    Returns ``{"written": [paths], "kept": [paths], "skipped": [(video, reason)]}``.
    """
    from ..core import face as core_face
    from ..core.audio import load_audio, prepare
    from ..core.device import autocast, resolve_dtype
    from ..core.liveportrait.crop import SOURCE_SCALE, SOURCE_VY, record_from_box
    from ..core.liveportrait.render import motion_info, to_input
    from ..core.video import read_frames

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = find_videos(videos)
    result: Dict[str, list] = {"written": [], "kept": [], "skipped": []}
    if not items:
        say(log_fn, "build_dataset: no videos found")
        return result
    if lp_models is None:
        from ..core.liveportrait import get_liveportrait

        lp_models = get_liveportrait("human", device=device or "auto", download=download)
    dev = next(lp_models.motion.parameters()).device
    dtype = resolve_dtype(precision, dev)
    size = lp_models.input_size
    audio_spec = getattr(features_fn, "spec", None)
    if features_fn is None:
        features_fn = hubert_features_fn(device=dev, download=download)
        audio_spec = features_fn.spec
    crop_scale = SOURCE_SCALE if crop_scale is None else float(crop_scale)
    crop_vy = SOURCE_VY if crop_vy is None else float(crop_vy)
    det = None
    neutral_emo = emo_vector(NEUTRAL)
    neutral_eye = torch.tensor(NEUTRAL_EYE, dtype=torch.float32)

    for n_item, (video, audio_path) in enumerate(items):
        check_cancel()  # the host's cancel (ComfyUI's interrupt); Ctrl-C on the command line
        name = clip_name(video)
        targets = [out_dir / f"{name}.safetensors"] + ([out_dir / f"{name}-flip.safetensors"] if flip else [])
        tag = f"[{n_item + 1}/{len(items)}] {video.name}"
        if all(clip_is_complete(p) for p in targets):
            result["kept"].extend(str(p) for p in targets)
            say(log_fn, f"{tag}: cached, kept")
            continue

        def skip(reason: str) -> None:
            result["skipped"].append((str(video), reason))
            say(log_fn, f"{tag}: skipped: {reason}")

        if not video.is_file():
            skip("file not found")
            continue
        try:
            audio = load_audio(audio_path or video)
        except InputError as exc:
            skip(f"no usable audio ({exc})")
            continue
        samples = prepare(audio, sample_rate=16000, mono=True).waveform[0]
        audio_frames = int(math.ceil(samples.numel() * fps / 16000 - 1e-9))
        if audio_frames < min_frames:
            skip(f"audio covers {audio_frames} frames at {fps:g} fps, fewer than {min_frames}")
            continue
        try:
            src_fps = _video_fps(video)
        except InputError as exc:
            skip(str(exc))
            continue

        record = None
        if crop:
            if det is None:
                if isinstance(detector, str):
                    from ..core.face import get_detector

                    det = get_detector(detector, dev, download)
                else:
                    det = detector
            boxes = []
            for frame in _detection_frames(read_frames(video), detect_frames):
                faces = det.detect(frame)
                if faces:
                    boxes.append(core_face.pick_largest(faces).box)
                    hw = frame.shape[:2]
            if not boxes:
                skip("no face found in the sampled frames")
                continue
            box = np.mean(np.asarray(boxes, dtype=np.float64), axis=0)
            record = record_from_box(box, hw, size, crop_scale, crop_vy, getattr(det, "is_face_box", True))

        variants = [False, True] if flip else [False]
        acc: Dict[bool, Dict[str, list]] = {v: {"motion": [], "kp": [], "emo": [], "eye": []} for v in variants}
        n_frames = 0
        with torch.inference_mode():
            for batch in _batches(_at_fps(read_frames(video), src_fps, fps), batch_size):
                check_cancel()
                crops = batch if record is None else \
                    core_face.crop_image(batch, record, padding_mode=padding_mode, device=dev)
                n = crops.shape[0]
                n_frames += n
                for mirrored in variants:
                    c = crops.flip(2) if mirrored else crops
                    x = to_input(c, size, dev)
                    with autocast(dev, dtype):
                        _, raw = motion_info(lp_models, x, return_raw=True)
                    a = acc[mirrored]
                    a["motion"].append(motion_vectors(raw))
                    a["kp"].append(raw["kp"].float().reshape(n, -1))
                    a["emo"].append(neutral_emo.expand(n, -1) if emo_fn is None
                                    else _per_frame(emo_fn(c), n, EMO_DIM, "emo"))
                    a["eye"].append(neutral_eye.expand(n, -1) if eye_fn is None
                                    else _per_frame(eye_fn(c), n, EYE_DIM, "eye"))
        if n_frames < min_frames:
            skip(f"{n_frames} video frames at {fps:g} fps, fewer than {min_frames}")
            continue

        try:
            feats, spec = _features_array(features_fn(samples))
        except InputError as exc:
            skip(f"audio features failed: {exc}")
            continue
        spec = spec or audio_spec
        n = min(n_frames, feats.shape[0])
        if n < min_frames:
            skip(f"{feats.shape[0]} audio feature frames, fewer than {min_frames}")
            continue
        if abs(n_frames - feats.shape[0]) > 2:
            say(log_fn, f"{tag}: {n_frames} video frames but {feats.shape[0]} audio feature frames; using the "
                        f"first {n}")
        for mirrored, target in zip(variants, targets):
            a = acc[mirrored]
            tensors = {
                "motion": torch.cat(a["motion"])[:n].contiguous(),
                "kp": torch.cat(a["kp"])[:n].contiguous(),
                "features": feats[:n].contiguous(),
                "emo": torch.cat(a["emo"])[:n].contiguous(),
                "eye": torch.cat(a["eye"])[:n].contiguous(),
                "fps": torch.tensor([float(fps)], dtype=torch.float32),
            }
            meta = {
                "format": CLIP_FORMAT, "version": CLIP_VERSION, "source": str(video.resolve()),
                "audio": str(Path(audio_path).resolve()) if audio_path else "", "fps": f"{fps:g}",
                "source_fps": f"{src_fps:g}" if src_fps else "", "frames": str(n), "flip": "1" if mirrored else "0",
                "crop": json.dumps({"scale": crop_scale, "vy": crop_vy, "matrix": np.asarray(record.matrix).tolist(),
                                    "size": size}) if record is not None else "none (frames used as is)",
                "audio_features": json.dumps(spec) if spec else "unknown (custom features_fn)",
                "emotion": "emo_fn" if emo_fn is not None else "neutral label (no emotion model)",
                "eye": "eye_fn" if eye_fn is not None else f"constant neutral {list(NEUTRAL_EYE)} (no landmarks)",
                "layout": "motion [scale-1|pitch 66|yaw 66|roll 66|t 3|exp 63]; kp 63; eye [eye_open 2|eye_ball 6]",
            }
            save_clip(target, tensors, meta)
            result["written"].append(str(target))
        say(log_fn, f"{tag}: {n} frames -> {', '.join(p.name for p in targets)}")
    return result


__all__ = ["VIDEO_EXTENSIONS", "build_dataset", "clip_name", "find_videos", "hubert_features_fn", "motion_vectors"]
