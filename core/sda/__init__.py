"""Speech-Driven Animation (DinoMan/speech-driven-animation, GRID/TIMIT/CREMA models) in plain torch.

Library use::

    from core.sda import load_sda, animate, animate_stream, frame_stream, prepare

    model = load_sda("models/sda/grid.dat", device="cuda")        # or its .safetensors twin
    result = animate(model, face_uint8, audio, seed=0)           # frames [T, 128, 96, 3], 25 fps
    for chunk in animate_stream(model, face_uint8, audio, seed=0, chunk_frames=64):
        ...                                                      # [n, 128, 96, 3] at a time
    stream = frame_stream(model, prepare(model, face_uint8, audio, seed=0))  # a core.frames.FrameStream:
                                                                 # generated anew on each pull

* :mod:`.model` - the networks, built from the file's scalars (:class:`SDAConfig`);
* :mod:`.load` - the official ``.dat`` pickle (no code executed) and the safetensors twin;
* :mod:`.preprocess` - face alignment, frame transform, speech resampling and framing;
* :mod:`.animate` - the chunked, linear-time inference.
"""
from pathlib import Path

import torch

from .. import weights
from ..cache import CACHE, file_key
from ..device import resolve_device
from .animate import (DEFAULT_CHUNK_FRAMES, OUTPUTS, ModelSource, SDAInputs, SDAResult, SDAStream, animate,
                      animate_stream, draw_noise, frame_stream, prepare)
from .load import META_KEY, build_model, convert_to_safetensors, load_sda, read_checkpoint
from .model import SCALAR_KEYS, SDAConfig, SDAModel
from .preprocess import (NO_FACE_MESSAGE, STABLE_POINTS, align_face, audio_windows, face_alignment_landmarks,
                         frame_tensor, num_frames, returned_audio, similarity_transform, speech_from_audio)

FILE_ID = "sda/grid"


def get_sda(checkpoint: str = "grid.dat", device="auto", download: bool = True) -> SDAModel:
    """The checkpoint (a name in the ``sda`` models folder, or the official ``grid.dat``) loaded once
    and cached (``UnloadModels`` family ``sda``)."""
    path = Path(weights.resolve_choice(FILE_ID, checkpoint, download=download))
    dev = resolve_device(device)
    return CACHE.get("sda", file_key(path), lambda: load_sda(path), dev, torch.float32, info={"file": path.name})


__all__ = ["DEFAULT_CHUNK_FRAMES", "FILE_ID", "get_sda", "META_KEY", "ModelSource", "NO_FACE_MESSAGE", "OUTPUTS",
           "SCALAR_KEYS", "STABLE_POINTS", "SDAConfig", "SDAInputs", "SDAModel", "SDAResult", "SDAStream", "align_face",
           "animate", "animate_stream", "audio_windows", "build_model", "convert_to_safetensors", "draw_noise",
           "face_alignment_landmarks", "frame_stream", "frame_tensor", "load_sda", "num_frames", "prepare",
           "read_checkpoint", "returned_audio", "similarity_transform", "speech_from_audio"]
