"""The audio-feature container passed from AudioToEmbedding to the audio-to-motion models,
and the check that a model gets the features it was trained on.

:class:`AudioEmbeddings` holds per-video-frame feature vectors plus a ``spec`` that says how
they were made (encoder, layer, chunking, dim, sample rate). A motion model states what it
needs as a small dict and calls :func:`check_spec`; a mismatch is an :class:`InputError` that
tells the user which AudioToEmbedding setting to change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import torch

from ..errors import InputError

#: spec keys -> the AudioToEmbedding setting that controls them (used in error messages)
SETTING_FOR_KEY = {
    "encoder": "encoder",
    "layer": "layer",
    "chunking": "chunking",
    "dim": "encoder",
    "sample_rate": "encoder",
    "fps": "chunking",
}


@dataclass
class AudioEmbeddings:
    """Audio features aligned to video frames.

    * ``features``: ``[T, D]`` float32 on the CPU, row ``n`` = video frame ``n`` at ``fps``.
    * ``spec``: how they were made, e.g. ``{"encoder": "hubert-large-ls960-ft", "layer":
      "last_hidden_state", "chunking": "ditto-offline", "dim": 1024, "sample_rate": 16000}``.
    * ``num_frames``: video frames the audio covers, ``ceil(seconds * fps)``. ``T >= num_frames``:
      chunkings that work in whole chunks (``ditto-online``) leave a few extra rows computed from
      the zero padding after the audio, which a streaming model may read as look-ahead; row
      ``n < num_frames`` always belongs to video frame ``n`` (see :meth:`aligned`).
    * ``envelope``: optional ``[num_frames]`` loudness per video frame (0..1,
      :func:`core.audio.energy_envelope`) for procedural motion.
    * ``audio_samples``: length of the source audio in samples at ``spec["sample_rate"]``.
    """

    features: torch.Tensor
    spec: Dict[str, Any] = field(default_factory=dict)
    fps: float = 25.0
    num_frames: Optional[int] = None
    envelope: Optional[torch.Tensor] = None
    audio_samples: int = 0

    def __post_init__(self) -> None:
        f = self.features
        if not isinstance(f, torch.Tensor):
            f = torch.as_tensor(f)
        if f.ndim != 2:
            raise InputError(f"audio features must be [frames, dim], got shape {tuple(f.shape)}")
        self.features = f.detach().to("cpu", torch.float32)
        self.fps = float(self.fps)
        self.spec = dict(self.spec)
        self.spec.setdefault("dim", int(f.shape[1]))
        if int(self.spec["dim"]) != f.shape[1]:
            raise InputError(f"audio features have {f.shape[1]} channels but their spec says dim={self.spec['dim']}")
        if self.num_frames is None:
            self.num_frames = int(f.shape[0])
        self.num_frames = int(self.num_frames)
        if not 0 <= self.num_frames <= f.shape[0]:
            raise InputError(f"audio features hold {f.shape[0]} rows, fewer than num_frames={self.num_frames}")
        if self.envelope is not None:
            env = torch.as_tensor(self.envelope).detach().to("cpu", torch.float32).reshape(-1)
            if env.numel() != self.num_frames:
                raise InputError(f"audio envelope has {env.numel()} values for {self.num_frames} frames")
            self.envelope = env

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def sample_rate(self) -> int:
        return int(self.spec.get("sample_rate", 16000))

    @property
    def seconds(self) -> float:
        """Duration of the source audio."""
        return self.audio_samples / float(self.sample_rate) if self.audio_samples else self.num_frames / self.fps

    def aligned(self) -> torch.Tensor:
        """``[num_frames, D]``: exactly one row per video frame."""
        return self.features[: self.num_frames]

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.spec.items()]
        return f"{self.num_frames} frames @ {self.fps:g} fps, " + ", ".join(parts)

    def to_state(self) -> Dict[str, Any]:
        """Plain tensors and values (for saving with safetensors + JSON metadata)."""
        out: Dict[str, Any] = {"features": self.features, "spec": dict(self.spec), "fps": self.fps,
                               "num_frames": self.num_frames, "audio_samples": self.audio_samples}
        if self.envelope is not None:
            out["envelope"] = self.envelope
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "AudioEmbeddings":
        return cls(features=state["features"], spec=dict(state.get("spec", {})), fps=state.get("fps", 25.0),
                   num_frames=state.get("num_frames"), envelope=state.get("envelope"),
                   audio_samples=int(state.get("audio_samples", 0)))


def _accepted(value: Any) -> tuple:
    """An expected spec value may be one value or a tuple/list/set of accepted values."""
    if isinstance(value, (tuple, list, set, frozenset)):
        return tuple(value)
    return (value,)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-6
    return a == b


def _show(values: tuple) -> str:
    return values[0].__repr__() if len(values) == 1 else " or ".join(repr(v) for v in values)


def check_spec(embeddings: Any, expected: Mapping[str, Any], model_name: str) -> AudioEmbeddings:
    """Raise :class:`InputError` unless ``embeddings`` match ``expected``.

    ``expected`` maps spec keys (``encoder``, ``layer``, ``chunking``, ``dim``, ``sample_rate``,
    ``fps``) to the value the model needs, or to a tuple of accepted values. The message says
    what was given, what ``model_name`` needs, and which AudioToEmbedding setting to change.
    Returns the embeddings so it can be used inline.
    """
    if not isinstance(embeddings, AudioEmbeddings):
        raise InputError(f"{model_name} needs audio embeddings from the AudioToEmbedding node, "
                         f"got {type(embeddings).__name__}")
    given = dict(embeddings.spec)
    given.setdefault("fps", embeddings.fps)
    given.setdefault("dim", embeddings.dim)
    wrong = []
    for key, want in expected.items():
        ok = _accepted(want)
        have = given.get(key, "<not set>")
        if not any(_same(have, w) for w in ok):
            wrong.append((key, have, ok))
    # the tensor itself must agree with the dim the model needs
    if "dim" in expected and not any(_same(embeddings.dim, w) for w in _accepted(expected["dim"])) \
            and not any(k == "dim" for k, _, _ in wrong):
        wrong.append(("dim", embeddings.dim, _accepted(expected["dim"])))
    if not wrong:
        return embeddings
    lines = [f"{model_name} cannot use these audio embeddings: they were made with settings it was not trained on."]
    for key, have, ok in wrong:
        lines.append(f"  {key}: given {have!r}, {model_name} needs {_show(ok)}")
    settings = []
    for key, _, ok in wrong:
        setting = SETTING_FOR_KEY.get(key, key)
        if key in ("dim", "sample_rate") and "encoder" in expected:
            ok = _accepted(expected["encoder"])
            setting = "encoder"
        if key == "fps" and "chunking" in expected:
            ok = _accepted(expected["chunking"])
            setting = "chunking"
        text = f"{setting} = {_show(ok)}"
        if text not in settings:
            settings.append(text)
    lines.append("In AudioToEmbedding set " + "; ".join(settings) + f", then run {model_name} again.")
    raise InputError("\n".join(lines))
