"""SDA input preparation, numerically as the official ``VideoAnimator.__call__``.

Face
    * :func:`align_face` - ``preprocess_img``: a similarity transform (Umeyama, as
      ``skimage.transform.estimate_transform('similarity', ...)``) from the 5 stable landmarks
      (:data:`STABLE_POINTS`: nose tip, eye corners) onto the model's ``mean_face``, then
      ``skimage.transform.warp(img, inverse_map=tform.inverse, output_shape=img_size)``:
      bilinear, every neighbour outside the picture reads 0, result clipped to the input range,
      then ``* 255`` and ``astype(uint8)`` (truncation). Reimplemented in numpy (no skimage).
    * :func:`frame_tensor` - ``img_transform``: PIL bilinear resize to ``img_size`` (torchvision's
      ``Resize`` on a PIL image is exactly ``Image.resize((W, H), BILINEAR)``), ``/ 255``,
      normalised to -1..1.
    * Landmarks are what ``face_alignment``'s ``get_landmarks(img)[0]`` returns: ``[68, 2]`` (x, y)
      in pixel-centre coordinates (pixel ``img[y, x]`` is at ``(x, y)``, skimage's convention).
      :func:`face_alignment_landmarks` gets them with the pack's own S3FD + 2D-FAN
      (:mod:`core.face.detectors`, :mod:`core.face.landmarks`) set up like the official ``FaceAlignment``
      (``flip_input=False``, the highest-scoring face) and rounded like face-alignment does
      (its landmarks are integers).

Speech (:func:`speech_from_audio`)
    ``scipy.signal.resample`` (FFT resampling of the whole clip) to ``audio_rate`` when the rate
    differs (:func:`fft_resample`, the same computation in half the memory), divided by
    ``np.iinfo(dtype).max`` (32767 for int16). Up to :data:`EXACT_RESAMPLE_SECONDS` this is the
    official method exactly: the model was used with scipy's FFT resampler, whose numbers differ
    from soxr's by far more than float tolerance (band edge, and the FFT method's periodic wrap at
    the clip ends). An FFT over the whole utterance needs memory in proportion to its length, so
    longer speech goes through :func:`stream_resample` (soxr VHQ, block by block): the same
    signal within ~4e-5 below 0.8 x Nyquist, the top of the band rolled off. Float audio (the pack's
    :class:`~core.audio.Audio`, -1..1) is treated as the int16 file the official code would
    have read: ``samples * 32768`` with max 32767, so a 16-bit WAV gives the official numbers.

Framing (:func:`audio_windows`)
    ``_cut_sequence_``: the speech zero-padded by ``pad // 2`` before and ``pad - pad // 2`` after
    (``pad = audio_feat_samples - stride``), windows of ``audio_feat_samples`` every
    ``stride = audio_rate / video_rate`` samples, returned as a strided view (no copy per window).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..audio import Audio, from_comfy, to_mono
from ..errors import InputError
from ..image import as_uint8_rgb
from .model import SDAConfig

#: the landmarks the alignment uses (iBUG-68: nose tip, outer/inner eye corners)
STABLE_POINTS = (33, 36, 39, 42, 45)
#: float audio is read as int16 with this full scale (32768) and divided by int16's max (32767)
INT16_SCALE = 32768.0

NO_FACE_MESSAGE = (
    "No face was found in the image, so it cannot be aligned to the SDA face template. Use another "
    "image (a clear, front-facing photo of one face), or give an already-aligned face "
    "(aligned=True / 'already aligned': a crop aligned like the model's training faces, which is "
    "only resized to the model's size), or pass the 68 face landmarks yourself.")

LandmarkFn = Callable[[np.ndarray], Optional[np.ndarray]]


# --------------------------------------------------------------------------- images
def similarity_transform(src, dst) -> np.ndarray:
    """The 3x3 least-squares similarity (rotation, uniform scale, translation) mapping ``src``
    points onto ``dst`` points - Umeyama's method as ``skimage.transform._geometric._umeyama``
    (with scale); arithmetic in the same order."""
    src, dst = np.asarray(src), np.asarray(dst)
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    a = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1, dtype=np.float64)
    u, s, v = np.linalg.svd(a)
    tol = s.max() * np.max(a.shape) * np.finfo(float).eps
    rank = np.count_nonzero(s > tol)
    if rank == 0:
        raise InputError("the face landmarks are degenerate (all the same point); cannot align the face")
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(v) > 0:
            t[:dim, :dim] = u @ v
        else:
            keep = d[dim - 1]
            d[dim - 1] = -1
            t[:dim, :dim] = u @ np.diag(d) @ v
            d[dim - 1] = keep
    else:
        t[:dim, :dim] = u @ np.diag(d) @ v
    # numpy 2 (NEP 50) keeps 1.0 / <float32 scalar> in float32, numpy 1.x went to float64; with 2D-FAN's
    # float32 landmarks that flipped the truncation of some pixels: take numpy 2's path on both
    var_sum = src_demean.var(axis=0).sum()
    scale = np.divide(1.0, var_sum, dtype=var_sum.dtype) * (s @ d)
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean.T)
    t[:dim, :dim] *= scale
    return t


def warp_bilinear(image: np.ndarray, out_to_in: np.ndarray, out_hw: Tuple[int, int]) -> np.ndarray:
    """``skimage.transform.warp(image, matrix, output_shape=out_hw, order=1, mode='constant',
    cval=0)`` for a float ``[H, W, C]`` image and an affine ``out_to_in`` matrix (output (x, y)
    -> input (x, y), pixel-centre coordinates): per output pixel the 4 neighbours of the source
    point are blended, a neighbour outside the picture counting as 0; then skimage's clip to the
    input's value range (widened to 0 only where 0 is actually produced)."""
    image = np.asarray(image)
    rows, cols = image.shape[:2]
    m = np.asarray(out_to_in, dtype=image.dtype)
    if abs(m[2, 0]) > 0 or abs(m[2, 1]) > 0 or m[2, 2] != 1:
        raise ValueError("warp_bilinear needs an affine matrix")
    h, w = int(out_hw[0]), int(out_hw[1])
    rr, cc = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    x = m[0, 0] * cc + m[0, 1] * rr + m[0, 2]
    y = m[1, 0] * cc + m[1, 1] * rr + m[1, 2]
    r0, c0 = np.floor(y), np.floor(x)
    r1, c1 = np.ceil(y), np.ceil(x)
    dr, dc = (y - r0)[..., None], (x - c0)[..., None]

    def pixel(r, c):
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        ri = np.where(inside, r, 0).astype(np.intp)
        ci = np.where(inside, c, 0).astype(np.intp)
        return np.where(inside[..., None], image[ri, ci], 0.0)

    top = (1 - dc) * pixel(r0, c0) + dc * pixel(r0, c1)
    bottom = (1 - dc) * pixel(r1, c0) + dc * pixel(r1, c1)
    out = (1 - dr) * top + dr * bottom
    # skimage's _clip_warp_output (clip=True, mode='constant', cval=0)
    lo, hi = image.min(), image.max()
    if not lo <= 0.0 <= hi and out.min() <= 0.0 <= out.max():
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return np.clip(out, lo, hi)


