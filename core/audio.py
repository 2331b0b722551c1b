"""Audio: ComfyUI's AUDIO dict, file decoding through imageio-ffmpeg's ffmpeg, mono downmix,
resampling (python-soxr, the resampler librosa uses by default), length fitting, energy.

Internally audio is an :class:`Audio`: ``waveform`` float32 ``[C, T]`` in -1..1 on the CPU
plus ``sample_rate``. ComfyUI's AUDIO is ``{"waveform": [B, C, T], "sample_rate": int}``.

A decoded file with NaN/inf samples is refused (naming the file and the count); one shorter than
its header declares (an interrupted download or copy: WAV and FLAC, whose headers are exact) is
used with a logged warning saying how much was read. :func:`require_one_frame` refuses audio
shorter than one video frame where the frame rate is known.
"""
from __future__ import annotations

import logging
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import torch

from .checks import bad_audio
from .errors import InputError, NonFiniteAudioError

log = logging.getLogger(__name__)

#: refuse to decode more than this many seconds unless asked (about 40 MB a minute at 48 kHz stereo)
DEFAULT_MAX_SECONDS = 3 * 3600


@dataclass
class Audio:
    waveform: torch.Tensor  # [C, T] float32, CPU
    sample_rate: int

    def __post_init__(self) -> None:
        w = self.waveform
        if not isinstance(w, torch.Tensor):
            w = torch.as_tensor(np.asarray(w))
        if w.ndim == 1:
            w = w[None]
        if w.ndim != 2:
            raise InputError(f"audio waveform must be [channels, samples], got shape {tuple(w.shape)}")
        self.waveform = w.detach().to("cpu", torch.float32)
        self.sample_rate = int(self.sample_rate)
        if self.sample_rate <= 0:
            raise InputError(f"audio sample rate must be positive, got {self.sample_rate}")

    @property
    def channels(self) -> int:
        return self.waveform.shape[0]

    @property
    def num_samples(self) -> int:
        return self.waveform.shape[1]

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def is_silent(self, threshold: float = 1e-4) -> bool:
        if self.num_samples == 0:
            return True
        lo, hi = torch.aminmax(self.waveform)  # the peak without an abs() copy of the whole waveform
        return max(-float(lo), float(hi)) < threshold


def from_comfy(audio: Mapping, batch_index: int = 0) -> Audio:
    """ComfyUI AUDIO dict -> :class:`Audio` (one item of the batch)."""
    if isinstance(audio, Audio):
        return audio
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        raise InputError("expected an AUDIO input (a dict with 'waveform' and 'sample_rate')")
    w = audio["waveform"]
    if not isinstance(w, torch.Tensor):
        w = torch.as_tensor(np.asarray(w))
    if w.ndim == 3:
        if not 0 <= batch_index < w.shape[0]:
            raise InputError(f"audio batch has {w.shape[0]} items, index {batch_index} asked")
        w = w[batch_index]
    return Audio(w, audio["sample_rate"])


def to_comfy(audio: Audio) -> dict:
    return {"waveform": audio.waveform[None].contiguous(), "sample_rate": audio.sample_rate}


