"""SDA inference: a face image + speech -> a talking-head clip, streamed in chunks of frames.

The official ``VideoAnimator.__call__`` builds every audio window with repeated ``torch.cat``
(quadratic in the clip length) and runs the whole clip as one batch. Here the result is the same
(to float tolerance) while time is linear and memory is bounded by ``chunk_frames``:

* the padded speech is held once; the windows are a strided view of it
  (as :func:`.preprocess.audio_windows`) and only one chunk of them is materialised at a time;
* the per-window audio CNN and the generator run chunk by chunk;
* the audio GRU and the noise GRU carry their hidden states from chunk to chunk, which is exactly
  the one-pass recurrence (up to float rounding: torch's CPU GRU projects a chunk's inputs with one
  matmul whose blocking depends on the chunk length, ~1e-6 on the frames);
* the noise ``[1, T, aux_latent]`` ~ N(0, 0.33) is drawn at once, frame-major like the reference's
  ``torch.FloatTensor(1, T, aux).normal_(0, 0.33)`` (a torch CPU generator seeded with ``seed``,
  so ``torch.manual_seed(seed)`` before the official call draws the same numbers). It is tiny
  (10 floats a frame: 600 kB for 10 minutes). Drawing it chunk by chunk would NOT give the same
  numbers: torch's CPU ``normal_`` fills tensors of 16+ elements with a vectorised Box-Muller
  whose pairing depends on the tensor size.

Output scales (``output=``)
    ``"unit"`` (default): ``[n, H, W, 3]`` float 0..1 = the official ``125 * out + 125`` divided by
    255, i.e. exactly the brightness of the official saved video (its peak is 250/255);
    ``"reference"``: the official values ``125 * out + 125`` (0..250) in HWC layout (the official
    array is ``[T, 3, H, W]``); ``"raw"``: the generator's tanh output in -1..1.
"""
from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, List, Optional, Union

import numpy as np
import torch

from ..audio import Audio
from ..errors import InputError
from ..frames import FrameStream
from ..progress import Progress, ProgressFn
from .model import SDAConfig, SDAModel
from .preprocess import (LandmarkFn, align_face, as_uint8_rgb, find_landmarks, frame_tensor, num_frames,
                         pad_speech, returned_audio, speech_from_audio)

OUTPUTS = ("unit", "reference", "raw")
DEFAULT_CHUNK_FRAMES = 128
NOISE_STD = 0.33
#: the model for one pull of a :func:`frame_stream`: the model itself, or a function returning a context
#: manager that gives it (and may free it when the pull ends)
ModelSource = Union[SDAModel, Callable[[], ContextManager[SDAModel]]]


@dataclass
class SDAInputs:
    """What the networks get: the prepared face, speech, and noise."""

    face: np.ndarray                  # uint8 [h, w, 3]: the aligned face (or the given one when aligned=True)
    frame: torch.Tensor               # [1, 3, H, W] float32 in -1..1 (img_transform of ``face``)
    padded_speech: torch.Tensor       # [pad // 2 + L + pad - pad // 2] float32: the speech with its framing zeros
    speech: torch.Tensor              # [L] float32 at the model's audio_rate (a view into padded_speech)
    num_frames: int                   # T
    noise: torch.Tensor               # [1, T, aux_latent] float32
    seed: Optional[int]               # the noise seed (None when the noise was given)
    landmarks: Optional[np.ndarray]   # [68, 2] used for the alignment (None when aligned=True)


