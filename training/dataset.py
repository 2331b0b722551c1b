"""The cached clips (one ``.safetensors`` per clip, :data:`~.common.CLIP_FORMAT`) and the training
windows cut from them.

* **Windows** (:class:`MotionDataset`): 80 frames starting at every frame ``s >= 1``;
  ``cond_frame`` = motion of frame ``s - 1``; ``cond`` (1103) = ``[features | emo (window mean) |
  eye_open | eye_ball | sc]`` with ``sc`` = ``kp`` of a random frame of the clip.
* **Order** (:class:`WindowSchedule`): a pure function of ``(seed, step)``, so a resumed run
  reads the same windows as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch.utils.data import Dataset

from ..core.errors import InputError
from ..core.files import atomic_write
from ..core.motion.ditto.compose import MOTION_DIM
from ..core.motion.ditto.conditions import AUDIO_DIM, EMO_DIM, NEUTRAL, SC_DIM, emo_vector
from .common import CLIP_FORMAT, CLIP_VERSION, COND_DIM, EYE_DIM, NEUTRAL_EYE, SEQ_FRAMES, PathLike, generator, \
    mix_seed

CLIP_KEYS = ("motion", "kp", "features", "emo", "eye")


def clip_is_complete(path: Path) -> bool:
    """Whether ``path`` is a whole cached clip (a readable file of :data:`~.common.CLIP_FORMAT`)."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = set(fh.keys())
        return meta.get("format") == CLIP_FORMAT and set(CLIP_KEYS) <= keys
    except Exception:
        return False


