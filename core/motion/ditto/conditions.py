"""Ditto's per-frame conditions (official ``condition_handler.py`` and ``core/utils/eye_info.py``).

``cond`` (1103) = ``[hubert 1024 | emo 8 | eye_open 2 | eye_ball 6 | sc 63]`` per frame:

* ``emo`` (order :data:`EMOTIONS`): a label ``l`` -> ``softmax(8 * onehot(l))`` (4 = Neutral is the
  default); several labels -> 8 at each; an (m, 8) array is a per-frame track read at
  ``max(frame, 0) % m``; a list of label lists is such a track too.
* ``eye_open`` (2) / ``eye_ball`` (6) from MediaPipe's 478 face landmarks of the source crop
  (:func:`eye_features`); several source frames (a video source) are read with a mirrored index.
* ``sc`` (63): the source's canonical keypoints (motion-extractor ``kp``).

The ``use_*`` flags of the cfg may drop parts (the checkpoint's condition width must then match).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch

from ...errors import InputError

EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise", "Contempt")
NEUTRAL = 4
AUDIO_DIM = 1024
EMO_DIM, EYE_OPEN_DIM, EYE_BALL_DIM, SC_DIM = 8, 2, 6, 63

# MediaPipe 478-point indices (left / right eye: corners outer/inner, three lid pairs, iris centre)
_L_CORNERS, _R_CORNERS = (33, 133), (263, 362)
_L_LIDS, _R_LIDS = ((145, 159), (144, 160), (153, 158)), ((374, 386), (373, 387), (380, 385))
_L_IRIS, _R_IRIS = 468, 473
_EPS = 1e-8


# --------------------------------------------------------------------------- emotion
def emotion_index(label: Union[int, str]) -> int:
    if isinstance(label, str):
        names = [e.lower() for e in EMOTIONS]
        if label.strip().lower() not in names:
            raise InputError(f"unknown emotion {label!r}; one of {', '.join(EMOTIONS)}")
        return names.index(label.strip().lower())
    idx = int(label)
    if not 0 <= idx < EMO_DIM:
        raise InputError(f"emotion label must be 0..7 ({', '.join(EMOTIONS)}), got {label}")
    return idx


def emo_vector(labels: Union[int, str, Sequence[Union[int, str]]] = NEUTRAL) -> torch.Tensor:
    """(8,) float32 ``softmax(8 * onehot)`` over one label or several (8 at each)."""
    if isinstance(labels, (int, str, np.integer)):
        labels = [labels]
    logits = torch.zeros(EMO_DIM, dtype=torch.float32)
    for lab in labels:
        logits[emotion_index(lab)] = 8
    return torch.softmax(logits, dim=0)


def emo_track(emo) -> torch.Tensor:
    """Any accepted ``emo`` -> (m, 8) float32 track (m = 1 for a constant emotion).

    Accepts a label / name, a list of labels (mixed), a list of label lists (one entry per frame),
    or an (m, 8) / (8,) array of probabilities."""
    if emo is None:
        emo = NEUTRAL
    if isinstance(emo, (torch.Tensor, np.ndarray)):
        arr = torch.as_tensor(np.asarray(emo) if isinstance(emo, np.ndarray) else emo).float()
        if arr.ndim == 0:
            return emo_vector(int(arr))[None]
        if arr.shape[-1] != EMO_DIM:
            raise InputError(f"an emotion track needs 8 columns ({', '.join(EMOTIONS)}), got {tuple(arr.shape)}")
        return arr.reshape(-1, EMO_DIM)
    if isinstance(emo, (list, tuple)) and emo and isinstance(emo[0], (list, tuple)):
        return torch.stack([emo_vector(list(e)) for e in emo])
    return emo_vector(emo)[None]


def track_rows(track: torch.Tensor, start: int, n: int, mirror: bool = False) -> torch.Tensor:
    """Rows for frames ``start .. start+n-1`` of a per-frame track: ``max(i, 0) % m``
    (or the mirrored index for source-frame tracks)."""
    m = track.shape[0]
    idx = []
    for i in range(start, start + n):
        i = max(i, 0)
        if mirror:
            turn, res = divmod(i, m)
            idx.append(res if turn % 2 == 0 else m - res - 1)
        else:
            idx.append(i % m)
    return track[torch.tensor(idx, dtype=torch.long)]


# --------------------------------------------------------------------------- eyes
def eye_features(lmk478) -> Tuple[torch.Tensor, torch.Tensor]:
    """MediaPipe landmarks (n, 478, 3) (normalised x, y, z; (478, 3) also accepted) of the 512 source
    crop -> ``eye_open`` (n, 2) and ``eye_ball`` (n, 6).

    ``open = (|145-159| + |144-160| + |153-158|) / (|33-133| + 1e-8)`` (left; right with 374/386,
    373/387, 380/385, 263/362), 3-D distances. ``ball_move = (dir(iris - centre) - dir(outer - inner))
    * |iris - centre|`` with ``dir(v) = v / (|v| + 1e-8)``, centre = middle of the corners, iris 468 / 473;
    layout ``[x_L, x_R, y_L, y_R, z_L, z_R]``. Computed in the landmarks' float precision."""
    lmk = torch.as_tensor(lmk478)
    if not lmk.is_floating_point():
        lmk = lmk.float()
    if lmk.ndim == 2:
        lmk = lmk[None]
    if lmk.ndim != 3 or lmk.shape[1] < 478 or lmk.shape[2] < 2:
        raise InputError(f"eye features need (n, 478, 3) MediaPipe landmarks, got {tuple(lmk.shape)}")

    def dist(a, b):
        return ((a - b) ** 2).sum(-1) ** 0.5

    def direc(a, b):
        return (a - b) / (dist(a, b)[:, None] + _EPS)

    def one(corners, lids, iris):
        outer, inner = lmk[:, corners[0]], lmk[:, corners[1]]
        width = dist(outer, inner)
        opening = (dist(lmk[:, lids[0][0]], lmk[:, lids[0][1]]) + dist(lmk[:, lids[1][0]], lmk[:, lids[1][1]])
                   + dist(lmk[:, lids[2][0]], lmk[:, lids[2][1]])) / (width + _EPS)
        centre = (outer + inner) * 0.5
        ball = lmk[:, iris]
        move = (direc(ball, centre) - direc(outer, inner)) * dist(ball, centre)[:, None]
        return opening, move

    lo, lm = one(_L_CORNERS, _L_LIDS, _L_IRIS)
    ro, rm = one(_R_CORNERS, _R_LIDS, _R_IRIS)
    eye_open = torch.stack([lo, ro], -1)
    eye_ball = torch.stack([lm, rm], -1).reshape(lmk.shape[0], -1)
    return eye_open, eye_ball


