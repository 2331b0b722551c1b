"""Training / fine-tuning Ditto's audio-to-motion diffusion model (LMDM) in plain torch.

Follows the official training code (antgroup/ditto-talkinghead, branch ``train``, see
``shared/reference/ditto/README.md`` section 2 "Training"):

* **Data** (:func:`build_dataset`): per clip, LivePortrait motion of every frame of the face crop at
  25 fps as the 265-d vector ``[scale-1 | pitch 66 | yaw 66 | roll 66 | t 3 | exp 63]`` (raw
  motion-extractor heads, pose as 66-bin logits; :func:`motion_vectors`, the batched twin of
  :func:`~.compose.source_vector`) plus the 63-d canonical keypoints ``kp``, 1024-d HuBERT features
  at 25 fps (Ditto's offline chunking), per-frame emotion probabilities (8) and eye features
  (``eye_open`` 2 | ``eye_ball`` 6). One ``.safetensors`` file per clip (:data:`CLIP_FORMAT`).
* **Windows** (:class:`MotionDataset`): 80 frames starting at every frame ``s >= 1``;
  ``cond_frame`` = motion of frame ``s - 1``; ``cond`` (1103) = ``[features | emo (window mean) |
  eye_open | eye_ball | sc]`` with ``sc`` = ``kp`` of a random frame of the clip.
* **Objective** (:func:`diffusion_loss`): x0-prediction under the 1000-step cosine schedule
  (:func:`~.sampler.cosine_alphas_cumprod`, the one :func:`~.sampler.make_schedule` samples with),
  ``t`` uniform in [0, 1000), ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``; loss = sum over the parts
  scale, pitch, yaw, roll, t, exp of the MSE of position, velocity (first difference) and
  acceleration (second difference), each averaged over its own dims (optionally + first frame vs
  ``cond_frame``, the reference's ``--use_last_frame_loss``). Classifier-free guidance training: with
  probability 0.2 per sample the encoded condition is replaced by the null embedding
  (``null_cond_embed`` / ``null_cond_hidden``, exactly the model's unconditional pass).
* **Optimiser** (:func:`train`): AdamW (lr 1e-4, weight decay 0.02; the reference used Adan with
  those values), EMA of the weights, autocast (bf16/fp16) on CUDA, gradient clipping, a resumable
  training state written atomically, and the final EMA weights as a safetensors checkpoint that
  :func:`~.load.load_lmdm` reads directly (``num_heads`` in its metadata).

Randomness is derived from ``(seed, step)`` (window order, ``sc`` frame, ``t``, noise, guidance
drop), so a run resumed from its training state continues exactly as if never interrupted.

The official network has dropout 0.1 inside its transformer layers; :class:`~.model.LMDM` has no
dropout modules (inference only), so training here runs without dropout.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ...errors import Cancelled, CheckpointError, InputError
from .compose import LAYOUT, MOTION_DIM, SLICES
from .conditions import AUDIO_DIM, EMO_DIM, EYE_BALL_DIM, EYE_OPEN_DIM, NEUTRAL, SC_DIM, emo_vector
from .model import LMDM, RELEASED

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: the audio features the released LMDM was trained on (recorded in every checkpoint written here)
AUDIO_SPEC = {"encoder": "hubert-large-ls960-ft", "layer": "last_hidden_state", "chunking": "ditto-offline",
              "dim": 1024}
COND_LAYOUT = "hubert 1024 | emo 8 | eye_open 2 | eye_ball 6 | sc 63"
CLIP_FORMAT = "talkinghead.ditto-train-clip"
CLIP_VERSION = "1"
STATE_FORMAT = "talkinghead.ditto-train-state"
CHECKPOINT_FORMAT = "talkinghead.ditto-lmdm"
STATE_NAME = "train_state.pt"
LOG_NAME = "train_log.jsonl"
SEQ_FRAMES = RELEASED["seq_frames"]
MIN_FRAMES = SEQ_FRAMES + 1          # one window needs its cond_frame before it
EYE_DIM = EYE_OPEN_DIM + EYE_BALL_DIM
COND_DIM = AUDIO_DIM + EMO_DIM + EYE_DIM + SC_DIM
#: Ditto's eye-open ratio (sum of three lid distances / eye width, MediaPipe indices of
#: ``eye_features``) measured on MediaPipe's canonical face mesh (open eyes, identical for both
#: eyes); ``eye_ball`` of a centred iris is exactly 0. The neutral eye condition when no
#: landmark model is given.
NEUTRAL_EYE_OPEN = 0.7173
NEUTRAL_EYE = (NEUTRAL_EYE_OPEN, NEUTRAL_EYE_OPEN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
#: loss parts: name -> dims of the motion vector (the reference's default ``part_w_dict``)
PARTS = {name: (SLICES[name].start, SLICES[name].stop) for name, _ in LAYOUT}
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
_RAW_KEYS = ("scale", "pitch", "yaw", "roll", "t", "exp", "kp")


# =========================================================================== small helpers
def _mix(*values) -> int:
    """A stable 63-bit seed from any tuple of ints/strings."""
    digest = hashlib.blake2b(repr(tuple(values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _generator(*values) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(_mix(*values))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename into place: a crash never leaves a half-written file under ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _say(log_fn: Optional[Callable[[str], None]], text: str) -> None:
    log.info(text)
    if log_fn is not None:
        log_fn(text)


def motion_vectors(raw: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Raw motion-extractor heads of B frames -> (B, 265) Ditto motion vectors
    ``[scale-1 | pitch | yaw | roll | t | exp]`` (the batched :func:`~.compose.source_vector`)."""
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