def align_face(image, landmarks, mean_face, img_size: Sequence[int]) -> np.ndarray:
    """``preprocess_img``: the face warped onto the model's template, uint8 ``[H, W, 3]``."""
    img = as_uint8_rgb(image, "face image")
    pts = np.asarray(landmarks)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] <= max(STABLE_POINTS):
        raise InputError(f"face landmarks must be the 68 iBUG points [68, 2] (x, y), got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise InputError("the face landmarks contain NaN or infinite values")
    idx = list(STABLE_POINTS)
    tform = similarity_transform(pts[idx, :], np.asarray(mean_face)[idx, :])
    as_float = np.multiply(img, 1.0 / 255, dtype=np.float64)  # skimage's img_as_float
    warped = warp_bilinear(as_float, np.linalg.inv(tform), (int(img_size[0]), int(img_size[1])))
    return (warped * 255).astype(np.uint8)


def frame_tensor(image, img_size: Sequence[int]) -> torch.Tensor:
    """``img_transform``: uint8 face -> ``[1, 3, H, W]`` float32 in -1..1 (PIL bilinear resize)."""
    from PIL import Image

    img = as_uint8_rgb(image, "face image")
    h, w = int(img_size[0]), int(img_size[1])
    pil = Image.fromarray(img) if img.shape[:2] != (h, w) else None
    arr = np.asarray(pil.resize((w, h), Image.BILINEAR)) if pil is not None else img
    t = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    t = t.to(torch.float32).div(255)
    return t.sub_(0.5).div_(0.5)[None]


# --------------------------------------------------------------------------- landmarks
def face_alignment_landmarks(device="auto", download: bool = True) -> LandmarkFn:
    """A landmark function ``uint8 [H, W, 3] -> [68, 2] or None`` like the official
    ``FaceAlignment(TWO_D, flip_input=False).get_landmarks(img)[0]``: the pack's S3FD detector
    (highest-scoring face first, as face-alignment orders them) and 2D-FAN without the flipped
    pass, the coordinates rounded as face-alignment's integer output."""
    from ..cache import CACHE, file_key
    from ..device import resolve_device
    from ..face import get_detector
    from ..face.landmarks import FILE_ID, FANLandmarks
    from ..weights import resolve

    dev = resolve_device(device)
    detector = get_detector("face-alignment sfd", dev, download)
    path = resolve(FILE_ID, download=download)
    fan = CACHE.get("face", ("2dfan4-noflip",) + file_key(path),
                    lambda: FANLandmarks(path, dev, flip_input=False), dev, torch.float32, info={"file": path.name})

    def find(image: np.ndarray) -> Optional[np.ndarray]:
        faces = detector.detect(image)
        if not faces:
            return None
        best = max(faces, key=lambda f: f.score)
        pts = fan.landmarks(image, best.box)  # pixel-centre floats
        return np.trunc(pts + 0.5)  # face-alignment's int(x_span) (see core.face.landmarks)

    return find


def find_landmarks(image: np.ndarray, landmark_fn: Optional[LandmarkFn] = None) -> np.ndarray:
    """68 landmarks of the face in ``image`` or :class:`InputError` (:data:`NO_FACE_MESSAGE`)."""
    fn = landmark_fn if landmark_fn is not None else face_alignment_landmarks()
    try:
        pts = fn(image)
    except InputError as exc:
        raise InputError(f"{NO_FACE_MESSAGE} ({exc})") from exc
    if pts is None or (isinstance(pts, (list, tuple)) and len(pts) == 0):
        raise InputError(NO_FACE_MESSAGE)
    pts = np.asarray(pts)
    if pts.ndim == 3:  # face_alignment style: a list of faces
        pts = pts[0]
    return pts


# --------------------------------------------------------------------------- audio
def _samples_and_rate(audio, fs: Optional[int]) -> Tuple[np.ndarray, int]:
    if isinstance(audio, (Audio, Mapping)):
        a = to_mono(from_comfy(audio))
        return a.waveform[0].numpy(), a.sample_rate
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if not isinstance(audio, np.ndarray):
        raise InputError(f"audio must be an AUDIO/Audio or a sample array with its rate, got {type(audio).__name__}")
    if fs is None:
        raise InputError("audio samples were given without their sample rate (fs)")
    a = audio
    if a.ndim == 2:  # the official numpy path: [samples, channels], channel 0 kept
        a = a[:, 0]
    if a.ndim != 1:
        raise InputError(f"audio samples must be [samples] or [samples, channels], got shape {audio.shape}")
    return a, int(fs)


def speech_from_audio(audio, audio_rate: int, fs: Optional[int] = None) -> torch.Tensor:
    """The model's speech signal: float32 ``[L]`` at ``audio_rate`` (see the module docstring).

    ``audio``: :class:`core.audio.Audio` / ComfyUI AUDIO (channels averaged) or a numpy/torch
    sample array with ``fs`` - integer samples go exactly the official way (``/ iinfo.max``),
    float samples in -1..1 as int16 (``* 32768``, ``/ 32767``)."""
    samples, rate = _samples_and_rate(audio, fs)
    if rate <= 0:
        raise InputError(f"the audio sample rate must be positive, got {rate}")
    if samples.shape[0] == 0:
        raise InputError("the audio is empty (0 samples)")
    if np.issubdtype(samples.dtype, np.integer):
        x, max_value = samples, float(np.iinfo(samples.dtype).max)
    elif np.issubdtype(samples.dtype, np.floating):
        x, max_value = samples.astype(np.float64), float(np.iinfo(np.int16).max)
        x *= INT16_SCALE
    else:
        raise InputError(f"unsupported audio sample dtype {samples.dtype}")
    if rate != audio_rate:
        num = int(samples.shape[0] * audio_rate / float(rate))
        del samples
        if num <= EXACT_RESAMPLE_SECONDS * audio_rate:
            speech = fft_resample(x, num)
            del x
            speech /= max_value
        else:
            return torch.from_numpy(stream_resample(x, rate, audio_rate, num, 1.0 / max_value))
    else:
        speech = x / max_value
    return torch.from_numpy(np.asarray(speech, dtype=np.float32))


def stream_resample(x: np.ndarray, rate: int, new_rate: int, num: int, gain: float = 1.0,
                    block: int = 1 << 16) -> np.ndarray:
    """``x`` (1-D) at ``rate`` -> ``num`` float32 samples at ``new_rate``, times ``gain``, resampled block by
    block with soxr's very-high-quality filter, so memory is the result plus a block whatever the length. Equal to
    :func:`fft_resample` within about 4e-5 of the signal's RMS for content below 0.8 x the lower Nyquist
    frequency (soxr's filter rolls off above that, where the FFT keeps everything up to Nyquist), and without the
    FFT's wrap-around at the two ends."""
    import soxr

    out = np.zeros(num, dtype=np.float32)
    resampler = soxr.ResampleStream(rate, new_rate, 1, dtype="float64", quality="VHQ")
    done = 0
    for start in range(0, max(int(x.shape[0]), 1), block):
        part = resampler.resample_chunk(np.asarray(x[start:start + block], dtype=np.float64),
                                        last=start + block >= x.shape[0])
        take = min(int(part.shape[0]), num - done)
        if take > 0:
            out[done:done + take] = part[:take] * gain
            done += take
    return out


#: speech up to this long is resampled exactly as the official code does (:func:`fft_resample`, one FFT over the
#: utterance, whose memory grows with its length: ~1.4 GB at ten minutes); longer speech by :func:`stream_resample`
EXACT_RESAMPLE_SECONDS = 120


def fft_resample(x: np.ndarray, num: int) -> np.ndarray:
    """``scipy.signal.resample(x, num)`` for a 1-D signal (the same FFTs on the same numbers: equal bit for bit to
    scipy 1.17's, within a float64 rounding of older versions, which scale after the inverse FFT), in about half
    its memory: the spectrum is scaled straight into the zero-padded buffer the inverse
    FFT reads and overwrites, so ten minutes of speech at 50 kHz peak at two float64 copies of the result instead of
    four (the official code resamples the whole utterance at once; that is kept, as its result depends on it)."""
    from scipy import fft as sp_fft

    n_x = int(x.shape[-1])
    s_fac = n_x / num
    m = min(num, n_x)
    m2 = m // 2 + 1
    spectrum = sp_fft.rfft(x)[:m2]
    if m % 2 == 0 and num != n_x:  # the unpaired bin at m // 2, as scipy handles it
        spectrum[m // 2] *= 2 if num < n_x else 0.5
    padded = np.zeros(num // 2 + 1, dtype=spectrum.dtype)
    np.divide(spectrum, s_fac, out=padded[:m2])
    del spectrum
    return sp_fft.irfft(padded, n=num, overwrite_x=True)


def returned_audio(speech) -> np.ndarray:
    """The official returned audio ``(2**15 * speech).astype(int16)``, ``[L, 1]`` (values past
    full scale wrap around as numpy's cast does on x86)."""
    s = speech.detach().cpu().numpy() if isinstance(speech, torch.Tensor) else np.asarray(speech)
    v = (2 ** 15) * s.astype(np.float32).reshape(-1, 1)
    return v.astype(np.int64).astype(np.int16)


def num_frames(num_samples: int, cfg: SDAConfig) -> int:
    """Video frames for ``num_samples`` of speech: ``(len + pad - window) // stride + 1``."""
    return (int(num_samples) + cfg.audio_seq_padding - cfg.audio_feat_samples) // cfg.cutting_stride + 1


def pad_speech(speech: torch.Tensor, cfg: SDAConfig) -> torch.Tensor:
    """The speech ``[L]`` with ``_cut_sequence_``'s zero padding (one copy of the signal)."""
    pad = cfg.audio_seq_padding
    return torch.nn.functional.pad(speech.reshape(-1), (pad // 2, pad - pad // 2))


def audio_windows(speech: torch.Tensor, cfg: SDAConfig) -> torch.Tensor:
    """``_cut_sequence_`` as a strided view ``[T, audio_feat_samples]`` of the padded speech."""
    n = num_frames(speech.numel(), cfg)
    if n < 1:
        raise InputError(f"the audio is too short: {speech.numel()} samples at {cfg.audio_rate} Hz, at least "
                         f"{cfg.audio_feat_samples - cfg.audio_seq_padding} are needed for one video frame")
    return pad_speech(speech, cfg).unfold(0, cfg.audio_feat_samples, cfg.cutting_stride)


__all__ = ["EXACT_RESAMPLE_SECONDS", "NO_FACE_MESSAGE", "STABLE_POINTS", "align_face", "as_uint8_rgb",
           "audio_windows", "face_alignment_landmarks", "fft_resample", "find_landmarks", "frame_tensor", "num_frames", "pad_speech",
           "returned_audio", "similarity_transform", "speech_from_audio", "stream_resample",
           "warp_bilinear"]
