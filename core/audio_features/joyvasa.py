"""JoyVASA's audio front end: audio windows and per-window audio features (``gen_motion_sequence``'s
first half). The motion model itself is :mod:`core.motion.joyvasa`.

16 kHz mono audio, no normalisation. The official code pads ``1280`` zeros in front and ``640``
behind, so motion frame ``n`` covers original samples ``[640 n - 1280, 640 n - 640)`` (the first
two frames belong to the leading silence; the video is muxed with the unpadded audio). Then::

    clip_len = int(len / 16000 * fps)                      # frames in the padded audio
    n_windows = 1 if clip_len <= L else ceil(clip_len / L)
    pad = window * n_windows - len                         # zeros appended (the official 'replicate'
    n_pad_frames = ceil(pad / (16000 / fps))               # mode repeats the last sample: also 0)

Window ``i`` is samples ``[window * i, window * (i + 1))`` of the padded audio (4 s = 100 frames, no
overlap, no audio context across windows); its features come from :meth:`JoyVASA.encode_audio`.
The generated motion drops its last ``n_pad_frames`` frames.

Windows are cut from the unpadded audio on the fly (zeros filled in), so long inputs never
need a padded copy; features are computed one window at a time (the HuBERT batch is 1, as
in the official code) straight into the one result tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import torch

from ..errors import InputError
from ..progress import Progress

SAMPLE_RATE = 16000
FRONT_PAD = 1280
BACK_PAD = 640


@dataclass(frozen=True)
class WindowPlan:
    """How an audio of ``n_samples`` is cut into windows."""

    n_samples: int          # original samples
    window: int             # samples per window (64000)
    n_motions: int          # frames per window (100)
    n_windows: int
    n_pad_samples: int      # zeros appended after the 1280/640 padding (may be < 0: tail dropped)
    n_pad_frames: int       # frames dropped from the last window

    @property
    def n_frames(self) -> int:
        """Motion frames produced (``n_windows * L - n_pad_frames``)."""
        return self.n_windows * self.n_motions - self.n_pad_frames


def plan_windows(n_samples: int, fps: int = 25, n_motions: int = 100) -> WindowPlan:
    unit = SAMPLE_RATE / float(fps)
    window = int(round(unit * n_motions))
    padded = int(n_samples) + FRONT_PAD + BACK_PAD
    clip_len = int(padded / SAMPLE_RATE * fps)
    n_windows = 1 if clip_len <= n_motions else math.ceil(clip_len / n_motions)
    n_pad = window * n_windows - padded
    n_pad_frames = math.ceil(n_pad / unit)
    return WindowPlan(int(n_samples), window, int(n_motions), int(n_windows), int(n_pad), int(n_pad_frames))


def _as_audio(audio) -> torch.Tensor:
    audio = torch.as_tensor(audio)
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.ndim != 1:
        raise InputError(f"JoyVASA needs mono 16 kHz audio as a 1-D tensor, got shape {tuple(audio.shape)}")
    if audio.numel() == 0:
        raise InputError("the audio is empty")
    return audio.detach().to("cpu", torch.float32)


def window(audio: torch.Tensor, plan: WindowPlan, index: int) -> torch.Tensor:
    """Window ``index`` of the padded audio, (1, window) float32 (zeros outside the original)."""
    out = torch.zeros(1, plan.window, dtype=torch.float32)
    start = index * plan.window - FRONT_PAD          # in original-sample coordinates
    lo, hi = max(start, 0), min(start + plan.window, plan.n_samples)
    if hi > lo:
        out[0, lo - start:hi - start] = audio[lo:hi]
    return out


def iter_windows(audio, fps: int = 25, n_motions: int = 100) -> Tuple[WindowPlan, Iterator[torch.Tensor]]:
    """``(plan, windows)``: the plan and a generator of (1, window) tensors."""
    audio = _as_audio(audio)
    plan = plan_windows(audio.numel(), fps, n_motions)
    return plan, (window(audio, plan, i) for i in range(plan.n_windows))


def padded_audio(audio, fps: int = 25, n_motions: int = 100) -> torch.Tensor:
    """The whole padded audio (front/back pad + tail zeros), 1-D; for tests and inspection."""
    plan, windows = iter_windows(audio, fps, n_motions)
    return torch.cat(list(windows), dim=1)[0]


@torch.no_grad()
def audio_features(model, audio_16k, progress: Optional[Callable] = None) -> Tuple[torch.Tensor, int]:
    """Per-window JoyVASA audio features ``(features [n_windows * L, d] float32 CPU, n_pad_frames)``.

    ``features[i * L:(i + 1) * L]`` are window ``i``'s ``audio_feature_map`` outputs; frames past
    ``n_windows * L - n_pad_frames`` belong to the zero padding (the generator still needs them)."""
    plan, windows = iter_windows(audio_16k, model.fps, model.n_motions)
    bar = Progress(plan.n_windows, progress)
    L = plan.n_motions
    out: Optional[torch.Tensor] = None
    for i, win in enumerate(windows):
        feat = model.encode_audio(win)[0]
        if out is None:  # allocated once: no list of windows + concatenation copy for long audio
            out = torch.empty(plan.n_windows * L, feat.shape[-1], dtype=torch.float32)
        out[i * L:(i + 1) * L] = feat
        bar.step()
    return out, plan.n_pad_frames


__all__ = ["BACK_PAD", "FRONT_PAD", "SAMPLE_RATE", "WindowPlan", "audio_features", "iter_windows", "padded_audio",
           "plan_windows", "window"]