def list_clips(paths) -> List[Path]:
    """Cached clip files from files and folders (``*.safetensors`` written by ``build_dataset``)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(f for f in sorted(p.glob("*.safetensors")) if clip_is_complete(f))
        elif p.is_file():
            if not clip_is_complete(p):
                raise InputError(f"{p} is not a training clip written by build_dataset ({CLIP_FORMAT})")
            out.append(p)
        else:
            raise InputError(f"training data not found: {p}")
    return out


def save_clip(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write one clip file atomically (nothing half-written is ever found under ``path``)."""
    from safetensors.torch import save_file

    with atomic_write(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
    return path


def write_clip(path: PathLike, motion, kp, features, emo=None, eye=None, fps: float = 25.0,
               metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write one cached clip directly (tests, or data made elsewhere): ``motion`` [T, 265], ``kp``
    [T, 63], ``features`` [T, 1024], ``emo`` [T, 8] (default neutral), ``eye`` [T, 8] (default neutral)."""
    motion = torch.as_tensor(motion).float()
    n = motion.shape[0]
    emo = emo_vector(NEUTRAL).expand(n, -1) if emo is None else torch.as_tensor(emo).float()
    eye = torch.tensor(NEUTRAL_EYE).expand(n, -1) if eye is None else torch.as_tensor(eye).float()
    t = {"motion": motion, "kp": torch.as_tensor(kp).float().reshape(n, SC_DIM),
         "features": torch.as_tensor(features).float().reshape(n, AUDIO_DIM),
         "emo": emo.reshape(n, EMO_DIM), "eye": eye.reshape(n, EYE_DIM), "fps": torch.tensor([float(fps)])}
    if motion.shape != (n, MOTION_DIM):
        raise InputError(f"motion must be [T, {MOTION_DIM}], got {tuple(motion.shape)}")
    t = {k: v.contiguous() for k, v in t.items()}
    meta = {"format": CLIP_FORMAT, "version": CLIP_VERSION, "fps": f"{fps:g}", "frames": str(n)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    return save_clip(Path(path), t, meta)


class MotionDataset(Dataset):
    """80-frame training windows over cached clips.

    Window ``(clip, s)`` for every ``s >= 1`` with ``s + 80 <= T``: ``x0`` = motion ``[s, s+80)``
    (80, 265), ``cond_frame`` = motion ``s - 1`` (265), ``cond`` (80, 1103) = ``[features | emo mean
    over the window | eye | sc]`` with ``sc`` = ``kp`` of a random frame of the clip.

    An item is an index or ``(index, seed)``; with a seed the random ``sc`` frame is drawn from it
    (reproducible in any worker process). ``preload``: hold every clip in memory (else each item
    reads its slices from the file).

    No flip augmentation here: mirroring a motion vector exactly needs the left/right pairing of
    LivePortrait's 21 implicit keypoints (for ``exp`` and ``kp``), which is not defined; mirrored
    training data is made by running the motion extractor on mirrored frames
    (``build_dataset(..., flip=True)``).
    """

    def __init__(self, clips, seq_frames: int = SEQ_FRAMES, preload: bool = True):
        self.files = list_clips(clips)
        if not self.files:
            raise InputError(f"no training clips found in {clips}")
        self.seq_frames = int(seq_frames)
        self.preload = bool(preload)
        self.cond_dim = COND_DIM
        self.clips: List[Optional[Dict[str, torch.Tensor]]] = []
        self.lengths: List[int] = []
        self.specs: List[Optional[dict]] = []
        self.index: List[Tuple[int, int]] = []
        from safetensors import safe_open

        for ci, f in enumerate(self.files):
            with safe_open(str(f), framework="pt") as fh:
                meta = fh.metadata() or {}
                n = fh.get_slice("motion").get_shape()[0]
                data = {k: fh.get_tensor(k).float() for k in CLIP_KEYS} if self.preload else None
            try:
                self.specs.append(json.loads(meta.get("audio_features", "")))
            except ValueError:
                self.specs.append(None)
            self.clips.append(data)
            self.lengths.append(int(n))
            self.index.extend((ci, s) for s in range(1, int(n) - self.seq_frames + 1))
        if not self.index:
            raise InputError(f"no clip has the {self.seq_frames + 1} frames one training window needs")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_frames(self) -> int:
        return sum(self.lengths)

    def _rows(self, ci: int, key: str, start: int, stop: int) -> torch.Tensor:
        if self.preload:
            return self.clips[ci][key][start:stop]
        from safetensors import safe_open

        with safe_open(str(self.files[ci]), framework="pt") as fh:
            return fh.get_slice(key)[start:stop].float()

    def __getitem__(self, item) -> Dict[str, torch.Tensor]:
        seed = None
        if isinstance(item, (tuple, list)):
            item, seed = item
        ci, s = self.index[int(item)]
        n, L = self.lengths[ci], self.seq_frames
        rng = random.Random(seed) if seed is not None else random
        sc_frame = rng.randrange(n)
        motion = self._rows(ci, "motion", s - 1, s + L)
        emo = self._rows(ci, "emo", s, s + L).mean(0, keepdim=True).expand(L, -1)
        sc = self._rows(ci, "kp", sc_frame, sc_frame + 1).expand(L, -1)
        cond = torch.cat([self._rows(ci, "features", s, s + L), emo, self._rows(ci, "eye", s, s + L), sc], dim=1)
        return {"x0": motion[1:].contiguous(), "cond_frame": motion[0].contiguous(), "cond": cond.contiguous()}


def collate(items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Windows -> one batch (every entry stacked along a new first dimension)."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class WindowSchedule:
    """Which windows step ``k`` trains on: each epoch is a fresh permutation of all windows (drawn
    from ``(seed, epoch)``), read ``batch_size`` at a time across epoch boundaries; every item
    carries its own seed. A pure function of the step, so resuming needs no sampler state."""

    def __init__(self, num_windows: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = int(num_windows), int(batch_size), int(seed)
        self._perm: Dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm:
            self._perm = {epoch: torch.randperm(self.n, generator=generator(self.seed, "epoch", epoch))}
        return self._perm[epoch]

    def batch(self, step: int) -> List[Tuple[int, int]]:
        out = []
        for j in range(self.batch_size):
            k = step * self.batch_size + j
            epoch, pos = divmod(k, self.n)
            out.append((int(self._permutation(epoch)[pos]), mix_seed(self.seed, "item", k)))
        return out

    def from_step(self, step: int) -> Iterator[List[Tuple[int, int]]]:
        while True:
            yield self.batch(step)
            step += 1


__all__ = ["CLIP_KEYS", "MotionDataset", "WindowSchedule", "clip_is_complete", "collate", "list_clips", "save_clip",
           "write_clip"]
