"""Ditto's audio chunking (``wav2feat.py`` / ``inference.py`` online mode), for any encoder.

An *encoder* here is any callable ``encoder(chunks [N, 6480] float32) -> [N, 20, D]`` (HuBERT at
50 Hz over 16 kHz chunks). Ditto never runs HuBERT over the whole utterance: it runs it over
0.405 s chunks and keeps the middle of each, so the features the motion model was trained on
depend on the chunking. Both variants are reproduced exactly:

* **offline** (``ditto-offline``): ``num_f = ceil(len / 640)`` video frames at 25 fps; the audio
  is padded ``[2000 zeros | audio | 6480 zeros]`` and chunk ``c`` starts at padded sample
  ``3200 c`` (audio sample ``3200 c - 2000``); of its 20 HuBERT frames, frames 6..15
  (``[-14:-4]``) are kept and averaged in pairs -> video frames ``5c .. 5c+4``; the
  concatenation is cut to ``num_f``.
* **online** (``ditto-online``): the audio is prefixed with 1920 zeros and cut every 3200
  samples into 6480-sample chunks zero-padded at the end (chunk ``k`` starts at audio sample
  ``3200 k - 1920``, 80 samples later than offline); same per-chunk slicing; every chunk's 5
  rows are kept (``5 * ceil((len + 1920) / 3200)`` rows, a few past the audio's end).
  :class:`DittoOnlineFeatures` computes the same rows incrementally from pushed audio.

Chunks go through the encoder ``batch_size`` at a time so memory stays bounded for long audio.
Audio must already be 16 kHz mono float32, not normalised (Ditto feeds the raw waveform).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import InputError
from ..progress import Progress, as_progress

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
CHUNK_SAMPLES = 6480                    # 3 + 5 + 2 video frames + 80 samples
FRAMES_PER_CHUNK = 5
CHUNK_HOP = FRAMES_PER_CHUNK * SAMPLES_PER_FRAME  # 3200
OFFLINE_LEFT_PAD = 2000
ONLINE_LEFT_PAD = 1920                  # 3 video frames
ENCODER_FRAMES = 20                     # 50 Hz HuBERT frames of one chunk
KEEP = slice(-14, -4)                   # the 10 HuBERT frames kept -> 5 video frames
DEFAULT_BATCH = 16

EncoderFn = Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Union[Progress, Callable[..., None], None]


def num_video_frames(num_samples: int) -> int:
    """``ceil(num_samples / 16000 * 25)`` computed exactly (integer maths).

    Ditto's own float expression ``math.ceil(len / 16000 * 25)`` gives one frame more for a few
    lengths that are exact multiples of 640 samples (e.g. 4480 -> 8 instead of 7); this pack uses
    the exact count so features, envelope and video stay the same length.
    """
    return -(-int(num_samples) // SAMPLES_PER_FRAME)


def offline_chunk_starts(num_samples: int) -> List[int]:
    """First audio sample of every offline chunk (may be negative: leading zero padding)."""
    return [SAMPLES_PER_FRAME * i - OFFLINE_LEFT_PAD for i in range(0, num_video_frames(num_samples), FRAMES_PER_CHUNK)]


def online_num_chunks(num_samples: int) -> int:
    """Chunks of the online chunking: one every 3200 samples of ``[1920 zeros | audio]``."""
    return -(-(int(num_samples) + ONLINE_LEFT_PAD) // CHUNK_HOP)


def online_chunk_starts(num_samples: int) -> List[int]:
    return [CHUNK_HOP * k - ONLINE_LEFT_PAD for k in range(online_num_chunks(num_samples))]


def as_samples(audio) -> torch.Tensor:
    """1-D float32 CPU tensor from a tensor / array ``[T]`` or ``[1, T]``."""
    x = audio if isinstance(audio, torch.Tensor) else torch.as_tensor(np.asarray(audio))
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise InputError(f"expected mono 16 kHz samples [T], got shape {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float32)


def gather_chunks(audio: torch.Tensor, starts: Sequence[int], length: int = CHUNK_SAMPLES) -> torch.Tensor:
    """``[len(starts), length]``: ``audio[s : s + length]`` for each start, zeros outside the audio."""
    n = audio.shape[0]
    out = torch.zeros(len(starts), length, dtype=torch.float32)
    for row, s in enumerate(starts):
        lo, hi = max(int(s), 0), min(int(s) + length, n)
        if hi > lo:
            out[row, lo - s: hi - s] = audio[lo:hi]
    return out


def reduce_chunk_output(out: torch.Tensor) -> torch.Tensor:
    """Encoder output ``[N, 20, D]`` -> ``[N * 5, D]`` float32 CPU: frames ``[-14:-4]``, pairs averaged."""
    if out.ndim == 2:
        out = out[None]
    if out.ndim != 3 or out.shape[1] < 14:
        raise InputError(f"the audio encoder returned shape {tuple(out.shape)}; Ditto's chunking needs "
                         f"[chunks, {ENCODER_FRAMES}, dim] (HuBERT frames at 50 Hz of a {CHUNK_SAMPLES}-sample chunk)")
    kept = out[:, KEEP].to("cpu", torch.float32)
    n, _, d = kept.shape
    kept = kept.reshape(n, FRAMES_PER_CHUNK, 2, d)
    return ((kept[:, :, 0] + kept[:, :, 1]) / 2).reshape(n * FRAMES_PER_CHUNK, d)


def run_chunks(audio: torch.Tensor, starts: Sequence[int], encoder: EncoderFn, batch_size: int = DEFAULT_BATCH,
               progress: ProgressFn = None) -> torch.Tensor:
    """Encode the chunks at ``starts`` ``batch_size`` at a time -> ``[5 * len(starts), D]``.
    ``progress`` (a callback or a :class:`~core.progress.Progress`) counts chunks; cancelling goes
    through it (:mod:`core.progress`)."""
    batch_size = max(int(batch_size), 1)
    bar = as_progress(progress, len(starts))
    result: Optional[torch.Tensor] = None
    for b in range(0, len(starts), batch_size):
        part = starts[b:b + batch_size]
        with torch.inference_mode():
            out = encoder(gather_chunks(audio, part))
        rows = reduce_chunk_output(out)  # outside inference mode: ordinary tensors for the caller
        if result is None:  # allocate once: no list of pieces + concatenation copy for long audio
            result = torch.empty(len(starts) * FRAMES_PER_CHUNK, rows.shape[1], dtype=torch.float32)
        result[b * FRAMES_PER_CHUNK: b * FRAMES_PER_CHUNK + rows.shape[0]] = rows
        bar.step(len(part))
    if result is None:
        dim = int(getattr(encoder, "dim", 0) or 0)
        result = torch.zeros(0, dim)
    return result


def ditto_offline_features(audio, encoder: EncoderFn, batch_size: int = DEFAULT_BATCH,
                           progress: ProgressFn = None) -> torch.Tensor:
    """Ditto's offline features ``[ceil(len / 640), D]`` of 16 kHz mono ``audio``."""
    audio = as_samples(audio)
    num_f = num_video_frames(audio.shape[0])
    feats = run_chunks(audio, offline_chunk_starts(audio.shape[0]), encoder, batch_size, progress)
    return feats[:num_f]


