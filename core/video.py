"""Streaming mp4 writer (h264 yuv420p + AAC) on imageio-ffmpeg's ffmpeg, output naming, probing.

Frames are piped into one ffmpeg process as they come (no temporary AVI, no second copy of the
video in memory); the audio goes in as a small temporary WAV, padded with silence or trimmed to
the video's length. The mp4 is written under a hidden temporary name in the destination folder
and renamed into place only when ffmpeg finished cleanly, so a failure or a cancel never leaves
a broken file under the final name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import wave
import weakref
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, Iterator, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from .audio import (Audio, ffmpeg_exe, fit_length, from_comfy, num_video_frames, require_one_frame,
                    samples_for_frames)
from .errors import InputError, TalkingHeadError
from .files import atomic_write, new_file_mode, relative_parts
from .frames import FrameStream
from .progress import Progress, ProgressFn

_NAME_RE = re.compile(r"^(?P<base>.+)_(?P<n>\d{5,})_\.(?P<ext>[A-Za-z0-9]+)$")


class VideoWriteError(TalkingHeadError):
    """ffmpeg failed or the destination cannot be written."""


def write_hint(exc: BaseException, path: Union[str, os.PathLike]) -> str:
    """What the user can do about a failed write of ``path``, from the error's errno."""
    import errno

    code = getattr(exc, "errno", None)
    name = Path(path).name
    if code == errno.ENAMETOOLONG or len(name.encode("utf-8", "surrogatepass")) > 255:
        return (f"the file name is too long ({len(name)} characters; file systems allow about 255): "
                "shorten filename_prefix")
    if code == errno.ENOSPC:
        return "the disk is full"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the output folder is not writable"
    return "is the output folder writable?"


