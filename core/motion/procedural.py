"""Procedural talking-head motion: lip opening from the audio energy, natural blinks and subtle head
motion, for users who have only the LivePortrait weights (no audio-to-motion model).

:func:`procedural_motion` returns a *composed* :class:`~core.liveportrait.motion.Motion` for one
source portrait: pose, t and scale are the source's plus slow seeded head motion, ``exp`` is the
source's own expression, and the mouth and the eyes are driven through LivePortrait's retargeting
MLPs by per-frame target open ratios (``lip`` [T, 1], ``eyes`` [T, 2]). Render it with
``DriveOptions(lip_retargeting=True, eye_retargeting=True)``: the renderer adds the retargeting
deltas on top of the composed keypoints (see :mod:`core.liveportrait.motion`).

Mappings (all relative, so loud and quiet recordings animate alike):

* **energy -> lip ratio.** ``e = clip(env / ref, 0, 1)`` with ``ref`` the 90th percentile of the
  frames louder than 10 % of the clip's 99th percentile (the speech frames, whatever the share of
  silence); ``open = (clip((e - LIP_GATE) / (1 - LIP_GATE), 0, 1)) ** LIP_GAMMA`` (a noise gate
  and a loudness-like curve); a centred [1/4, 1/2, 1/4] smoothing (attack: the mouth starts to
  open one frame before the sound, as speakers do) and a peak-hold release with time constant
  ``LIP_RELEASE_S`` (``y[n] = max(open[n], y[n-1] * exp(-1 / (fps * LIP_RELEASE_S)))``, computed
  without a Python loop as a running maximum in the log domain), so the mouth does not flicker
  between frames; values under ``LIP_CUTOFF`` are 0 (silence = exactly closed);
  ``lip = min(lip_strength * LIP_OPEN * y, LIP_RATIO_LIMIT)``.
  LivePortrait's lip ratio (inner-lip height / mouth width of the 203-point landmarks) is 0 for a
  closed mouth and reaches 0.67 in its motion templates; ``LIP_OPEN = 0.45`` (a clearly open
  speaking mouth) at full energy leaves room below ``LIP_RATIO_LIMIT = 0.7`` up to
  ``lip_strength`` ~1.55 before anything saturates.
* **blinks.** Seeded intervals (whole frames, uniform within ``blink_interval`` seconds, peak to
  peak), durations uniform within ``blink_duration`` seconds; each blink closes in 40 % of its
  duration and opens in 60 % (cosine ramps), with one fully closed frame (ratio
  ``EYE_CLOSED = 0``) even at low frame rates; between blinks the eyes are exactly at the source's
  open ratio (``DEFAULT_SOURCE_EYES = 0.35`` when unknown, the renderer's default too, so an open
  frame gives a zero eye delta).
* **head.** Per axis a seeded sum of three sinusoids (0.05-0.35 Hz, amplitudes summing to
  ``HEAD_DEGREES``), minus its value at frame 0, so the pose starts exactly at the source's and
  stays within ``2 * HEAD_DEGREES`` (times ``head_strength``); pitch adds a nod of up to
  ``NOD_DEGREES`` following the phrase-level speech energy (triangle-smoothed over about
  ``2 * NOD_WINDOW_S``, faded in over ``RAMP_S``); t drifts by at most ``2 * T_DRIFT`` (x, y),
  scale is the source's. Frame-to-frame change stays well under 0.3 degree at 25 fps.

Everything is O(T) memory and vectorised (numpy) apart from a loop over the few blinks' shapes;
the three random streams (blinks, head, drift) are independent children of ``seed``.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..audio import Audio, energy_envelope, from_comfy
from ..errors import InputError
from ..liveportrait.motion import DEFAULT_SOURCE_EYES, Motion, SourceMotion

# ---- lip
#: normalised energy (0..1) under which the mouth stays closed
LIP_GATE = 0.1
#: exponent of the gated energy (RMS amplitude -> a loudness-like opening)
LIP_GAMMA = 0.7
#: lip-open ratio at full normalised energy with lip_strength 1
LIP_OPEN = 0.45
#: the largest lip ratio ever asked of the retargeting MLP (LivePortrait's templates reach 0.67)
LIP_RATIO_LIMIT = 0.7
#: closing time constant of the peak-hold release (seconds)
LIP_RELEASE_S = 0.08
#: normalised openings under this are 0 (ends the release tail: closed within ~0.25 s of silence)
LIP_CUTOFF = 0.05
#: the reference level: this quantile of the frames louder than ACTIVE_FRACTION of the 99th percentile
REF_QUANTILE = 0.9
ACTIVE_FRACTION = 0.1
# ---- eyes
EYE_CLOSED = 0.0
#: share of a blink spent closing (the rest opens, more slowly)
BLINK_CLOSE_FRACTION = 0.4
DEFAULT_BLINK_INTERVAL = (2.5, 6.0)
DEFAULT_BLINK_DURATION = (0.15, 0.25)
# ---- head
#: per-axis amplitude (degrees) of the slow sinusoid sum; the offset from frame 0 stays within twice that
HEAD_DEGREES = {"pitch": 1.5, "yaw": 2.0, "roll": 1.0}
HEAD_FREQ_HZ = (0.05, 0.35)
HEAD_COMPONENTS = 3
#: pitch nod (degrees) at full phrase-level speech energy
NOD_DEGREES = 1.5
NOD_WINDOW_S = 0.4
RAMP_S = 0.5
#: translation drift amplitude (x, y) in LivePortrait's normalised keypoint units
T_DRIFT = 0.003

EnvelopeLike = Union[torch.Tensor, np.ndarray, Sequence[float], Audio, Mapping]


def procedural_motion(envelope: EnvelopeLike, source: SourceMotion, seed: int = 0, lip_strength: float = 1.0,
                      blink_interval: Optional[Tuple[float, float]] = DEFAULT_BLINK_INTERVAL,
                      blink_duration: Tuple[float, float] = DEFAULT_BLINK_DURATION, head_strength: float = 1.0,
                      fps: float = 25.0) -> Motion:
    """A composed :class:`Motion` of ``T`` frames for ``source``.

    ``envelope``: energy per video frame ``[T]`` (0..1-ish, any scale; negative values count as 0),
    or an :class:`~core.audio.Audio` / ComfyUI AUDIO dict (its :func:`~core.audio.energy_envelope`
    at ``fps``). ``blink_interval`` = (min, max) seconds between blinks, ``None`` for no blinks;
    ``blink_duration`` = (min, max) seconds. Deterministic for a ``seed``. See the module docstring
    for the mappings.
    """
    fps = _positive(fps, "fps")
    lip_strength = _non_negative(lip_strength, "lip_strength")
    head_strength = _non_negative(head_strength, "head_strength")
    env = _envelope(envelope, fps)
    n = env.shape[0]
    streams = np.random.SeedSequence(int(seed) % 2 ** 64).spawn(3)
    rng_blink, rng_head, rng_drift = (np.random.default_rng(s) for s in streams)

    opening = lip_opening(env, fps)
    lip = np.minimum(lip_strength * LIP_OPEN * opening, LIP_RATIO_LIMIT)

    open_eyes = (source.eyes.detach().cpu().reshape(2).double().numpy() if source.eyes is not None
                 else np.full(2, DEFAULT_SOURCE_EYES))
    closure = blink_closure(n, fps, rng_blink, blink_interval, blink_duration)
    eyes = open_eyes[None, :] * (1.0 - closure[:, None]) + EYE_CLOSED * closure[:, None]

    seconds = np.arange(n, dtype=np.float64) / fps
    offsets = {axis: head_strength * _sinusoids(seconds, rng_head, amp) for axis, amp in HEAD_DEGREES.items()}
    nod = _box(_box(opening, int(round(NOD_WINDOW_S * fps)) | 1), int(round(NOD_WINDOW_S * fps)) | 1)
    ramp = _smoothstep(seconds / RAMP_S)
    offsets["pitch"] = offsets["pitch"] + head_strength * NOD_DEGREES * nod * ramp
    drift = np.stack([T_DRIFT * head_strength * _sinusoids(seconds, rng_drift, 1.0) for _ in range(2)], axis=1)

    def pose(base: torch.Tensor, offset: np.ndarray) -> torch.Tensor:
        return (float(base.reshape(-1)[0]) + torch.from_numpy(offset)).float()

    t = source.t.reshape(1, 3).double().repeat(n, 1)
    t[:, :2] += torch.from_numpy(drift)
    return Motion(exp=source.exp.reshape(1, -1, 3).expand(n, -1, -1).clone(),
                  pitch=pose(source.pitch, offsets["pitch"]), yaw=pose(source.yaw, offsets["yaw"]),
                  roll=pose(source.roll, offsets["roll"]), t=t.float(),
                  scale=source.scale.reshape(1).float().expand(n).clone(),
                  eyes=torch.from_numpy(eyes).float(), lip=torch.from_numpy(lip[:, None]).float(),
                  fps=fps, composed=True)


# --------------------------------------------------------------------------- lip
def lip_opening(envelope, fps: float = 25.0) -> np.ndarray:
    """Normalised mouth opening 0..1 per frame (float64) from a raw energy envelope (see the module docstring)."""
    env = np.clip(np.asarray(envelope, dtype=np.float64).reshape(-1), 0.0, None)
    if env.size == 0:
        return env
    top = np.quantile(env, 0.99)
    if not top > 1e-12:
        return np.zeros_like(env)
    ref = np.quantile(env[env >= ACTIVE_FRACTION * top], REF_QUANTILE)
    e = np.clip(env / ref, 0.0, 1.0)
    opening = np.clip((e - LIP_GATE) / (1.0 - LIP_GATE), 0.0, 1.0) ** LIP_GAMMA
    padded = np.pad(opening, 1, mode="edge")
    attack = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    held = _peak_hold(attack, math.exp(-1.0 / (fps * LIP_RELEASE_S)))
    held[held < LIP_CUTOFF] = 0.0
    return np.clip(held, 0.0, 1.0)


def _peak_hold(x: np.ndarray, decay: float) -> np.ndarray:
    """``y[n] = max(x[n], decay * y[n-1])`` = ``max_k x[k] decay^(n-k)``: a running max in the log domain."""
    log_d = math.log(decay)
    k = np.arange(x.shape[0], dtype=np.float64)
    with np.errstate(divide="ignore"):
        logs = np.log(x)
    return np.exp(np.maximum.accumulate(logs - k * log_d) + k * log_d)


# --------------------------------------------------------------------------- eyes
def blink_closure(n: int, fps: float, rng: np.random.Generator, interval: Optional[Tuple[float, float]],
                  duration: Tuple[float, float] = DEFAULT_BLINK_DURATION) -> np.ndarray:
    """Eye closure per frame (0 open .. 1 closed, float64 [n]) with seeded blinks."""
    closure = np.zeros(n, dtype=np.float64)
    if interval is None or n == 0:
        return closure
    d_lo, d_hi = _range(duration, "blink_duration")
    i_lo, i_hi = _range(interval, "blink_interval")
    longest = int(round(d_hi * fps * BLINK_CLOSE_FRACTION)) + int(round(d_hi * fps * (1 - BLINK_CLOSE_FRACTION))) + 1
    lo_f = max(int(math.ceil(i_lo * fps - 1e-9)), longest + 1)
    hi_f = max(int(math.floor(i_hi * fps + 1e-9)), lo_f)
    count = n // lo_f + 2
    first = rng.integers(max(lo_f // 2, longest), hi_f + 1)
    peaks = first + np.concatenate([[0], np.cumsum(rng.integers(lo_f, hi_f + 1, size=count))])
    seconds = rng.uniform(d_lo, d_hi, size=peaks.shape[0])
    peaks, seconds = peaks[peaks < n], seconds[peaks < n]
    n_close = np.maximum(1, np.round(seconds * fps * BLINK_CLOSE_FRACTION)).astype(np.int64)
    n_open = np.maximum(1, np.round(seconds * fps * (1 - BLINK_CLOSE_FRACTION))).astype(np.int64)
    for p, c, o in zip(peaks.tolist(), n_close.tolist(), n_open.tolist()):  # one small loop per blink
        k = np.arange(-c, o + 1)
        shape = np.where(k <= 0, 0.5 - 0.5 * np.cos(np.pi * (k + c) / c), 0.5 + 0.5 * np.cos(np.pi * k / o))
        idx = p + k
        keep = (idx >= 0) & (idx < n)
        closure[idx[keep]] = np.maximum(closure[idx[keep]], shape[keep])
    return closure


# --------------------------------------------------------------------------- head
def _sinusoids(seconds: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A seeded sum of HEAD_COMPONENTS slow sinusoids (amplitudes summing to ``amplitude``), 0 at frame 0."""
    lo, hi = HEAD_FREQ_HZ
    freqs = np.exp(rng.uniform(math.log(lo), math.log(hi), size=HEAD_COMPONENTS))
    phases = rng.uniform(0.0, 2 * math.pi, size=HEAD_COMPONENTS)
    weights = rng.uniform(0.5, 1.0, size=HEAD_COMPONENTS)
    amps = amplitude * weights / weights.sum()
    out = np.zeros_like(seconds)
    for f, ph, a in zip(freqs, phases, amps):
        out += a * (np.sin(2 * math.pi * f * seconds + ph) - math.sin(ph))
    return out