# =========================================================================== dataset building
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


def _clip_is_complete(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = set(fh.keys())
        return meta.get("format") == CLIP_FORMAT and {"motion", "kp", "features", "emo", "eye"} <= keys
    except Exception:
        return False


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
        from ...audio_features import compute_embeddings
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
                  log_fn: Optional[Callable[[str], None]] = print,
                  should_stop: Optional[Callable[[], bool]] = None) -> Dict[str, list]:
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
      :data:`~.conditions.EMOTIONS`); None: the neutral label (``softmax(8 onehot(4))``) on every
      frame. ``eye_fn(crops) -> [B, 8]`` or ``(eye_open [B, 2], eye_ball [B, 6])`` (see
      :func:`~.conditions.eye_features`); None: :data:`NEUTRAL_EYE` on every frame.
    * ``flip``: also cache a mirrored copy (``<clip>-flip``): the motion extractor (and the emotion /
      eye functions) run on the horizontally flipped crops, the audio is shared (the reference's
      horizontal-flip copies).
    * Clips with fewer than ``min_frames`` (81) usable frames are skipped with a message; existing
      complete cache files are kept (the call is resumable); files are written atomically.

    Returns ``{"written": [paths], "kept": [paths], "skipped": [(video, reason)]}``.
    """
    from ... import face as core_face
    from ...audio import load_audio, prepare
    from ...device import autocast, resolve_dtype
    from ...liveportrait.crop import SOURCE_SCALE, SOURCE_VY, record_from_box
    from ...liveportrait.render import motion_info, to_input
    from ...video import read_frames

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = find_videos(videos)
    result: Dict[str, list] = {"written": [], "kept": [], "skipped": []}
    if not items:
        _say(log_fn, "build_dataset: no videos found")
        return result
    if lp_models is None:
        from ...liveportrait import get_liveportrait

        lp_models = get_liveportrait("human", device=device or "auto", download=download)
    dev = next(lp_models.motion.parameters()).device
    dtype = resolve_dtype(precision, dev)
    size = int(lp_models.config.get("input_size", 256))
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
        if should_stop is not None and should_stop():
            raise Cancelled("dataset building was cancelled")
        name = clip_name(video)
        targets = [out_dir / f"{name}.safetensors"] + ([out_dir / f"{name}-flip.safetensors"] if flip else [])
        tag = f"[{n_item + 1}/{len(items)}] {video.name}"
        if all(_clip_is_complete(p) for p in targets):
            result["kept"].extend(str(p) for p in targets)
            _say(log_fn, f"{tag}: cached, kept")
            continue

        def skip(reason: str) -> None:
            result["skipped"].append((str(video), reason))
            _say(log_fn, f"{tag}: skipped: {reason}")

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
                    from ...portrait import get_detector

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
                if should_stop is not None and should_stop():
                    raise Cancelled("dataset building was cancelled")
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
            _say(log_fn, f"{tag}: {n_frames} video frames but {feats.shape[0]} audio feature frames; using the "
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
            from safetensors.torch import save_file

            _atomic_write(target, lambda tmp, t=tensors, m=meta: save_file(t, str(tmp), metadata=m))
            result["written"].append(str(target))
        _say(log_fn, f"{tag}: {n} frames -> {', '.join(p.name for p in targets)}")
    return result


# =========================================================================== dataset
def list_clips(paths) -> List[Path]:
    """Cached clip files from files and folders (``*.safetensors`` written by :func:`build_dataset`)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(f for f in sorted(p.glob("*.safetensors")) if _clip_is_complete(f))
        elif p.is_file():
            if not _clip_is_complete(p):
                raise InputError(f"{p} is not a training clip written by build_dataset ({CLIP_FORMAT})")
            out.append(p)
        else:
            raise InputError(f"training data not found: {p}")
    return out


