"""Finite-or-refuse: cheap checks that the numbers entering or leaving a node are finite.

NaN or inf never make a useful video: in speech they come out as a black face, a black square or a
full-scale click in the sound track; in motion as black frames; elsewhere as an error deep inside a
later model that blames the wrong node. So every node checks what enters it (audio, images,
speech features, motion, portraits, numbers) once, and the nodes whose models can still overflow
on finite input (fp16) check what they hand on.

Cheap: a check is one reduction per tensor, a plain sum (if it is finite, so is every value; about
20x faster than ``isfinite().all()`` on a CPU, and no temporary). Only when the sum is not finite
(NaN/inf, or finite values so large that they overflow it) does ``isfinite`` look, over slices of a
few million values, so a long video never needs a boolean copy of itself; the bad values are
counted only then, for the message.

Each ``bad_*`` function returns None for finite data, or a short description of what is wrong
("12 NaN/inf samples of 48000"); :func:`require_finite` and :func:`require_finite_output` turn
that into an error naming the node input (or output) and saying what to do.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from .errors import InputError, NonFiniteOutputError

#: values per slice of a reduction: large enough that the loop costs nothing, small enough that the
#: temporary boolean slice stays at a few megabytes whatever the size of the tensor
SLICE = 1 << 22


# ------------------------------------------------------------------------ reductions
def _as_tensor(x) -> Optional[torch.Tensor]:
    """A tensor view of ``x`` (torch or numpy), or None for anything that holds no float values."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x) if x.dtype.kind in "fc" else None
    if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.is_complex()):
        return None
    return x