def _box(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of odd ``width`` (edges repeated)."""
    if width <= 1 or x.size == 0:
        return x.copy()
    half = width // 2
    c = np.concatenate([[0.0], np.cumsum(np.pad(x, half, mode="edge"))])
    return (c[width:] - c[:-width]) / width


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3 - 2 * u)


# --------------------------------------------------------------------------- inputs
def _envelope(envelope: EnvelopeLike, fps: float) -> np.ndarray:
    if isinstance(envelope, (Audio, Mapping)):
        audio = from_comfy(envelope)
        if audio.num_samples == 0:
            raise InputError("the audio is empty (0 samples): there is nothing to animate")
        envelope = energy_envelope(audio, fps)
    if isinstance(envelope, torch.Tensor):
        envelope = envelope.detach().cpu().double().numpy()
    try:
        env = np.asarray(envelope, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the energy envelope must be numbers per video frame: {exc}") from exc
    if env.ndim > 1 and env.size == env.shape[0]:
        env = env.reshape(-1)
    if env.ndim != 1:
        raise InputError(f"the energy envelope must be one value per video frame, got shape {env.shape}")
    if env.size == 0:
        raise InputError("the energy envelope is empty (0 frames): there is nothing to animate")
    if not np.all(np.isfinite(env)):
        bad = int(np.count_nonzero(~np.isfinite(env)))
        raise InputError(f"the energy envelope has {bad} NaN or infinite value(s) out of {env.size}")
    return np.clip(env, 0.0, None)


def _positive(value, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive number, got {value}")
    return value


def _non_negative(value, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"{name} must be 0 or more, got {value}")
    return value


def _range(pair, name: str) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in pair)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be (min, max) seconds, got {pair!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise InputError(f"{name} must be (min, max) seconds with 0 < min <= max, got ({lo}, {hi})")
    return lo, hi


__all__ = ["LIP_OPEN", "LIP_RATIO_LIMIT", "blink_closure", "lip_opening", "procedural_motion"]