def draw_noise(num_frames: int, aux_latent: int, seed: int) -> torch.Tensor:
    """``[1, T, aux_latent]`` ~ N(0, 0.33) from a CPU generator seeded with ``seed`` - the same
    numbers as the official draw after ``torch.manual_seed(seed)``."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.empty(1, int(num_frames), int(aux_latent)).normal_(0, NOISE_STD, generator=g)


def prepare(model: SDAModel, face_image, audio, *, fs: Optional[int] = None, seed: Optional[int] = None,
            noise=None, aligned: bool = False, landmarks=None,
            landmark_fn: Optional[LandmarkFn] = None) -> SDAInputs:
    """Align the face (unless ``aligned``), transform it, convert the speech, draw the noise.

    ``landmarks``: the face's ``[68, 2]`` (x, y) landmarks, as face-alignment gives them; without
    them (and not ``aligned``) they are detected with ``landmark_fn`` (default
    :func:`.preprocess.face_alignment_landmarks`). No face -> :class:`InputError` naming the
    alternatives (an already-aligned face, or another image)."""
    cfg = model.config
    img = as_uint8_rgb(face_image, "face image")
    pts = None
    if aligned:
        face = img
    else:
        if model.mean_face is None:
            raise InputError("this SDA model has no mean_face template, so it cannot align faces; "
                             "give an already-aligned face (aligned=True)")
        pts = np.asarray(landmarks) if landmarks is not None else find_landmarks(img, landmark_fn)
        face = align_face(img, pts, model.mean_face, cfg.img_size)
    frame = frame_tensor(face, cfg.img_size)
    speech = speech_from_audio(audio, cfg.audio_rate, fs)
    length = speech.numel()
    t = num_frames(length, cfg)
    if t < 1:
        raise InputError(f"the audio is too short for one video frame ({length / cfg.audio_rate:.3f} s)")
    padded = pad_speech(speech, cfg)  # the one padded copy; the speech itself is kept as a view of it
    del speech
    speech = padded[cfg.audio_seq_padding // 2: cfg.audio_seq_padding // 2 + length]
    if noise is not None:
        nz = torch.as_tensor(np.asarray(noise) if not isinstance(noise, torch.Tensor) else noise)
        nz = nz.detach().to("cpu", torch.float32)
        if nz.dim() == 2:
            nz = nz[None]
        if tuple(nz.shape) != (1, t, cfg.aux_latent):
            raise InputError(f"the noise must be [1, {t}, {cfg.aux_latent}] for this audio, got {tuple(nz.shape)}")
        used_seed = None
    else:
        used_seed = int(seed) if seed is not None else secrets.randbits(63)
        nz = draw_noise(t, cfg.aux_latent, used_seed)
    return SDAInputs(face=face, frame=frame, padded_speech=padded, speech=speech, num_frames=t, noise=nz,
                     seed=used_seed, landmarks=pts)


def _convert(gen_out: torch.Tensor, output: str) -> torch.Tensor:
    """Generator output ``[n, 3, H, W]`` -> ``[n, H, W, 3]`` float32 CPU in the asked scale."""
    x = gen_out.detach().to("cpu", torch.float32)
    if output != "raw":
        x = 125 * x + 125  # the official scaling (float32, same operations)
        if output == "unit":
            x = x / 255.0
    return x.permute(0, 2, 3, 1).contiguous()


class SDAStream:
    """An iterable of ``[n, H, W, 3]`` frame chunks (n <= ``chunk_frames``); ``len()`` = chunks.

    Also: ``num_frames``, ``fps``, ``inputs`` (:class:`SDAInputs`), ``audio`` (the speech the
    frames follow, an :class:`~core.audio.Audio` at the model's rate, clipped to -1..1) and
    ``audio_i16`` (the official returned int16 audio ``[L, 1]``). Iterating again restarts the
    clip from the start (same noise, same frames).
    """

    def __init__(self, model: SDAModel, inputs: SDAInputs, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                 output: str = "unit", progress: Optional[ProgressFn] = None) -> None:
        if output not in OUTPUTS:
            raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")
        if int(chunk_frames) < 1:
            raise InputError(f"chunk_frames must be at least 1, got {chunk_frames}")
        self.model, self.inputs = model, inputs
        self.chunk_frames, self.output, self.progress = int(chunk_frames), output, progress

    @property
    def num_frames(self) -> int:
        return self.inputs.num_frames

    @property
    def fps(self) -> int:
        return self.model.config.video_rate

    @property
    def frame_size(self):
        return tuple(self.model.config.img_size)

    @property
    def audio(self) -> Audio:
        speech = self.inputs.speech  # never empty: prepare() refuses speech shorter than one frame
        low, high = torch.aminmax(speech)
        if low >= -1.0 and high <= 1.0:  # nothing to clip: the speech itself (no copy of a long track)
            return Audio(speech[None], self.model.config.audio_rate)
        return Audio(speech.clamp(-1.0, 1.0)[None], self.model.config.audio_rate)

    @property
    def audio_i16(self) -> np.ndarray:
        return returned_audio(self.inputs.speech)

    def __len__(self) -> int:
        return -(-self.num_frames // self.chunk_frames)

    def __iter__(self) -> Iterator[torch.Tensor]:
        model, inp = self.model, self.inputs
        dev, dtype = model.device, model.dtype
        cfg = model.config
        # _cut_sequence_'s windows as a strided view of the padded speech (no copy)
        windows = inp.padded_speech.unfold(0, cfg.audio_feat_samples, cfg.cutting_stride)
        bar = Progress(self.num_frames, self.progress)
        with torch.inference_mode():
            z_id, skips = model.encoder_id(inp.frame.to(dev, dtype))
            skips: List[torch.Tensor] = skips[::-1]  # deepest first, as VideoAnimator reverses them
            skip_terms = model.generator.skip_terms(skips)  # the same for every chunk
        h_audio = h_noise = None
        for t0 in range(0, self.num_frames, self.chunk_frames):
            t1 = min(t0 + self.chunk_frames, self.num_frames)
            with torch.inference_mode():
                win = windows[t0:t1].to(dev, dtype)  # the only copy of these windows
                z, h_audio = model.encoder(win[None], h_audio)
                aux, h_noise = model.generator.noise_codes(inp.noise[:, t0:t1].to(dev, dtype), h_noise)
                n = t1 - t0
                latent = torch.cat([z, aux, z_id[:, None, :].expand(1, n, -1)], dim=2)
                frames = _convert(model.generator.decode(latent[0], skips, skip_terms), self.output)
            bar.step(t1 - t0)
            yield frames


def animate_stream(model: SDAModel, face_image, audio, seed: Optional[int] = None, noise=None,
                   aligned: bool = False, landmarks=None, chunk_frames: int = DEFAULT_CHUNK_FRAMES, *,
                   fs: Optional[int] = None, landmark_fn: Optional[LandmarkFn] = None, output: str = "unit",
                   progress: Optional[ProgressFn] = None) -> SDAStream:
    """Prepare the inputs now (errors such as "no face" are raised here) and return the
    :class:`SDAStream` that generates the frames chunk by chunk.

    ``face_image``: uint8 ``[H, W, 3]`` (the official input), a float image in 0..1 or a
    one-image IMAGE batch. ``audio``: :class:`~core.audio.Audio`, a ComfyUI AUDIO, or samples
    with ``fs`` (see :func:`.preprocess.speech_from_audio`). ``seed`` / ``noise``: the noise
    (``noise`` ``[1, T, aux_latent]`` wins; no seed -> a random one, kept in ``inputs.seed``).
    ``aligned``: the face is already aligned (only resized). ``landmarks`` / ``landmark_fn``:
    see :func:`prepare`."""
    inputs = prepare(model, face_image, audio, fs=fs, seed=seed, noise=noise, aligned=aligned,
                     landmarks=landmarks, landmark_fn=landmark_fn)
    return SDAStream(model, inputs, chunk_frames, output, progress)


def frame_stream(model: ModelSource, inputs: SDAInputs, chunk_frames: int = DEFAULT_CHUNK_FRAMES, *,
                 config: Optional[SDAConfig] = None, output: str = "unit", progress: Optional[ProgressFn] = None,
                 label: str = "SDA's frames") -> FrameStream:
    """The clip of :func:`prepare`'s ``inputs`` as a :class:`~core.frames.FrameStream` of ``[n, H, W, 3]``
    chunks (n <= ``chunk_frames``) at the model's frame rate. Nothing is generated now: each pull runs
    :class:`SDAStream` from the first chunk, with the same inputs and noise, so every pull gives the same
    frames, equal bit for bit to :func:`animate`'s for the same ``chunk_frames``.

    ``model``: the :class:`SDAModel`, or a zero-argument function returning a context manager that gives the
    model for the length of one pull (e.g. loading it through the model cache and freeing it after, so a stream
    pulled long after it was made still finds its model); then ``config`` (the model's :class:`SDAConfig`) gives
    the frame size and rate up front. ``progress(done, total)`` is called per chunk of every pull."""
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")
    if int(chunk_frames) < 1:
        raise InputError(f"chunk_frames must be at least 1, got {chunk_frames}")
    if isinstance(model, SDAModel):
        held = model
        config = model.config
        open_model: Callable[[], ContextManager[SDAModel]] = lambda: contextlib.nullcontext(held)  # noqa: E731
    else:
        if config is None:
            raise ValueError("frame_stream needs the model's config when the model is loaded at pull time")
        open_model = model
    h, w = config.img_size

    def source() -> Iterator[torch.Tensor]:
        with open_model() as loaded:
            yield from SDAStream(loaded, inputs, chunk_frames, output, progress)

    return FrameStream(source, inputs.num_frames, int(h), int(w), float(config.video_rate), label)


@dataclass
class SDAResult:
    frames: torch.Tensor      # [T, H, W, 3] float32 CPU in the ``output`` scale
    output: str               # "unit" | "reference" | "raw"
    audio: Audio              # the speech at the model's audio_rate (clipped to -1..1)
    audio_i16: np.ndarray     # [L, 1] int16: the official returned audio
    fps: int
    inputs: SDAInputs

    def reference_video(self) -> torch.Tensor:
        """The official ``gen_video`` layout ``[T, 3, H, W]`` on the 0..250 scale (bit-exact for
        ``output="reference"``; from "unit" / "raw" up to float rounding)."""
        f = self.frames.permute(0, 3, 1, 2)
        if self.output == "unit":
            return f * 255.0
        return 125 * f + 125 if self.output == "raw" else f.clone()


def animate(model: SDAModel, face_image, audio, seed: Optional[int] = None, noise=None, aligned: bool = False,
            landmarks=None, chunk_frames: int = DEFAULT_CHUNK_FRAMES, *, fs: Optional[int] = None,
            landmark_fn: Optional[LandmarkFn] = None, output: str = "unit",
            progress: Optional[ProgressFn] = None) -> SDAResult:
    """The whole clip: :func:`animate_stream` collected into ``[T, H, W, 3]``."""
    stream = animate_stream(model, face_image, audio, seed=seed, noise=noise, aligned=aligned, landmarks=landmarks,
                            chunk_frames=chunk_frames, fs=fs, landmark_fn=landmark_fn, output=output,
                            progress=progress)
    h, w = stream.frame_size
    frames = torch.empty(stream.num_frames, h, w, 3, dtype=torch.float32)
    t = 0
    for chunk in stream:
        frames[t:t + chunk.shape[0]] = chunk
        t += chunk.shape[0]
    return SDAResult(frames=frames, output=output, audio=stream.audio, audio_i16=stream.audio_i16, fps=stream.fps,
                     inputs=stream.inputs)


__all__ = ["DEFAULT_CHUNK_FRAMES", "ModelSource", "OUTPUTS", "SDAInputs", "SDAResult", "SDAStream", "animate",
           "animate_stream", "draw_noise", "frame_stream", "prepare"]
