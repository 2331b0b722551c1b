"""JoyVASA's motion template (``motion_template.pkl``): de-normalisation and pose smoothing.

The template is a plain dict of float32 arrays ``{mean, std, max, min, abs_max}_{scale, R, t, exp,
pitch, yaw, roll, lip, eyes}``; inference reads ``mean_exp``/``std_exp`` and the min/max of
scale, t, pitch, yaw, roll (degrees). A 73-dim normalised motion vector is::

    [exp 63 (z-score) | scale 1 | t 3 | pitch | yaw | roll (min-max to [0, 1]) | 3 unused dims]

De-normalised (float32, as the official per-frame loop): ``exp = m[:63] std + mean``,
``v = m (max - min) + min``. Smoothing (``is_smooth_motion``, default on): an EMA
``y_i = 0.01 x_i + 0.99 y_{i-1}`` (``y_0 = x_0``) over scale, t, pitch, yaw, roll (not exp), in
float32 numpy like the official filter; ``R`` is rebuilt from the angles
(``(Rz(roll) Ry(yaw) Rx(pitch))^T``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Union

import numpy as np
import torch

from ...errors import CheckpointError, InputError
from ...liveportrait import kinematics as K
from ...weights import load_checkpoint, load_pickle

FIELDS = {"exp": 63, "scale": 1, "t": 3, "pitch": 1, "yaw": 1, "roll": 1}
REQUIRED = ("mean_exp", "std_exp", "min_scale", "max_scale", "min_t", "max_t", "min_pitch", "max_pitch",
            "min_yaw", "max_yaw", "min_roll", "max_roll")
#: offsets of each field in the normalised motion vector
LAYOUT = {"exp": (0, 63), "scale": (63, 64), "t": (64, 67), "pitch": (67, 68), "yaw": (68, 69), "roll": (69, 70)}
POSE_FIELDS = ("scale", "t", "pitch", "yaw", "roll")
EMA_ALPHA = 0.01


class MotionTemplate:
    """The statistics (float32 CPU tensors keyed like the pickle: ``mean_exp``, ``min_t``, ...)."""

    def __init__(self, stats: Mapping[str, object], name: str = "motion template"):
        data: Dict[str, torch.Tensor] = {}
        for k, v in stats.items():
            key = str(k)
            if key.startswith("template."):
                key = key[len("template."):]
            try:
                data[key] = torch.as_tensor(np.asarray(v, dtype=np.float32)).reshape(-1)
            except (TypeError, ValueError):
                continue
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise CheckpointError(f"{name}: not a JoyVASA motion template (missing {', '.join(missing)})")
        for k in REQUIRED:
            field = k.split("_", 1)[1]
            if data[k].numel() != FIELDS[field]:
                raise CheckpointError(f"{name}: '{k}' has {data[k].numel()} values, expected {FIELDS[field]}")
        self.stats = data
        self.name = name

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.stats[key]

    def keys(self):
        return self.stats.keys()

    @torch.no_grad()
    def denormalize(self, motion: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(T, >= 70) normalised motion -> ``exp`` [T, 21, 3], ``scale`` [T], ``t`` [T, 3],
        ``pitch``/``yaw``/``roll`` [T] degrees (float32 CPU)."""
        m = motion.detach().float().cpu()
        if m.ndim != 2 or m.shape[1] < 70:
            raise InputError(f"expected a (frames, >= 70) JoyVASA motion, got {tuple(m.shape)}")
        s = self.stats
        out = {"exp": (m[:, 0:63] * s["std_exp"] + s["mean_exp"]).reshape(-1, 21, 3)}
        for field in POSE_FIELDS:
            a, b = LAYOUT[field]
            v = m[:, a:b] * (s[f"max_{field}"] - s[f"min_{field}"]) + s[f"min_{field}"]
            out[field] = v if field == "t" else v[:, 0]
        return out


def load_template(source: Union[os.PathLike, str, Mapping, MotionTemplate]) -> MotionTemplate:
    """A template from ``motion_template.pkl`` (safe plain-pickle loader), a safetensors file with the
    same keys (optionally prefixed ``template.``), or a mapping."""
    if isinstance(source, MotionTemplate):
        return source
    if isinstance(source, Mapping):
        return MotionTemplate(source)
    path = Path(source)
    if path.suffix.lower() == ".safetensors":
        data = load_checkpoint(path)
    else:
        data = load_pickle(path)
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path.name}: not a JoyVASA motion template (a {type(data).__name__})")
    return MotionTemplate(data, name=path.name)


def smooth_pose(motion: Mapping[str, torch.Tensor], alpha: float = EMA_ALPHA) -> Dict[str, torch.Tensor]:
    """The official EMA over scale, t, pitch, yaw, roll (exp untouched); float32 numpy arithmetic."""
    n = int(motion["exp"].shape[0])
    cols = [motion["scale"].reshape(n, 1), motion["t"].reshape(n, 3), motion["pitch"].reshape(n, 1),
            motion["yaw"].reshape(n, 1), motion["roll"].reshape(n, 1)]
    data = torch.cat([c.float().cpu() for c in cols], dim=1).numpy().astype(np.float32)
    out = np.empty_like(data)
    a, b = np.float32(alpha), np.float32(1 - alpha)
    prev = None
    for i in range(n):
        prev = data[i] if prev is None else a * data[i] + b * prev
        out[i] = prev
    sm = torch.from_numpy(out)
    res = dict(motion)
    res.update({"scale": sm[:, 0].clone(), "t": sm[:, 1:4].clone(), "pitch": sm[:, 4].clone(),
                "yaw": sm[:, 5].clone(), "roll": sm[:, 6].clone()})
    return res


def with_rotation(motion: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Adds ``R`` [T, 3, 3] = ``(Rz(roll) Ry(yaw) Rx(pitch))^T`` (row-vector convention)."""
    res = dict(motion)
    res["R"] = K.rotation_matrix(motion["pitch"], motion["yaw"], motion["roll"])
    return res


def to_pose_sequence(template: MotionTemplate, motion: torch.Tensor, smooth: bool = True) -> Dict[str, torch.Tensor]:
    """Normalised (T, 73) -> de-normalised, optionally smoothed, with ``R``."""
    out = template.denormalize(motion)
    if smooth:
        out = smooth_pose(out)
    return with_rotation(out)


__all__ = ["EMA_ALPHA", "LAYOUT", "MotionTemplate", "load_template", "smooth_pose", "to_pose_sequence",
           "with_rotation"]