def ditto_online_features(audio, encoder: EncoderFn, batch_size: int = DEFAULT_BATCH,
                          progress: ProgressFn = None) -> torch.Tensor:
    """Ditto's online (streaming) features ``[5 * ceil((len + 1920) / 3200), D]`` of 16 kHz mono
    ``audio``, all at once; row ``n`` is video frame ``n`` (the last rows see end padding)."""
    audio = as_samples(audio)
    return run_chunks(audio, online_chunk_starts(audio.shape[0]), encoder, batch_size, progress)


class DittoOnlineFeatures:
    """Incremental ``ditto-online`` features: ``push`` 16 kHz mono samples as they arrive, get the
    feature rows of every chunk that became complete; ``flush`` at the end of the stream gives the
    rest (chunks zero-padded at the end). ``push`` in any piece sizes + ``flush`` gives exactly the
    rows of :func:`ditto_online_features` over the whole audio.

    Latency: the rows of video frames ``5k .. 5k+4`` come out once audio up to sample
    ``3200 k + 4560`` has been pushed (2 frames + 80 samples of look-ahead). Only the samples the
    next chunk needs are kept.
    """

    def __init__(self, encoder: EncoderFn, batch_size: int = DEFAULT_BATCH) -> None:
        self.encoder = encoder
        self.batch_size = max(int(batch_size), 1)
        self.reset()

    def reset(self) -> None:
        self._buf = torch.zeros(ONLINE_LEFT_PAD)  # padded-stream samples from index self._buf_start
        self._buf_start = 0
        self._next = 0              # next chunk index
        self.audio_samples = 0      # real samples pushed so far
        self.rows_emitted = 0
        self.finished = False
        self._dim = int(getattr(self.encoder, "dim", 0) or 0)

    @property
    def _total(self) -> int:  # length of the padded stream so far
        return ONLINE_LEFT_PAD + self.audio_samples

    @property
    def num_frames(self) -> int:
        """Video frames covered by the audio pushed so far (``ceil(samples / 640)``)."""
        return num_video_frames(self.audio_samples)

    def _encode(self, ks: List[int]) -> torch.Tensor:
        if not ks:
            return torch.zeros(0, self._dim)
        parts = []
        for b in range(0, len(ks), self.batch_size):
            starts = [CHUNK_HOP * k - self._buf_start for k in ks[b:b + self.batch_size]]
            with torch.inference_mode():
                out = self.encoder(gather_chunks(self._buf, starts))
            parts.append(reduce_chunk_output(out))
        rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        self._dim = rows.shape[1]
        self.rows_emitted += rows.shape[0]
        return rows

    def _trim(self) -> None:
        keep_from = CHUNK_HOP * self._next
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start:].clone()
            self._buf_start = keep_from

    def push(self, samples) -> torch.Tensor:
        """Add audio; returns the new feature rows ``[5 * new_chunks, D]`` (possibly none)."""
        if self.finished:
            raise RuntimeError("DittoOnlineFeatures: push after flush; call reset() to start a new stream")
        x = as_samples(samples)
        if x.numel():
            self._buf = torch.cat([self._buf, x])
            self.audio_samples += x.numel()
        ready = []
        k = self._next
        while CHUNK_HOP * k + CHUNK_SAMPLES <= self._total:
            ready.append(k)
            k += 1
        rows = self._encode(ready)
        self._next = k
        self._trim()
        return rows

    def flush(self) -> torch.Tensor:
        """End of stream: the rows of the remaining chunks (zero-padded at the end)."""
        if self.finished:
            return torch.zeros(0, self._dim)
        ks = list(range(self._next, online_num_chunks(self.audio_samples)))
        rows = self._encode(ks)
        self._next += len(ks)
        self.finished = True
        self._buf = torch.zeros(0)
        self._buf_start = CHUNK_HOP * self._next
        return rows