# --------------------------------------------------------------------------- assembly
class Conditions:
    """Everything in ``cond`` except the audio features, for one source.

    ``emo`` as :func:`emo_track`; ``eye_open`` (n, 2) / ``eye_ball`` (n, 6) (one row for an image
    source); ``sc`` (63,) canonical keypoints. :meth:`__call__` builds ``cond`` rows for audio
    features starting at timeline frame ``start`` (negative = the online silence buffer).
    """

    def __init__(self, emo=NEUTRAL, eye_open=None, eye_ball=None, sc=None, use_emo: bool = True,
                 use_eye_open: bool = True, use_eye_ball: bool = True, use_sc: bool = True):
        self.use_emo, self.use_eye_open, self.use_eye_ball, self.use_sc = use_emo, use_eye_open, use_eye_ball, use_sc
        self.emo = emo_track(emo) if use_emo else None
        self.eye_open = _rows(eye_open, EYE_OPEN_DIM, "eye_open") if use_eye_open else None
        self.eye_ball = _rows(eye_ball, EYE_BALL_DIM, "eye_ball") if use_eye_ball else None
        self.sc = _rows(sc, SC_DIM, "sc")[:1] if use_sc else None

    @property
    def dim(self) -> int:
        return AUDIO_DIM + EMO_DIM * self.use_emo + EYE_OPEN_DIM * self.use_eye_open + \
            EYE_BALL_DIM * self.use_eye_ball + SC_DIM * self.use_sc

    @classmethod
    def from_extra(cls, cond_extra) -> "Conditions":
        """From a fixed (79,) ``[emo | eye_open | eye_ball | sc]`` vector."""
        v = torch.as_tensor(cond_extra).float().reshape(-1)
        if v.numel() != 79:
            raise InputError(f"cond_extra must have 79 values (emo 8, eye_open 2, eye_ball 6, sc 63), got {v.numel()}")
        return cls(emo=v[:8][None], eye_open=v[8:10], eye_ball=v[10:16], sc=v[16:])

    def extra(self, start: int, n: int) -> torch.Tensor:
        """(n, dim - 1024) rows for frames ``start .. start+n-1``."""
        parts = []
        if self.use_emo:
            parts.append(track_rows(self.emo, start, n))
        for use, rows in ((self.use_eye_open, self.eye_open), (self.use_eye_ball, self.eye_ball)):
            if use:
                parts.append(rows.expand(n, -1) if rows.shape[0] == 1 else track_rows(rows, start, n, mirror=True))
        if self.use_sc:
            parts.append(self.sc.expand(n, -1))
        return torch.cat(parts, -1) if parts else torch.zeros(n, 0)

    def __call__(self, features: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(n, 1024) audio features -> (n, dim) cond rows."""
        feats = torch.as_tensor(features).float()
        if feats.ndim != 2 or feats.shape[1] != AUDIO_DIM:
            raise InputError(f"audio features must be (frames, {AUDIO_DIM}), got {tuple(feats.shape)}")
        return torch.cat([feats, self.extra(start, feats.shape[0])], -1)


def _rows(value, dim: int, name: str) -> torch.Tensor:
    if value is None:
        raise InputError(f"the Ditto condition needs '{name}' ({dim} values per frame)")
    v = torch.as_tensor(np.asarray(value) if isinstance(value, np.ndarray) else value).float()
    if v.numel() % dim:
        raise InputError(f"'{name}' must have {dim} values per frame, got shape {tuple(v.shape)}")
    return v.reshape(-1, dim)


__all__ = ["AUDIO_DIM", "Conditions", "EMOTIONS", "NEUTRAL", "emo_track", "emo_vector", "emotion_index",
           "eye_features", "track_rows"]
