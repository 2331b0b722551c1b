"""Audio -> per-video-frame speech features for the audio-to-motion models.

``compute_embeddings(audio, encoder=..., chunking=...)`` is the one entry point: it takes
ComfyUI's AUDIO, a :class:`core.audio.Audio` or 16 kHz samples, downmixes and resamples with
:mod:`core.audio` (soxr, as librosa), checks the audio, runs an encoder from :data:`ENCODERS`
with a chunking from :data:`CHUNKINGS`, and returns :class:`AudioEmbeddings` at 25 fps with
``num_frames = ceil(seconds * 25)``. Models check what they got with :func:`check_spec`.

Limits: audio longer than :data:`MAX_MINUTES` minutes (default 30; HuBERT-large runs at about
0.5 s per audio second on a 2-core CPU, see ``bench/results_motion_cpu_2core.json``) is refused
unless ``max_minutes`` is raised or None;
empty audio and silent audio (peak below -80 dBFS) are refused (``allow_silent=True`` accepts
silence).

Each motion family's own audio front end is a module here (:mod:`.ditto`: Ditto's chunking,
:mod:`.joyvasa`: JoyVASA's windows and features); the encoders they share are in :mod:`.encoders`.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Union

import numpy as np
import torch

from .. import audio as A
from ..errors import InputError
from . import ditto, joyvasa
from .ditto import DittoOnlineFeatures, ditto_offline_features, ditto_online_features, num_video_frames
from .embeddings import AudioEmbeddings, check_spec
from .encoders import (CHUNKINGS, DITTO_ONNX_NAME, ENCODERS, HUBERT_NAME, LAST, ChunkingInfo, EncoderInfo,
                       HubertEncoder, MissingDependencyError, OnnxEncoder, build_hubert, chunking_info, encoder_info,
                       get_encoder, hubert_files, layer_name, list_chunkings, list_encoders, register_chunking,
                       register_encoder)

#: longest audio accepted by default, in minutes (``max_minutes=None`` lifts it)
MAX_MINUTES = 30.0

#: what Ditto's motion model needs (either chunking; the ONNX and the PyTorch HuBERT are meant to
#: give the same features, see README)
DITTO_EXPECTED = {"encoder": (HUBERT_NAME, DITTO_ONNX_NAME), "layer": (LAST, "onnx-output"),
                  "chunking": ("ditto-offline", "ditto-online"), "dim": 1024, "sample_rate": 16000, "fps": 25.0}

AudioLike = Union[A.Audio, Mapping, torch.Tensor, np.ndarray]


def to_audio(audio: AudioLike, sample_rate: int = 16000) -> A.Audio:
    """AUDIO dict / Audio / samples (``[T]`` or ``[C, T]`` at ``sample_rate``) -> :class:`Audio`."""
    if isinstance(audio, A.Audio):
        return audio
    if isinstance(audio, Mapping):
        return A.from_comfy(audio)
    if isinstance(audio, (torch.Tensor, np.ndarray)):
        return A.Audio(torch.as_tensor(audio), sample_rate)
    raise InputError(f"expected audio (an AUDIO input, Audio or a waveform tensor), got {type(audio).__name__}")


def _frames(num_samples: int, fps: float, sample_rate: int) -> int:
    """``ceil(num_samples * fps / sample_rate)`` exactly for rational rates."""
    from fractions import Fraction

    q = Fraction(int(num_samples)) * Fraction(fps).limit_denominator(1000) / int(sample_rate)
    return int(-(-q.numerator // q.denominator))


def compute_embeddings(audio: AudioLike, encoder: Union[str, Callable] = HUBERT_NAME,
                       chunking: str = "ditto-offline", device="auto", precision="auto",
                       progress: Optional[Callable[..., None]] = None, *,
                       layer: Union[str, int, None] = LAST, model_path=None, download: bool = True,
                       batch_size: int = ditto.DEFAULT_BATCH, max_minutes: Optional[float] = MAX_MINUTES,
                       allow_silent: bool = False, envelope: bool = True) -> AudioEmbeddings:
    """Speech features of ``audio`` for the audio-to-motion models.

    * ``encoder``: a name in :data:`ENCODERS` (``"hubert-large-ls960-ft"``, ``"ditto-onnx"``) or an
      already built encoder callable (``chunks [N, S] -> [N, F, D]`` with ``name``/``dim``).
    * ``chunking``: a name in :data:`CHUNKINGS` (``"ditto-offline"``, ``"ditto-online"``).
    * ``layer``: ``"last_hidden_state"`` or ``"hidden_states[i]"`` (HuBERT).
    * ``model_path``: explicit model folder/file instead of the weights manager.
    * ``batch_size``: chunks per encoder call (memory stays bounded for long audio).
    * ``progress(done, total)``: per chunk batch; cancelling goes through it (:mod:`core.progress`).
    """
    chunk = chunking_info(chunking)
    if isinstance(encoder, str):
        enc_info = encoder_info(encoder)
        if enc_info.sample_rate != chunk.sample_rate:
            raise InputError(f"encoder {encoder!r} works at {enc_info.sample_rate} Hz but chunking {chunking!r} "
                             f"at {chunk.sample_rate} Hz; choose a matching pair")

    src = to_audio(audio, chunk.sample_rate)
    if src.num_samples == 0:
        raise InputError("the audio is empty (0 samples): there is no speech to animate")
    if max_minutes is not None and src.duration > max_minutes * 60:
        raise InputError(f"the audio is {src.duration / 60:.1f} minutes long; the limit is {max_minutes:g} minutes "
                         f"(about {max_minutes * 60 * 0.5 / 60:.0f} minutes of CPU time for HuBERT-large). "
                         f"Trim or split it, or raise the limit (max_minutes).")
    if not allow_silent and src.is_silent():
        raise InputError("the audio is silent (peak below -80 dBFS): there is no speech to animate. "
                         "Check the recording (muted, the wrong channel, or the wrong file?).")
    mono = A.prepare(src, sample_rate=chunk.sample_rate, mono=True)
    samples = mono.waveform[0]

    if isinstance(encoder, str):
        options = {"layer": layer, "download": download}
        if model_path is not None:
            options["path"] = model_path
        enc = get_encoder(encoder, device=device, precision=precision, **options)
    elif callable(encoder):
        enc = encoder
    else:
        raise InputError(f"encoder must be a name ({', '.join(ENCODERS)}) or a callable")
    enc_rate = int(getattr(enc, "sample_rate", chunk.sample_rate))
    if enc_rate != chunk.sample_rate:
        raise InputError(f"the encoder works at {enc_rate} Hz but chunking {chunking!r} at {chunk.sample_rate} Hz")

    out = chunk.run(samples, enc, batch_size=batch_size, progress=progress)
    feats, num_frames = (out if isinstance(out, tuple) else (out, None))
    if num_frames is None:
        num_frames = _frames(samples.numel(), chunk.fps, chunk.sample_rate)
    num_frames = min(int(num_frames), int(feats.shape[0]))

    spec = {"encoder": getattr(enc, "name", "custom"), "layer": getattr(enc, "layer", layer_name(layer)),
            "chunking": chunk.name, "dim": int(feats.shape[1]), "sample_rate": chunk.sample_rate}
    extra = getattr(enc, "spec", None)
    if isinstance(extra, Mapping):
        spec.update({k: v for k, v in extra.items() if k not in spec})
    spec.update({k: v for k, v in chunk.extra.items() if k not in spec})

    env = None
    if envelope:
        env = A.energy_envelope(mono, chunk.fps)
        if env.numel() < num_frames:
            env = torch.cat([env, torch.zeros(num_frames - env.numel())])
        env = env[:num_frames]
    return AudioEmbeddings(features=feats, spec=spec, fps=chunk.fps, num_frames=num_frames, envelope=env,
                           audio_samples=int(samples.numel()))


__all__ = ["AudioEmbeddings", "CHUNKINGS", "ChunkingInfo", "DITTO_EXPECTED", "DittoOnlineFeatures", "ENCODERS",
           "EncoderInfo", "HubertEncoder", "MAX_MINUTES", "MissingDependencyError", "OnnxEncoder", "build_hubert",
           "check_spec", "chunking_info", "compute_embeddings", "ditto", "ditto_offline_features",
           "ditto_online_features", "encoder_info", "get_encoder", "hubert_files", "joyvasa", "list_chunkings",
           "list_encoders", "num_video_frames", "register_chunking", "register_encoder", "to_audio"]