def write_clip(path: PathLike, motion, kp, features, emo=None, eye=None, fps: float = 25.0,
               metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write one cached clip directly (tests, or data made elsewhere): ``motion`` [T, 265], ``kp``
    [T, 63], ``features`` [T, 1024], ``emo`` [T, 8] (default neutral), ``eye`` [T, 8] (default neutral)."""
    from safetensors.torch import save_file

    motion = torch.as_tensor(motion).float()
    n = motion.shape[0]
    emo = emo_vector(NEUTRAL).expand(n, -1) if emo is None else torch.as_tensor(emo).float()
    eye = torch.tensor(NEUTRAL_EYE).expand(n, -1) if eye is None else torch.as_tensor(eye).float()
    t = {"motion": motion, "kp": torch.as_tensor(kp).float().reshape(n, SC_DIM),
         "features": torch.as_tensor(features).float().reshape(n, AUDIO_DIM),
         "emo": emo.reshape(n, EMO_DIM), "eye": eye.reshape(n, EYE_DIM), "fps": torch.tensor([float(fps)])}
    if motion.shape != (n, MOTION_DIM):
        raise InputError(f"motion must be [T, {MOTION_DIM}], got {tuple(motion.shape)}")
    t = {k: v.contiguous() for k, v in t.items()}
    meta = {"format": CLIP_FORMAT, "version": CLIP_VERSION, "fps": f"{fps:g}", "frames": str(n)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    _atomic_write(path, lambda tmp: save_file(t, str(tmp), metadata=meta))
    return path


class MotionDataset(Dataset):
    """80-frame training windows over cached clips.

    Window ``(clip, s)`` for every ``s >= 1`` with ``s + 80 <= T``: ``x0`` = motion ``[s, s+80)``
    (80, 265), ``cond_frame`` = motion ``s - 1`` (265), ``cond`` (80, 1103) = ``[features | emo mean
    over the window | eye | sc]`` with ``sc`` = ``kp`` of a random frame of the clip.

    An item is an index or ``(index, seed)``; with a seed the random ``sc`` frame is drawn from it
    (reproducible in any worker process). ``preload``: hold every clip in memory (else each item
    reads its slices from the file).

    No flip augmentation here: mirroring a motion vector exactly needs the left/right pairing of
    LivePortrait's 21 implicit keypoints (for ``exp`` and ``kp``), which is not defined; mirrored
    training data is made by running the motion extractor on mirrored frames
    (``build_dataset(..., flip=True)``).
    """

    def __init__(self, clips, seq_frames: int = SEQ_FRAMES, preload: bool = True):
        self.files = list_clips(clips)
        if not self.files:
            raise InputError(f"no training clips found in {clips}")
        self.seq_frames = int(seq_frames)
        self.preload = bool(preload)
        self.cond_dim = COND_DIM
        self.clips: List[Optional[Dict[str, torch.Tensor]]] = []
        self.lengths: List[int] = []
        self.specs: List[Optional[dict]] = []
        self.index: List[Tuple[int, int]] = []
        from safetensors import safe_open

        for ci, f in enumerate(self.files):
            with safe_open(str(f), framework="pt") as fh:
                meta = fh.metadata() or {}
                n = fh.get_slice("motion").get_shape()[0]
                data = {k: fh.get_tensor(k).float() for k in ("motion", "kp", "features", "emo", "eye")} \
                    if self.preload else None
            try:
                self.specs.append(json.loads(meta.get("audio_features", "")))
            except ValueError:
                self.specs.append(None)
            self.clips.append(data)
            self.lengths.append(int(n))
            self.index.extend((ci, s) for s in range(1, int(n) - self.seq_frames + 1))
        if not self.index:
            raise InputError(f"no clip has the {self.seq_frames + 1} frames one training window needs")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_frames(self) -> int:
        return sum(self.lengths)

    def _rows(self, ci: int, key: str, start: int, stop: int) -> torch.Tensor:
        if self.preload:
            return self.clips[ci][key][start:stop]
        from safetensors import safe_open

        with safe_open(str(self.files[ci]), framework="pt") as fh:
            return fh.get_slice(key)[start:stop].float()

    def __getitem__(self, item) -> Dict[str, torch.Tensor]:
        seed = None
        if isinstance(item, (tuple, list)):
            item, seed = item
        ci, s = self.index[int(item)]
        n, L = self.lengths[ci], self.seq_frames
        rng = random.Random(seed) if seed is not None else random
        sc_frame = rng.randrange(n)
        motion = self._rows(ci, "motion", s - 1, s + L)
        emo = self._rows(ci, "emo", s, s + L).mean(0, keepdim=True).expand(L, -1)
        sc = self._rows(ci, "kp", sc_frame, sc_frame + 1).expand(L, -1)
        cond = torch.cat([self._rows(ci, "features", s, s + L), emo, self._rows(ci, "eye", s, s + L), sc], dim=1)
        return {"x0": motion[1:].contiguous(), "cond_frame": motion[0].contiguous(), "cond": cond.contiguous()}


class WindowSchedule:
    """Which windows step ``k`` trains on: each epoch is a fresh permutation of all windows (drawn
    from ``(seed, epoch)``), read ``batch_size`` at a time across epoch boundaries; every item
    carries its own seed. A pure function of the step, so resuming needs no sampler state."""

    def __init__(self, num_windows: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = int(num_windows), int(batch_size), int(seed)
        self._perm: Dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm:
            self._perm = {epoch: torch.randperm(self.n, generator=_generator(self.seed, "epoch", epoch))}
        return self._perm[epoch]

    def batch(self, step: int) -> List[Tuple[int, int]]:
        out = []
        for j in range(self.batch_size):
            k = step * self.batch_size + j
            epoch, pos = divmod(k, self.n)
            out.append((int(self._permutation(epoch)[pos]), _mix(self.seed, "item", k)))
        return out

    def from_step(self, step: int) -> Iterator[List[Tuple[int, int]]]:
        while True:
            yield self.batch(step)
            step += 1


# =========================================================================== objective
def part_losses(pred: torch.Tensor, target: torch.Tensor, weights: Optional[Mapping[str, float]] = None,
                cond_frame: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The reference's per-part losses (float32): for every part ``k`` of :data:`PARTS`,
    ``k_P`` = MSE of the values, ``k_V`` of the first and ``k_A`` of the second frame differences,
    each averaged over its (B, frames, part dims) and times the part weight; with ``cond_frame``
    also ``k_L`` = MSE of the first predicted frame vs ``cond_frame``."""
    pred, target = pred.float(), target.float()
    out: Dict[str, torch.Tensor] = {}
    for k, (s, e) in PARTS.items():
        w = 1.0 if weights is None else float(weights.get(k, 1.0))
        p, g = pred[..., s:e], target[..., s:e]
        vp, vg = p[:, 1:] - p[:, :-1], g[:, 1:] - g[:, :-1]
        ap, ag = vp[:, 1:] - vp[:, :-1], vg[:, 1:] - vg[:, :-1]
        out[f"{k}_P"] = (p - g).pow(2).mean() * w
        out[f"{k}_V"] = (vp - vg).pow(2).mean() * w
        out[f"{k}_A"] = (ap - ag).pow(2).mean() * w
        if cond_frame is not None:
            out[f"{k}_L"] = (p[:, 0] - cond_frame.float()[:, s:e]).pow(2).mean() * w
    return out


def q_sample(model: LMDM, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` with the model's (float32 cosine) schedule."""
    a = model.alphas_cumprod.to(x0.device)[t].float().reshape(-1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def diffusion_loss(model: LMDM, x0: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, keep: Optional[torch.Tensor] = None,
                   part_weights: Optional[Mapping[str, float]] = None,
                   last_frame_loss: bool = False) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Total loss and its parts for one batch: ``x0`` (B, L, 265), ``cond_frame`` (B, 265), ``cond``
    (B, L, C), integer steps ``t`` (B,), ``noise`` like ``x0``, ``keep`` (B,) bool = rows that keep
    their condition (the others get the null condition, i.e. the unconditional pass)."""
    b = x0.shape[0]
    x_t = q_sample(model, x0, t, noise)
    tokens, hidden = model.encode_cond(cond, b)
    if keep is not None and not bool(keep.all()):
        tokens = torch.where(keep[:, None, None], tokens, model.null_cond_embed.to(tokens.dtype).expand_as(tokens))
        hidden = torch.where(keep[:, None], hidden, model.null_cond_hidden.to(hidden.dtype).expand_as(hidden))
    pred = model.decode(x_t, cond_frame, tokens, hidden, t)
    parts = part_losses(pred, x0, part_weights, cond_frame if last_frame_loss else None)
    return torch.stack(list(parts.values())).sum(), parts


def draw_step(batch_size: int, seq_frames: int, motion_dim: int, seed: int, step: int,
              cond_drop_prob: float = 0.2, n_timesteps: int = 1000) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t (B,), noise (B, L, D), keep (B,)) of one training step, drawn on the CPU from ``(seed, step)``."""
    g = _generator(seed, "step", step)
    t = torch.randint(0, n_timesteps, (batch_size,), generator=g)
    noise = torch.randn((batch_size, seq_frames, motion_dim), generator=g)
    keep = torch.rand((batch_size,), generator=g) >= cond_drop_prob
    return t, noise, keep


@torch.no_grad()
def fixed_batch_loss(model: LMDM, batch: Mapping[str, torch.Tensor], seed: int = 0, cond_drop_prob: float = 0.0,
                     part_weights: Optional[Mapping[str, float]] = None) -> Tuple[float, Dict[str, float]]:
    """Loss of ``model`` on ``batch`` with steps and noise fixed by ``seed`` (for evaluation)."""
    dev = model.final_layer.weight.device
    x0 = batch["x0"].to(dev, torch.float32)
    t, noise, keep = draw_step(x0.shape[0], x0.shape[1], x0.shape[2], seed, -1, cond_drop_prob,
                               model.alphas_cumprod.shape[0])
    dt = model.final_layer.weight.dtype
    total, parts = diffusion_loss(model, x0, batch["cond_frame"].to(dev, dt), batch["cond"].to(dev, dt), t.to(dev),
                                  noise.to(dev), keep.to(dev), part_weights)
    return float(total), {k: float(v) for k, v in parts.items()}


# =========================================================================== EMA
class EMA:
    """Exponential moving average of a model's weights (float32 copies of every state-dict entry;
    parameters are averaged, buffers copied). ``warmup``: the decay at update n is
    ``min(decay, (1 + n) / (10 + n))`` so the average follows the model early on."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay, self.warmup = float(decay), bool(warmup)
        self.shadow = {k: v.detach().to("cpu" if not v.is_floating_point() else v.device).float().clone()
                       for k, v in model.state_dict().items()}

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, n: int) -> None:
        d = self.decay_at(n)
        params = dict(model.named_parameters())
        for k, v in model.state_dict().items():
            if k in params:
                self.shadow[k].lerp_(params[k].detach().float(), 1.0 - d)
            else:
                self.shadow[k].copy_(v.detach().float())

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise CheckpointError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k].float())


# =========================================================================== config / model
@dataclass
class TrainConfig:
    """Everything :func:`train` needs. ``init``: an official ``lmdm_v0.4_hubert.pth`` (or any
    checkpoint :func:`~.load.load_lmdm` reads) to fine-tune; None: a new model of the given size
    (``latent_dim``, ``ff_size``, ``num_layers``, ``num_heads``, ``num_encoder_layers``).
    ``num_heads`` also overrides the head count of an ``init`` file (default: its metadata, else 8)."""

    data: Union[str, List[str]] = "dataset"
    out_dir: str = "runs/ditto"
    init: Optional[str] = None
    latent_dim: int = RELEASED["latent_dim"]
    ff_size: int = RELEASED["ff_size"]
    num_layers: int = RELEASED["num_layers"]
    num_heads: Optional[int] = None
    num_encoder_layers: int = RELEASED["num_encoder_layers"]
    seq_frames: int = SEQ_FRAMES
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.02
    betas: Tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    cond_drop_prob: float = 0.2
    part_weights: Optional[Dict[str, float]] = None
    last_frame_loss: bool = False
    precision: str = "auto"        # auto: bf16 (fp16 without bf16 support) on CUDA, fp32 elsewhere
    device: str = "auto"
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    num_workers: int = 0
    preload: bool = True
    resume: bool = True
    output: str = "lmdm_ema.safetensors"
    audio_spec: Dict[str, Any] = field(default_factory=lambda: dict(AUDIO_SPEC))

    @classmethod
    def from_any(cls, config) -> "TrainConfig":
        if isinstance(config, TrainConfig):
            return dataclasses.replace(config)
        if isinstance(config, Mapping):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = set(config) - names
            if unknown:
                raise InputError(f"unknown training settings: {', '.join(sorted(unknown))}")
            cfg = cls(**config)
            cfg.betas = tuple(cfg.betas)
            return cfg
        raise InputError("config must be a TrainConfig or a dict")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def model_config(model: LMDM) -> Dict[str, int]:
    keys = ("motion_dim", "cond_dim", "seq_frames", "latent_dim", "ff_size", "num_layers", "num_heads",
            "num_encoder_layers")
    return {k: int(model.config[k]) for k in keys}


def build_model(cfg: TrainConfig) -> LMDM:
    """The model to train (float32, CPU, train mode): the ``init`` checkpoint, or a new one whose
    weights are drawn from ``cfg.seed`` (PyTorch default init; the null condition embeddings
    ``N(0, 1)`` like the reference's EDGE-style decoder)."""
    if cfg.init:
        from .load import load_lmdm

        model = load_lmdm(cfg.init, num_heads=cfg.num_heads, device="cpu")
        model.config.pop("path", None)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(cfg.seed, "init"))
            model = LMDM(motion_dim=MOTION_DIM, cond_dim=COND_DIM, seq_frames=cfg.seq_frames,
                         latent_dim=cfg.latent_dim, ff_size=cfg.ff_size, num_layers=cfg.num_layers,
                         num_heads=cfg.num_heads or RELEASED["num_heads"], num_encoder_layers=cfg.num_encoder_layers)
            torch.nn.init.normal_(model.null_cond_embed)
            torch.nn.init.normal_(model.null_cond_hidden)
    return model.float().train().requires_grad_(True)


def _amp_dtype(precision: str, dev: torch.device) -> torch.dtype:
    p = (precision or "auto").lower()
    if p == "auto":
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if p not in table:
        raise InputError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if table[p] == torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return table[p]


# =========================================================================== checkpoints
def export_checkpoint(state: Mapping[str, torch.Tensor], config: Mapping[str, int], path: PathLike,
                      audio_spec: Optional[Mapping] = None, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write LMDM weights (official key names, no prefix) as safetensors with the metadata
    :func:`~.load.load_lmdm` reads (``num_heads``) plus the model config, the audio-feature spec
    and the condition layout (JSON strings)."""
    from safetensors.torch import save_file

    with torch.device("meta"):      # only the key names are needed
        ref = list(LMDM(**config).state_dict())
    missing = set(ref) ^ set(state)
    if missing:
        raise CheckpointError(f"weights do not match an LMDM of config {dict(config)}: {sorted(missing)[:5]}")
    tensors = {k: state[k].detach().to("cpu", torch.float32).contiguous().clone() for k in ref}
    meta = {"format": CHECKPOINT_FORMAT, "num_heads": str(int(config["num_heads"])),
            "model_config": json.dumps({k: int(v) for k, v in config.items()}),
            "audio_features": json.dumps(dict(audio_spec or AUDIO_SPEC)), "cond_layout": COND_LAYOUT,
            "motion_layout": "scale-1 1 | pitch 66 | yaw 66 | roll 66 | t 3 | exp 63",
            "prediction": "x0", "schedule": "cosine 1000 (s=8e-3)"}
    if extra:
        meta["training"] = json.dumps(dict(extra), default=str)
    path = Path(path)
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def _rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Mapping[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def load_train_state(path: PathLike) -> Dict[str, Any]:
    """A training state written by :func:`train` (loaded without executing pickled code)."""
    path = Path(path)
    try:
        st = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path.name}: not a readable training state: {exc}") from exc
    if not isinstance(st, Mapping) or st.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path.name} is not a Ditto training state written by train()")
    return dict(st)


def export_from_state(state_path: PathLike, out: PathLike, use_ema: bool = True) -> Path:
    """The EMA (or raw, ``use_ema=False``) weights of a training state as a safetensors checkpoint."""
    st = load_train_state(state_path)
    cfg = json.loads(st["train_config"])
    return export_checkpoint(st["ema"] if use_ema else st["model"], st["model_config"], out,
                             cfg.get("audio_spec"), {"step": int(st["step"]), "weights": "ema" if use_ema else "raw",
                                                     "init": cfg.get("init")})


# =========================================================================== training
@dataclass
class TrainResult:
    checkpoint: Optional[Path]
    state: Path
    step: int
    history: List[Dict[str, float]]
    stopped: bool = False


def _collate(items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def train(config, log_fn: Optional[Callable[[str], None]] = print,
          should_stop: Optional[Callable[[], bool]] = None) -> TrainResult:
    """Train or fine-tune LMDM on cached clips (see :class:`TrainConfig`).

    Resumes from ``out_dir/train_state.pt`` when it exists (``resume``); the state (model, EMA,
    optimiser, grad scaler, step, RNG states, configs) is written atomically every ``save_every``
    steps, at the end and when ``should_stop()`` turns True. Loss parts are averaged over
    ``log_every`` steps, printed through ``log_fn`` and appended to ``out_dir/train_log.jsonl``.
    At the end the EMA weights go to ``out_dir/<output>`` (safetensors, loadable by ``load_lmdm``).
    """
    from ...device import autocast, resolve_device

    cfg = TrainConfig.from_any(config)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path, log_path = out / STATE_NAME, out / LOG_NAME
    dev = resolve_device(cfg.device)
    amp = _amp_dtype(cfg.precision, dev)

    dataset = MotionDataset(cfg.data, cfg.seq_frames, cfg.preload)
    foreign = {json.dumps(s, sort_keys=True) for s in dataset.specs if s}
    want = {k: cfg.audio_spec.get(k) for k in ("encoder", "layer", "chunking", "dim")}
    for s in foreign:
        got = json.loads(s)
        if any(got.get(k) != v for k, v in want.items() if k in got):
            _say(log_fn, f"warning: clips were made with audio features {got}, the checkpoint will claim {want}")
    if len(foreign) < len(dataset.specs):
        _say(log_fn, "note: some clips do not record how their audio features were made")

    resume = load_train_state(state_path) if cfg.resume and state_path.is_file() else None
    if resume is not None:
        model = LMDM(**resume["model_config"]).float()
        model.train().requires_grad_(True)
    else:
        model = build_model(cfg)
    mcfg = model_config(model)
    if mcfg["cond_dim"] != dataset.cond_dim or mcfg["seq_frames"] != cfg.seq_frames or mcfg["motion_dim"] != MOTION_DIM:
        raise InputError(f"the model (cond {mcfg['cond_dim']}, {mcfg['seq_frames']} frames, motion "
                         f"{mcfg['motion_dim']}) does not fit the data (cond {dataset.cond_dim}, {cfg.seq_frames} "
                         f"frames, motion {MOTION_DIM})")
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp == torch.float16 and dev.type == "cuda"))
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        ema.load_state_dict(resume["ema"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        _set_rng_state(resume["rng"])
        step = int(resume["step"])
        if int(resume.get("num_windows", len(dataset))) != len(dataset):
            _say(log_fn, f"warning: the data changed since the saved state ({resume.get('num_windows')} -> "
                         f"{len(dataset)} windows): the window order differs from an uninterrupted run")
        _say(log_fn, f"resumed from {state_path} at step {step}")
    else:
        src = f"fine-tuning {cfg.init}" if cfg.init else "training from scratch"
        _say(log_fn, f"{src}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {mcfg}")
    _say(log_fn, f"data: {len(dataset.files)} clips, {dataset.num_frames} frames, {len(dataset)} windows; "
                 f"device {dev}, autocast {str(amp).replace('torch.', '')}")

    def save_state() -> None:
        st = {"format": STATE_FORMAT, "version": 1, "step": step, "model_config": mcfg,
              "train_config": json.dumps(cfg.to_dict()), "num_windows": len(dataset),
              "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
              "ema": ema.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
              "rng": _rng_state()}
        _atomic_write(state_path, lambda tmp: torch.save(st, str(tmp)))

    schedule = WindowSchedule(len(dataset), cfg.batch_size, cfg.seed)
    history: List[Dict[str, float]] = []
    stopped = False
    if step < cfg.steps:
        loader = DataLoader(dataset, batch_sampler=schedule.from_step(step), num_workers=cfg.num_workers,
                            collate_fn=_collate, pin_memory=dev.type == "cuda",
                            persistent_workers=False)
        sums: Dict[str, float] = {}
        count, t0, skipped = 0, time.time(), 0
        n_t = int(model.alphas_cumprod.shape[0])
        for batch in loader:
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else cfg.lr
            for g in opt.param_groups:
                g["lr"] = lr
            b = batch["x0"].shape[0]
            t, noise, keep = draw_step(b, cfg.seq_frames, MOTION_DIM, cfg.seed, step, cfg.cond_drop_prob, n_t)
            x0 = batch["x0"].to(dev, non_blocking=True)
            with autocast(dev, amp):
                loss, parts = diffusion_loss(model, x0, batch["cond_frame"].to(dev), batch["cond"].to(dev),
                                             t.to(dev), noise.to(dev), keep.to(dev), cfg.part_weights,
                                             cfg.last_frame_loss)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if torch.isfinite(gnorm) or scaler.is_enabled():
                scaler.step(opt)       # the scaler itself skips non-finite fp16 steps
                scaler.update()
                skipped = 0
            else:
                skipped += 1
                _say(log_fn, f"step {step + 1}: non-finite gradient, update skipped")
                if skipped >= 20:
                    save_state()
                    raise InputError(f"20 steps in a row had non-finite gradients (step {step + 1}); lower the "
                                     f"learning rate, use precision fp32, or check the data for NaN/inf values")
            step += 1
            ema.update(model, step)
            names = list(parts) + ["loss", "grad_norm"]
            values = torch.stack([parts[k].detach().float() for k in parts] + [loss.detach().float(),
                                                                                gnorm.detach().float()]).cpu().tolist()
            for k, v in zip(names, values):     # one device sync per step
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if step % max(cfg.log_every, 1) == 0 or step == cfg.steps:
                rec = {"step": step, "lr": lr, **{k: v / count for k, v in sums.items()},
                       "steps_per_s": count / max(time.time() - t0, 1e-9)}
                history.append(rec)
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
                pose = sum(rec.get(f"{k}_{m}", 0.0) for k in ("pitch", "yaw", "roll") for m in "PVA")
                _say(log_fn, f"step {step}/{cfg.steps} loss {rec['loss']:.5f} (exp P {rec['exp_P']:.5f} "
                             f"V {rec['exp_V']:.5f} A {rec['exp_A']:.5f}, pose {pose:.5f}, t {rec['t_P']:.5f}, "
                             f"scale {rec['scale_P']:.6f}) |g| {rec['grad_norm']:.3f} lr {lr:.2e} "
                             f"{rec['steps_per_s']:.2f} it/s")
                sums, count, t0 = {}, 0, time.time()
            if step % max(cfg.save_every, 1) == 0 and step < cfg.steps:
                save_state()
            if step >= cfg.steps:
                break
            if should_stop is not None and should_stop():
                stopped = True
                break
        del loader
    save_state()
    ckpt = None
    if not stopped:
        ckpt = export_checkpoint(ema.state_dict(), mcfg, out / cfg.output, cfg.audio_spec,
                                 {"step": step, "weights": "ema", "ema_decay": cfg.ema_decay, "init": cfg.init,
                                  "lr": cfg.lr, "batch_size": cfg.batch_size, "clips": len(dataset.files),
                                  "windows": len(dataset)})
        _say(log_fn, f"wrote {ckpt} (EMA weights, step {step})")
    else:
        _say(log_fn, f"stopped at step {step}; state saved to {state_path}")
    return TrainResult(checkpoint=ckpt, state=state_path, step=step, history=history, stopped=stopped)


__all__ = ["AUDIO_SPEC", "CLIP_FORMAT", "COND_DIM", "EMA", "MIN_FRAMES", "MotionDataset", "NEUTRAL_EYE", "PARTS",
           "TrainConfig", "TrainResult", "WindowSchedule", "build_dataset", "build_model", "clip_name",
           "diffusion_loss", "draw_step", "export_checkpoint", "export_from_state", "find_videos", "fixed_batch_loss",
           "hubert_features_fn", "list_clips", "load_train_state", "model_config", "motion_vectors", "part_losses",
           "q_sample", "train", "write_clip"]