def _slices(x: torch.Tensor) -> Iterable[torch.Tensor]:
    """``x`` in views of at most :data:`SLICE` values (never a copy)."""
    if x.numel() <= SLICE:
        yield x
    elif x.is_contiguous():
        yield from x.reshape(-1).split(SLICE)
    elif x.dim() == 1:
        yield from x.split(SLICE)
    elif x[0].numel() <= SLICE:  # whole rows along the first dimension
        yield from x.split(SLICE // x[0].numel())
    else:
        for row in x:
            yield from _slices(row)


def _sum_is_finite(x: torch.Tensor) -> bool:
    """A finite sum proves every value finite (NaN and inf never add up to a finite number); a
    plain sum is the fastest reduction torch has (vectorised, no temporary). The converse does not
    hold: large finite values can overflow the sum, so a non-finite sum is only a reason to look."""
    if x.is_complex():
        x = torch.view_as_real(x)
    total = x.sum(dtype=torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x.sum()
    return math.isfinite(float(total))


def all_finite(x) -> bool:
    """True when ``x`` (tensor or array) holds no NaN/inf; non-float data always is finite."""
    t = _as_tensor(x)
    if t is None or t.numel() == 0 or _sum_is_finite(t):
        return True
    return all(bool(torch.isfinite(part).all()) for part in _slices(t))


def count_nonfinite(x) -> int:
    """How many values of ``x`` are NaN or inf (0 for non-float data)."""
    t = _as_tensor(x)
    if t is None:
        return 0
    return sum(int((~torch.isfinite(part)).sum()) for part in _slices(t))


def _count(n: int, noun: str) -> str:
    """``"1 NaN/inf value"``, ``"12 NaN/inf values"``."""
    return f"{n} NaN/inf {noun}{'' if n == 1 else 's'}"


def _bad_frames(x: torch.Tensor) -> int:
    """How many items along the first dimension hold at least one NaN/inf (only called on failure)."""
    return sum(1 for frame in x if not all_finite(frame))


# ------------------------------------------------------------------------ what is wrong
def _waveform(audio):
    """The samples of an AUDIO dict, a :class:`core.audio.Audio` or a bare waveform."""
    if isinstance(audio, dict):
        return audio.get("waveform")
    return getattr(audio, "waveform", audio)


def bad_audio(audio) -> Optional[str]:
    """``"12 NaN/inf samples of 48000"`` for audio with non-finite samples (all channels counted)."""
    w = _waveform(audio)
    if all_finite(w):
        return None
    return f"{_count(count_nonfinite(w), 'sample')} of {int(_as_tensor(w).numel())}"


def bad_image(images) -> Optional[str]:
    """``"3072 NaN/inf values in 2 of 10 frames"`` for an IMAGE batch ``[B,H,W,C]`` with non-finite pixels."""
    if all_finite(images):
        return None
    t = _as_tensor(images)
    where = f" in {_bad_frames(t)} of {t.shape[0]} frames" if t.dim() == 4 else ""
    return f"{_count(count_nonfinite(t), 'value')}{where}"


def _bad_fields(pairs: Iterable[Tuple[str, object]]) -> Optional[str]:
    """``"40 NaN/inf values (exp: 36, yaw: 4)"`` over named tensors; None when all are finite."""
    counts = [(name, count_nonfinite(value)) for name, value in pairs if not all_finite(value)]
    if not counts:
        return None
    total = sum(n for _, n in counts)
    return f"{_count(total, 'value')} ({', '.join(f'{name}: {n}' for name, n in counts)})"


def _fields(obj, names: Iterable[str]) -> List[Tuple[str, object]]:
    return [(name, getattr(obj, name, None)) for name in names]


def bad_embeddings(embeddings) -> Optional[str]:
    """For :class:`core.audio_features.AudioEmbeddings`: its features and loudness envelope."""
    return _bad_fields(_fields(embeddings, ("features", "envelope")))


#: the tensors of a :class:`core.liveportrait.motion.Motion`
MOTION_FIELDS = ("exp", "pitch", "yaw", "roll", "t", "scale", "R", "eyes", "lip")


def bad_motion(motion) -> Optional[str]:
    """For a :class:`core.liveportrait.motion.Motion`: every per-frame tensor, and its frame rate."""
    found = _bad_fields(_fields(motion, MOTION_FIELDS))
    fps = getattr(motion, "fps", None)
    if isinstance(fps, (int, float)) and not math.isfinite(fps):
        found = f"{found}; " if found else ""
        found += f"a frame rate of {fps}"
    return found


def bad_portrait(portrait) -> Optional[str]:
    """For a :class:`core.face.Portrait`: its face crop and full picture."""
    return _bad_fields(_fields(portrait, ("crop", "full")))


def bad_number(value) -> Optional[str]:
    """``"the value nan"`` for a non-finite float (a FLOAT input linked from another node)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"the value {value}"
    return None


# ------------------------------------------------------------------------ refusing
#: kind -> (what is wrong, what to do when it enters a node)
KINDS: Dict[str, Tuple[Callable[[object], Optional[str]], str]] = {
    "audio": (bad_audio, "the audio is damaged. Re-export it (e.g. as a 16-bit PCM WAV) or check the file or "
                         "node it comes from"),
    "image": (bad_image, "the picture is not valid. Check the node that made it (a model run in fp16 can "
                         "overflow: try precision fp32) or load the image again"),
    "embeddings": (bad_embeddings, "the speech features are not valid. Run AudioToEmbedding again on the "
                                   "speech (try precision fp32) and check the audio"),
    "motion": (bad_motion, "the motion is not valid. Make it again (try precision fp32) or, for a motion "
                           "file, save it again with SaveMotion"),
    "portrait": (bad_portrait, "the portrait is not valid. Load it again with LoadPortrait from a normal "
                               "picture"),
    "number": (bad_number, "give a finite number"),
}


def problem(kind: str, value) -> Optional[str]:
    """What is non-finite in ``value`` of ``kind`` (a key of :data:`KINDS`), or None."""
    if value is None:
        return None
    return KINDS[kind][0](value)


def require_finite(kind: str, value, where: str) -> None:
    """Refuse non-finite input: :class:`InputError` "``where`` has ``problem``: what to do".

    ``where`` names the input, e.g. "AudioToEmbedding's audio input" or "audio file 'speech.wav'".
    """
    found = problem(kind, value)
    if found:
        raise InputError(f"{where} has {found}: {KINDS[kind][1]}.")


def require_finite_output(kind: str, value, where: str) -> None:
    """Refuse to hand on non-finite model output: :class:`NonFiniteOutputError` naming ``where``
    (e.g. "FOMAnimate's frames output"), so no NaN frame reaches a video."""
    found = problem(kind, value)
    if found:
        raise NonFiniteOutputError(
            f"{where} has {found} although the node's inputs were finite: the model's numbers overflowed. "
            f"Try precision fp32 (fp16 overflows first), another seed or checkpoint; nothing was passed on.")