# ------------------------------------------------------------------------ naming
def output_path(output_dir: Union[str, os.PathLike], prefix: str, ext: str = "mp4") -> Tuple[Path, str, str]:
    """Next free ``<prefix>_<counter:05>_.<ext>`` inside ``output_dir`` (ComfyUI's naming).

    ``prefix`` may contain sub-folders (``talks/anna``); absolute paths, ``..`` and other ways
    out of ``output_dir`` are refused. Returns ``(path, subfolder, filename)``.
    """
    root = Path(output_dir).resolve()
    parts = relative_parts(root, prefix, "filename_prefix", "a plain name or a sub-folder like 'talks/anna'")
    folder = root.joinpath(*parts[:-1]).resolve()
    base = parts[-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VideoWriteError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from exc
    counter = 0
    for entry in folder.iterdir():
        m = _NAME_RE.match(entry.name)
        if m and m["base"] == base and m["ext"].lower() == ext.lower():
            counter = max(counter, int(m["n"]))
    name = f"{base}_{counter + 1:05d}_.{ext}"
    sub = "/".join(parts[:-1])
    return folder / name, sub, name


# ------------------------------------------------------------------------ frames
def frames_to_uint8(frames: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """IMAGE ``[B,H,W,C]`` float 0..1 (or uint8) -> contiguous uint8 RGB ``[B,H,W,3]``."""
    if isinstance(frames, torch.Tensor):
        if frames.is_floating_point():
            frames = (frames.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        frames = frames.cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise InputError(f"expected frames [B,H,W,3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames.astype(np.float32), 0, 1) * 255.0).round().astype(np.uint8)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    elif frames.shape[-1] == 4:
        frames = frames[..., :3]
    return np.ascontiguousarray(frames)


def _even_pad(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row/column where a side is odd."""
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _write_wav(path: Path, audio: Audio, block: int = 1 << 18) -> None:
    """16-bit PCM, converted ``block`` samples at a time (a long 48 kHz stereo track is never copied whole)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(audio.channels)
        w.setsampwidth(2)
        w.setframerate(audio.sample_rate)
        for start in range(0, audio.num_samples, block):
            part = audio.waveform[:, start:start + block].clamp(-1, 1).numpy().T * 32767.0
            w.writeframes(part.round().astype("<i2").tobytes())


def _ffmetadata(meta: Mapping[str, str]) -> str:
    def esc(s: str) -> str:
        return re.sub(r"([=;#\\\n])", r"\\\1", s)
    return ";FFMETADATA1\n" + "".join(f"{esc(k)}={esc(v)}\n" for k, v in meta.items())


def _metadata_args(metadata: Optional[Mapping[str, str]], folder: Path, index: int) -> list:
    """ffmpeg arguments that add ``metadata`` (written to ``folder/meta.txt``) as input ``index``; none without it."""
    if not metadata:
        return []
    meta = folder / "meta.txt"
    meta.write_text(_ffmetadata(metadata), encoding="utf-8")
    return ["-f", "ffmetadata", "-i", str(meta), "-map_metadata", str(index)]


def _run_ffmpeg(cmd: list, failed: str) -> None:
    """Run one ffmpeg command to its end; when it fails, :class:`VideoWriteError` ``failed: <its last line>``."""
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise VideoWriteError(f"{failed}: {err[-1] if err else proc.returncode}")


# ------------------------------------------------------------------------ writer
class VideoWriter:
    """Append frames as they come; ``close()`` finishes the mp4 and renames it into place.

    Use as a context manager: an exception inside the block (including a cancel) aborts the
    write and removes the temporary file. ``audio`` (an :class:`Audio` or ComfyUI AUDIO dict) is
    trimmed or padded with silence to the video's duration. With ``expected_frames`` (and that many
    frames written) the audio is encoded in the same single ffmpeg pass; otherwise ``close()`` adds
    it with a second, quick ffmpeg run that copies the video stream (no re-encode).
    """

    def __init__(self, path: Union[str, os.PathLike], fps: float = 25.0, audio=None, crf: int = 19,
                 preset: str = "medium", expected_frames: Optional[int] = None,
                 metadata: Optional[Mapping[str, str]] = None) -> None:
        if not fps or fps <= 0:
            raise InputError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.audio = from_comfy(audio) if audio is not None else None
        if self.audio is not None and self.audio.num_samples == 0:
            self.audio = None
        self.crf = int(crf)
        self.preset = preset
        self.expected_frames = expected_frames
        self.metadata = dict(metadata or {})
        self.frames_written = 0
        self.size: Optional[Tuple[int, int]] = None  # (H, W) as written (even)
        self._proc: Optional[subprocess.Popen] = None
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self._partial: Optional[Path] = None
        self._log = None
        self._closed = False
        self._audio_in_pass = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".partial.mp4",
                                           dir=self.path.parent)
            os.close(fd)
            os.chmod(partial, new_file_mode())  # mkstemp makes 0600; outputs get normal rights
        except OSError as exc:
            raise VideoWriteError(f"cannot write into {self.path.parent}: {exc.strerror or exc} "
                                  f"({write_hint(exc, self.path)})") from exc
        self._partial = Path(partial)

    # -- process
    def _start(self, h: int, w: int) -> None:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="talkinghead-mux-")
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", repr(self.fps),
               "-i", "pipe:0"]
        # the audio joins in this pass only when its length can be fitted now; otherwise close()
        # muxes it afterwards (a stream copy of the video, no re-encode)
        single_pass = self.audio is not None and self.expected_frames is not None
        if single_pass:
            cmd += ["-i", str(self._audio_wav(self.expected_frames))]
        cmd += _metadata_args(self.metadata, Path(self._tmpdir.name), 2 if single_pass else 1)
        cmd += ["-map", "0:v:0", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", self.preset,
                "-crf", str(self.crf), "-r", repr(self.fps)]
        if single_pass:
            cmd += ["-map", "1:a:0"] + self._AAC
        cmd += ["-movflags", "+faststart+use_metadata_tags", "-f", "mp4", str(self._partial)]
        self._audio_in_pass = single_pass
        self._log = open(Path(self._tmpdir.name) / "ffmpeg.log", "w+b")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        self.size = (h, w)

    _AAC = ["-c:a", "aac", "-b:a", "192k"]

    def _audio_wav(self, num_frames: int) -> Path:
        """The audio fitted to ``num_frames`` (trimmed or padded with silence) as a temp WAV."""
        path = Path(self._tmpdir.name) / f"audio_{num_frames}.wav"
        return write_audio_track(path, self.audio, num_frames, self.fps)

    def _mux_audio(self) -> None:
        """Replace the partial file by one with the video stream copied and the audio fitted to
        the frames actually written (a failed or cancelled mux leaves no second temporary file)."""
        with atomic_write(self._partial, suffix=".mux.partial.mp4") as muxed:
            os.chmod(muxed, new_file_mode())  # ffmpeg keeps mkstemp's 0600; outputs get normal rights
            cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
                   "-i", str(self._partial), "-i", str(self._audio_wav(self.frames_written))]
            cmd += _metadata_args(self.metadata, Path(self._tmpdir.name), 2)
            cmd += ["-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy"] + self._AAC
            cmd += ["-movflags", "+faststart+use_metadata_tags", "-f", "mp4", str(muxed)]
            _run_ffmpeg(cmd, f"ffmpeg failed adding the audio to {self.path.name}")

    def _ffmpeg_error(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else ""

    def write(self, frames) -> None:
        """Append ``[B,H,W,3]`` (or one ``[H,W,3]``) float 0..1 tensor/array or uint8 frames."""
        if self._closed:
            raise VideoWriteError("write() after close()")
        arr = _even_pad(frames_to_uint8(frames))
        if arr.shape[0] == 0:
            return
        h, w = arr.shape[1:3]
        if self._proc is None:
            self._start(h, w)
        elif (h, w) != self.size:
            self.abort()
            raise InputError(f"frame size changed from {self.size[1]}x{self.size[0]} to {w}x{h} mid-video")
        try:
            self._proc.stdin.write(arr.tobytes())
        except (BrokenPipeError, OSError) as exc:
            err = self._ffmpeg_error()
            self.abort()
            raise VideoWriteError(f"ffmpeg stopped while writing {self.path.name}: {err or exc}") from exc
        self.frames_written += arr.shape[0]

    def close(self) -> Path:
        """Finish encoding and move the file to its final name; returns the final path."""
        if self._closed:
            return self.path
        if self._proc is None:
            self.abort()
            raise InputError("no frames to write: the video is empty")
        try:
            self._proc.stdin.close()
            code = self._proc.wait()
            if code != 0:
                raise VideoWriteError(f"ffmpeg failed writing {self.path.name}: {self._ffmpeg_error() or code}")
            if self.audio is not None and not (self._audio_in_pass and self.frames_written == self.expected_frames):
                self._mux_audio()
            os.replace(self._partial, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._cleanup()
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete the temporary file; the final name is never touched."""
        self._closed = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc is not None and self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        if self._partial is not None and self._partial.exists():
            self._partial.unlink()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path, frames, fps: float = 25.0, audio=None, crf: int = 19, preset: str = "medium",
                chunk: int = 32, metadata: Optional[Mapping[str, str]] = None, min_frames: int = 0,
                progress: Optional[ProgressFn] = None) -> Path:
    """Write an IMAGE batch, a :class:`~.frames.FrameStream` (pulled ``chunk`` frames at a time, so memory
    stays bounded whatever the length) or an iterable of batches to ``path`` atomically.

    ``min_frames``: hold the last frame until the video has at least this many frames (e.g. a
    still portrait over a whole speech: ``audio.num_video_frames(audio, fps)``).
    """

    expected: Optional[int] = None
    if isinstance(frames, (FrameStream, torch.Tensor, np.ndarray)):
        n = len(frames)
        if n == 0:
            what = frames.label if isinstance(frames, FrameStream) else "the IMAGE batch"
            raise InputError(f"no frames to write: {what} is empty")
        expected = max(n, int(min_frames))
        parts = frames.batches(chunk) if isinstance(frames, FrameStream) else \
            (frames[i:i + chunk] for i in range(0, n, chunk))
        batches: Iterable = _held(parts, n, expected, chunk)
        bar = Progress(-(-n // chunk) + -(-(expected - n) // chunk), progress)  # the batches _held yields
    else:
        if min_frames:
            raise InputError("min_frames needs an IMAGE batch, not a stream of batches")
        batches, bar = frames, None
    with VideoWriter(path, fps, audio, crf, preset, expected_frames=expected, metadata=metadata) as writer:
        for batch in batches:
            writer.write(batch)
            if bar is not None:
                bar.step()
    return writer.path


def mux_source(frames: Optional[FrameStream], images, fps: float, audio, extend_to_audio: bool = False,
               what: str = "MuxVideo") -> Tuple[FrameStream, Optional[Audio], int]:
    """What MuxVideo writes, from its inputs: ``(stream, track, total)``: the frames (its ``frames`` stream, or its
    ``images`` batch as a stream; exactly one of the two), the sound (None without ``audio``; refused when shorter
    than one frame, unless it has no samples at all) and the video's length in frames (the frames, or the sound's
    length when ``extend_to_audio`` holds the last frame over it). A render split in parts counts the same way."""
    if (frames is None) == (images is None):
        raise InputError(f"{what} needs its video from one input: connect either frames (a frame stream) or images "
                         f"(an IMAGE batch)" + (", not both" if frames is not None else ""))
    source = frames if frames is not None else FrameStream.from_images(images, fps, label=f"{what}'s images")
    track = from_comfy(audio) if audio is not None else None
    # no samples at all is a video without sound (written without an audio track); a few samples,
    # less than one frame, is a broken file, not speech
    if track is not None and track.num_samples > 0:
        require_one_frame(track, fps, f"{what}'s audio input")
    total = len(source)
    if extend_to_audio and track is not None:
        total = max(total, num_video_frames(track, fps))
    return source, track, total


def write_audio_track(path: Union[str, os.PathLike], audio, num_frames: int, fps: float = 25.0) -> Path:
    """``audio`` (an :class:`Audio` or ComfyUI AUDIO) fitted to ``num_frames`` video frames, trimmed or padded with
    silence as :class:`VideoWriter` fits it, as a 16-bit WAV at ``path`` (written whole or not at all)."""
    track = from_comfy(audio)
    with atomic_write(path, suffix=".partial.wav") as tmp:
        _write_wav(tmp, fit_length(track, samples_for_frames(num_frames, fps, track.sample_rate)))
    return Path(path)


def concat_videos(parts: Iterable[Union[str, os.PathLike]], path: Union[str, os.PathLike],
                  audio_wav: Optional[Union[str, os.PathLike]] = None,
                  metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Join mp4 files made with one encoding (size, rate, codec settings: the parts of one render) one after another
    without re-encoding the video (ffmpeg's concat demuxer, a stream copy), with ``audio_wav`` as its AAC sound
    track (as :class:`VideoWriter` encodes it) and ``metadata``; written at ``path`` whole or not at all."""
    parts = [Path(p).resolve() for p in parts]
    if not parts:
        raise InputError("no video parts to join")
    for part in parts:
        if not part.is_file():
            raise InputError(f"video part not found: {part}")
    with tempfile.TemporaryDirectory(prefix="talkinghead-concat-") as tmp:
        listing = Path(tmp) / "parts.txt"
        # the concat demuxer's quoting: a quote inside a quoted name is closed, escaped and reopened
        listing.write_text("".join("file '" + str(p).replace("'", "'\\''") + "'\n" for p in parts),
                           encoding="utf-8")
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
               "-f", "concat", "-safe", "0", "-i", str(listing)]
        inputs = 1
        if audio_wav is not None:
            cmd += ["-i", str(audio_wav)]
            inputs += 1
        cmd += _metadata_args(metadata, Path(tmp), inputs)
        cmd += ["-map", "0:v:0", "-c:v", "copy"]
        if audio_wav is not None:
            cmd += ["-map", "1:a:0"] + VideoWriter._AAC
        with atomic_write(path, suffix=".partial.mp4") as out:
            _run_ffmpeg(cmd + ["-movflags", "+faststart+use_metadata_tags", "-f", "mp4", str(out)],
                        f"ffmpeg failed joining {len(parts)} parts into {Path(path).name}")
    return Path(path)


def _held(batches: Iterable, n: int, total: int, chunk: int) -> Iterator:
    """The ``n`` frames of ``batches``, then the last frame repeated (``chunk`` at a time) until ``total``."""
    last = None
    for batch in batches:
        last = batch[-1:]
        yield batch
    if total > n:
        frozen = frames_to_uint8(last)
        for i in range(n, total, chunk):
            yield np.repeat(frozen, min(chunk, total - i), axis=0)


# ------------------------------------------------------------------------ reading / probing
def _decode_error(path: Path, exc: BaseException) -> InputError:
    lines = str(exc).strip().splitlines()
    return InputError(f"could not decode video file '{path.name}': {lines[-1] if lines else exc}")


def _open_decoder(path: Union[str, os.PathLike]):
    """ffmpeg decoding ``path`` to rgb24: ``(frames, width, height, fps)``, ``frames`` an iterator of raw frames
    (close it to stop ffmpeg). A missing or undecodable file is an :class:`InputError` naming it."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise InputError(f"video file not found: {path}")
    frames = imageio_ffmpeg.read_frames(str(path.resolve()), pix_fmt="rgb24")
    try:
        meta = next(frames)
    except (RuntimeError, OSError, StopIteration) as exc:
        frames.close()
        raise _decode_error(path, exc) from exc
    w, h = (int(v) for v in meta["size"])
    return frames, w, h, float(meta.get("fps") or 25.0)


def read_frames(path: Union[str, os.PathLike]) -> Iterator[np.ndarray]:
    """Decode a video to uint8 RGB frames ``[H,W,3]`` one at a time (closing the iterator stops ffmpeg)."""
    frames, w, h, _ = _open_decoder(path)
    try:
        for raw in frames:
            yield np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
    finally:
        frames.close()


def video_info(path: Union[str, os.PathLike]) -> Tuple[int, int, float]:
    """``(width, height, fps)`` of a video file, from its header (nothing is decoded)."""
    frames, w, h, fps = _open_decoder(path)
    frames.close()
    return w, h, fps


def count_frames(path: Union[str, os.PathLike]) -> int:
    """The frames ffmpeg decodes from a video file's first video stream (a decoding pass, no colour conversion)."""
    import imageio_ffmpeg

    path = Path(path)
    try:
        count, _ = imageio_ffmpeg.count_frames_and_secs(str(path.resolve()))
    except (RuntimeError, OSError) as exc:
        raise _decode_error(path, exc) from exc
    if not count:
        raise InputError(f"video file '{path.name}' has no frames")
    return int(count)


def video_stream(path: Union[str, os.PathLike], batch_size: int = 16, label: Optional[str] = None,
                 fps: Optional[float] = None) -> FrameStream:
    """A video file as a :class:`~core.frames.FrameStream`: its frame count, size and rate are read now (one
    decoding pass to count), the frames are decoded each time the stream is pulled, ``batch_size`` at a time,
    into float 0..1 IMAGE batches - the same frames :func:`load_video` gives, without ever holding them all."""
    w, h, rate = video_info(path)
    rate = float(fps) if fps is not None else rate
    count = count_frames(path)
    step = max(int(batch_size), 1)

    def source() -> Iterator[torch.Tensor]:
        held = []
        for frame in read_frames(path):  # a pull that ends early closes read_frames, which stops ffmpeg
            held.append(frame)
            if len(held) == step:
                yield torch.from_numpy(np.stack(held)).float().div_(255.0)
                held = []
        if held:
            yield torch.from_numpy(np.stack(held)).float().div_(255.0)

    return FrameStream(source, count, h, w, rate, label or f"the frames of '{Path(path).name}'")


def open_video(source: Union[str, os.PathLike, BinaryIO], label: Optional[str] = None, fps: Optional[float] = None,
               folder: Optional[Union[str, os.PathLike]] = None, batch_size: int = 16) -> Tuple[FrameStream, Optional[Audio]]:
    """A video file's frames as a :class:`~core.frames.FrameStream` (:func:`video_stream`) and its sound track
    (None when it has none; a damaged one is :class:`~core.audio.NonFiniteAudioError`).

    ``source``: a path, or a file object holding the video (ComfyUI's uploaded ``BytesIO``): that is written once
    to a temporary file in ``folder`` (default the system's), deleted when the stream is."""
    from .audio import load_audio_track

    spilled = None
    if not isinstance(source, (str, os.PathLike)):
        source.seek(0)
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
        handle, spilled = tempfile.mkstemp(suffix=".video", prefix="talkinghead_", dir=folder)
        try:
            with os.fdopen(handle, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        except BaseException:
            os.unlink(spilled)
            raise
        source, label = spilled, label or "the frames of the video"
    try:
        stream = video_stream(source, batch_size, label, fps)
        audio = load_audio_track(source)
    except BaseException:
        if spilled:
            os.unlink(spilled)
        raise
    if spilled:
        weakref.finalize(stream, os.unlink, spilled)
    return stream, audio


def load_video(path: Union[str, os.PathLike], max_frames: int = 100_000) -> Tuple[torch.Tensor, float]:
    """Decode a whole video to an IMAGE batch ``[T,H,W,3]`` float 0..1 and its frame rate
    (what ComfyUI's LoadVideo gives). Frames are kept as uint8 while decoding (a quarter of the
    float size) and converted once at the end."""
    path = Path(path)
    gen, w, h, fps = _open_decoder(path)
    frames = []
    try:
        for raw in gen:
            frames.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(h, w, 3))
            if len(frames) > max_frames:
                raise InputError(f"video '{path.name}' has more than {max_frames} frames")
    finally:
        gen.close()
    if not frames:
        raise InputError(f"video file '{path.name}' has no frames")
    return torch.stack(frames).float().div_(255.0), fps


def probe(path: Union[str, os.PathLike]) -> Dict[str, object]:
    """What is in a media file: streams (codec, pixel format, size, fps, rate, channels), the
    decoded frame count and durations. Used by tests and the CLI (``ffprobe``-like)."""
    path = Path(path)
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path.resolve()),
                           "-map", "0:v:0?", "-f", "null", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    text = proc.stderr.decode("utf-8", "replace")
    info: Dict[str, object] = {"path": str(path), "video": None, "audio": None}
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    if m:
        info["duration"] = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    input_part = text.split("Output #0")[0]
    vm = re.search(r"Stream #0:\d+.*?: Video: (\w+).*?, (\w+)(?:\(.*?\))?, (\d+)x(\d+).*?, ([\d.]+) fps", input_part)
    if vm:
        frames = re.findall(r"frame=\s*(\d+)", text)
        info["video"] = {"codec": vm[1], "pix_fmt": vm[2], "width": int(vm[3]), "height": int(vm[4]),
                         "fps": float(vm[5]), "frames": int(frames[-1]) if frames else None}
    am = re.search(r"Stream #0:\d+.*?: Audio: (\w+).*?, (\d+) Hz, ([\w.() ]+?)(?:,|$)", input_part, re.M)
    if am:
        layout = am[3].strip()
        channels = {"mono": 1, "stereo": 2}.get(layout)
        if channels is None:
            cm = re.match(r"(\d+) channels", layout)
            channels = int(cm[1]) if cm else None
        info["audio"] = {"codec": am[1], "sample_rate": int(am[2]), "channels": channels}
    return info


def audio_duration(path: Union[str, os.PathLike]) -> float:
    """Seconds of decoded audio in a media file (0 if it has none)."""
    from .audio import load_audio

    try:
        return load_audio(path).duration
    except InputError:
        return 0.0


def probe_json(path) -> str:
    return json.dumps(probe(path), indent=2)