# ------------------------------------------------------------------------ decoding
def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _parse_wav(data: bytes, name: str):
    """(channels, rate, float32 samples [T, C]) from a WAV ffmpeg wrote as pcm_f32le to a pipe."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InputError(f"{name}: ffmpeg did not produce audio (no decodable audio stream?)")
    pos, channels, rate = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            _, channels, rate = struct.unpack("<HHI", data[body:body + 8])
        elif cid == b"data":
            if channels is None:
                break
            # a piped WAV has no final size: the samples run to the end of the stream
            raw = data[body:]
            frame = 4 * channels
            raw = raw[: len(raw) // frame * frame]
            return channels, rate, np.frombuffer(raw, dtype="<f4").reshape(-1, channels)
        pos = body + size + (size & 1)
    raise InputError(f"{name}: could not read the decoded audio")


def load_audio(path: Union[str, os.PathLike], max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> Audio:
    """Decode any audio (or the audio track of a video) ffmpeg reads: wav, mp3, flac, m4a, ogg...

    Keeps the file's own sample rate and channels (like ComfyUI's LoadAudio).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file not found: {path}")
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-i", str(path.resolve())]
    if max_seconds:
        cmd += ["-t", str(max_seconds + 1)]
    cmd += ["-vn", "-sn", "-dn", "-map", "0:a:0", "-c:a", "pcm_f32le", "-f", "wav", "pipe:1"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = err[-1] if err else f"ffmpeg exit code {proc.returncode}"
        if "matches no streams" in reason or "does not contain any stream" in reason:
            reason = "the file has no audio stream"
        raise InputError(f"could not decode audio file '{path.name}': {reason}")
    channels, rate, samples = _parse_wav(proc.stdout, path.name)
    if max_seconds and samples.shape[0] > max_seconds * rate:
        raise InputError(f"audio file '{path.name}' is longer than {max_seconds:.0f} s; "
                         f"split it or raise the limit")
    audio = Audio(torch.from_numpy(samples.T.copy()), rate)
    if audio.num_samples == 0:
        raise InputError(f"audio file '{path.name}' contains no samples (0 s long)")
    bad = bad_audio(audio)
    if bad:
        raise NonFiniteAudioError(f"audio file '{path.name}' has {bad}: the file is damaged or was written with "
                                  f"invalid values. Re-export it, e.g. as a 16-bit PCM WAV, or check its source.")
    _warn_if_truncated(path, audio)
    return audio


# ------------------------------------------------------------------------ truncated files
#: a file counts as cut short when more than this much of the length its header declares is missing
#: (writers that round their size fields are off by a few samples, never by this much)
TRUNCATION_TOLERANCE_S = 0.01



def load_audio_track(path: Union[str, os.PathLike]) -> Optional[Audio]:
    """The sound track of a video (or any media) file, or None when it has none. A track that is there but damaged
    (NaN/inf samples) is :class:`NonFiniteAudioError`, never silently dropped."""
    try:
        return load_audio(path)
    except NonFiniteAudioError:
        raise
    except InputError:  # no sound track: a silent video
        return None


def _wav_declared_seconds(path: Path) -> Optional[float]:
    """Seconds the RIFF header's data chunk declares, when the file holds fewer bytes than that
    (a download or copy that stopped early); None when the file is whole or the size is unknown.

    Only the chunk headers are read (a seek per chunk). A size of 0 or 0xFFFFFFFF means "unknown"
    (a WAV written to a pipe or a stream) and RF64 files keep theirs elsewhere: no claim then.
    """
    try:
        total = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            byte_rate = 0
            pos = 12
            while pos + 8 <= total:
                f.seek(pos)
                cid, size = f.read(4), struct.unpack("<I", f.read(4))[0]
                if cid == b"fmt " and size >= 16:
                    byte_rate = struct.unpack("<HHII", f.read(12))[3]
                elif cid == b"data":
                    present = total - (pos + 8)
                    if size in (0, 0xFFFFFFFF) or byte_rate <= 0 or present >= size:
                        return None
                    return size / byte_rate
                pos += 8 + size + (size & 1)
    except (OSError, struct.error):
        return None
    return None


def _flac_declared_seconds(path: Path) -> Optional[float]:
    """Seconds a FLAC file's STREAMINFO declares (total samples / rate), or None when unknown."""
    try:
        with open(path, "rb") as f:
            head = f.read(8 + 34)
    except OSError:
        return None
    # "fLaC", then the first metadata block, which must be STREAMINFO (type 0, 34 bytes)
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return None
    bits = int.from_bytes(head[18:26], "big")  # rate 20 bits, channels 3, bits per sample 5, samples 36
    rate, total = bits >> 44, bits & ((1 << 36) - 1)
    return total / rate if rate and total else None


def declared_seconds(path: Union[str, os.PathLike]) -> Optional[float]:
    """How long the file's own header says its audio is, where that is exact: a WAV's data chunk size
    (returned only when the file holds fewer bytes than that) and a FLAC's sample count. None otherwise.

    Other containers are not asked: an MP3 without a Xing header has only a bitrate estimate, a
    video's duration can be its picture's, and an Ogg's comes from its last page (so a cut file
    agrees with itself); comparing there would warn about whole files or never fire.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return None
    if magic == b"RIFF":
        return _wav_declared_seconds(path)
    if magic == b"fLaC":
        return _flac_declared_seconds(path)
    return None


def _warn_if_truncated(path: Path, audio: Audio) -> None:
    """Log a warning when the decoded audio is shorter than the file's header declares: the file
    was cut short (an interrupted download or copy). The audio that is there is still used."""
    declared = declared_seconds(path)
    if declared is None or audio.duration >= declared - TRUNCATION_TOLERANCE_S:
        return
    log.warning("audio file '%s' is cut short: read %.2f s of the %.2f s its header declares (%.0f %%). "
                "The part that is there is used; copy or export the file again for the whole audio.",
                path.name, audio.duration, declared, 100.0 * audio.duration / declared)


# ------------------------------------------------------------------------ processing
def to_mono(audio: Audio) -> Audio:
    """Average the channels (the downmix librosa and most speech models use)."""
    if audio.channels == 1:
        return audio
    return Audio(audio.waveform.mean(dim=0, keepdim=True), audio.sample_rate)


def resample(audio: Audio, sample_rate: int, quality: str = "HQ") -> Audio:
    """Resample with soxr (``quality`` "HQ" = librosa's default ``soxr_hq``; "VHQ" is finer)."""
    sample_rate = int(sample_rate)
    if sample_rate == audio.sample_rate or audio.num_samples == 0:
        return Audio(audio.waveform, sample_rate) if audio.num_samples == 0 else audio
    import soxr

    x = audio.waveform.numpy().T  # [T, C], what soxr expects
    y = soxr.resample(np.ascontiguousarray(x, dtype=np.float32), audio.sample_rate, sample_rate, quality=quality)
    return Audio(torch.from_numpy(np.ascontiguousarray(y.T)), sample_rate)


def prepare(audio: Union[Audio, Mapping], sample_rate: int = 16000, mono: bool = True,
            require_sound: bool = False) -> Audio:
    """The usual front end of a speech model: AUDIO -> mono -> ``sample_rate``.

    Raises :class:`InputError` on empty audio, and on silent audio when ``require_sound``.
    """
    audio = from_comfy(audio)
    if audio.num_samples == 0:
        raise InputError("the audio is empty (0 samples)")
    if require_sound and audio.is_silent():
        raise InputError("the audio is silent: there is no speech to animate")
    if mono:
        audio = to_mono(audio)
    return resample(audio, sample_rate)


def require_one_frame(audio: Union[Audio, Mapping], fps: float, where: str = "the audio") -> Audio:
    """Refuse audio shorter than one video frame at ``fps`` (it would make an empty or 1-frame
    video of nothing); ``where`` names the input in the message. Returns the :class:`Audio`."""
    audio = from_comfy(audio)
    if audio.num_samples == 0:
        raise InputError(f"{where} is empty (0 samples): there is no speech to animate")
    frame = 1.0 / float(fps)
    if audio.num_samples * float(fps) < audio.sample_rate * (1 - 1e-9):
        count = f"{audio.num_samples} sample{'' if audio.num_samples == 1 else 's'}"
        raise InputError(f"{where} is only {audio.duration:.4f} s long ({count} at "
                         f"{audio.sample_rate} Hz), shorter than one video frame at {float(fps):g} fps "
                         f"({frame:.3f} s): give at least {frame:.3f} s of speech (was the file cut or "
                         f"exported wrongly?)")
    return audio


def samples_for_frames(num_frames: int, fps: float, sample_rate: int) -> int:
    return int(round(num_frames * sample_rate / float(fps)))


def fit_length(audio: Audio, num_samples: int) -> Audio:
    """Trim, or pad with silence, to exactly ``num_samples``."""
    t = audio.num_samples
    if t == num_samples:
        return audio
    if t > num_samples:
        return Audio(audio.waveform[:, :num_samples], audio.sample_rate)
    pad = torch.zeros(audio.channels, num_samples - t)
    return Audio(torch.cat([audio.waveform, pad], dim=1), audio.sample_rate)


def num_video_frames(audio: Audio, fps: float) -> int:
    """Frames needed to cover the audio at ``fps`` (rounded up)."""
    return int(np.ceil(audio.num_samples * float(fps) / audio.sample_rate - 1e-9))


#: samples squared and summed at a time by :func:`energy_envelope` (in two float64 buffers of 512 KB reused for
#: every block), so the envelope of a long recording never holds a float64 copy of the whole waveform
ENVELOPE_BLOCK_SAMPLES = 1 << 16


def energy_envelope(audio: Audio, fps: float = 25.0) -> torch.Tensor:
    """RMS loudness per video frame ``[num_video_frames]`` of the mono signal, 0..1 scaled by
    the clip's 99th percentile (so quiet and loud recordings drive the mouth alike).

    The squares are summed a block of frames at a time (:data:`ENVELOPE_BLOCK_SAMPLES`), so memory
    beyond the result does not grow with the length of the audio."""
    mono = to_mono(audio).waveform[0]
    n = num_video_frames(audio, fps)
    if n == 0:
        return torch.zeros(0)
    edges = torch.tensor([samples_for_frames(i, fps, audio.sample_rate) for i in range(n + 1)]).clamp(max=mono.numel())
    block = max(1, int(ENVELOPE_BLOCK_SAMPLES * float(fps) / audio.sample_rate))  # frames per block
    longest = int((edges[block:] - edges[:-block]).max()) if n > block else int(edges[-1] - edges[0])
    squares = torch.empty(longest, dtype=torch.float64)
    sq = torch.zeros(longest + 1, dtype=torch.float64)  # sq[j] = sum of the block's first j squares
    rms = torch.empty(n, dtype=torch.float32)
    for f0 in range(0, n, block):
        f1 = min(f0 + block, n)
        s0, s1 = int(edges[f0]), int(edges[f1])
        part = squares[:s1 - s0]
        part.copy_(mono[s0:s1]).square_()
        torch.cumsum(part, 0, out=sq[1:s1 - s0 + 1])
        lo, hi = edges[f0:f1] - s0, edges[f0 + 1:f1 + 1] - s0
        rms[f0:f1] = ((sq[hi] - sq[lo]) / (hi - lo).clamp(min=1)).clamp(min=0).sqrt()
    ref = torch.quantile(rms, 0.99) if rms.numel() > 1 else rms.max()
    return (rms / ref).clamp(0, 1) if float(ref) > 1e-6 else torch.zeros_like(rms)


def join_segments(segments, fps: float, sample_rate: Optional[int] = None, channels: Optional[int] = None):
    """Concatenate talking-head segments (the story mode: several speakers one after another).

    ``segments``: ``[(frames [T_i,H,W,3], audio or None), ...]`` with audio as :class:`Audio` or an AUDIO
    dict. Every segment's audio is resampled to ``sample_rate`` (default: the first segment's), given
    ``channels`` (default: the most any segment has; mono is duplicated), and trimmed or padded with
    silence to exactly its frames' duration at ``fps``, so each speaker stays in sync after joining
    (:func:`join_segment_audio`). Returns ``(frames [sum T_i,H,W,3], Audio)``.
    """
    if not segments:
        raise InputError("no segments to join")
    require_one_frame_size([tuple(f.shape[1:]) for f, _ in segments])
    audio = join_segment_audio([(int(f.shape[0]), a) for f, a in segments], fps, sample_rate, channels)
    return torch.cat([f for f, _ in segments], 0), audio


def require_one_frame_size(sizes) -> None:
    """Refuse segments whose frames differ in size (``sizes``: each segment's ``(H, W, C)``)."""
    found = {tuple(int(v) for v in size) for size in sizes}
    if len(found) > 1:
        raise InputError(f"the segments have different frame sizes {sorted(found)}; bring them to one size first "
                         f"(e.g. ResizePad256 or FOMAnimate, which output 256x256)")


def join_segment_audio(segments, fps: float, sample_rate: Optional[int] = None,
                       channels: Optional[int] = None) -> Audio:
    """The joined audio of :func:`join_segments` from each segment's frame count alone (so the frames may be
    streams that were not made yet): ``segments`` = ``[(frame count, audio or None), ...]``; every segment's
    audio fitted to exactly its frames' duration at ``fps`` on the joined timeline."""
    if not segments:
        raise InputError("no segments to join")
    audios = [None if a is None else from_comfy(a) for _, a in segments]
    known = [a for a in audios if a is not None]
    rate = int(sample_rate or (known[0].sample_rate if known else 16000))
    chans = int(channels or max([a.channels for a in known] or [1]))
    parts, done = [], 0
    for (count, _), a in zip(segments, audios):
        # boundaries on the joined timeline, so rounding never accumulates
        n = samples_for_frames(done + int(count), fps, rate) - samples_for_frames(done, fps, rate)
        done += int(count)
        if a is None:
            parts.append(torch.zeros(chans, n))
            continue
        a = resample(a, rate) if a.sample_rate != rate else a
        w = a.waveform
        if w.shape[0] != chans:
            w = w.mean(0, keepdim=True).expand(chans, -1) if w.shape[0] != 1 else w.expand(chans, -1)
        parts.append(fit_length(Audio(w.contiguous(), rate), n).waveform)
    return Audio(torch.cat(parts, 1), rate)
