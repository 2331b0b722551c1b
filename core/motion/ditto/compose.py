"""Ditto motion vectors and their combination with the source portrait (official ``motion_stitch.py``,
``audio2motion.py``'s ``_cvt_LP_motion_info`` / ``cvt_fmt``).

Motion vector (265, raw LivePortrait motion-extractor units)::

    [scale - 1 (1) | pitch logits (66) | yaw logits (66) | roll logits (66) | t (3) | exp (63)]

(angles are 66-bin head-pose logits; degrees = ``sum(softmax(l) * arange(66)) * 3 - 97.5``; exp flat
index ``3 * kp + axis``).

Combination with an image source (``relative`` mode, the default): with ``d0`` the anchor frame (the
first generated frame offline, the dropped first window's frame 0 online), for pitch, yaw, roll, t and
exp ``m = s + (d - d0) * strength`` -- the pose is relative in *logit* space, before the softmax --
and scale stays the source's. Expression: lip keypoints (6, 12, 14, 17, 19, 20) take ``m``; eye keypoints
(11, 13, 15, 16, 18) take ``m`` too, or ``exp_s + blink_template[blink_idx]`` when a blink template is
given; all other keypoints keep the source's expression. Optional degree offsets ``delta_pitch/yaw/roll``.
Gaze fix: ``dx = 0.26 (yaw_d - yaw_s)``, ``dy = 0.28 (pitch_d - pitch_s)`` (degrees) ->
``exp[33] += dx (7e-4 if dx > 0 else 1e-3)``, ``exp[45] += dx (1e-3 if dx > 0 else 7e-4)``,
``exp[34] -= 1e-3 dy``, ``exp[46] -= 1e-3 dy``. The result is a :class:`Motion` with ``composed=True``:
:func:`core.liveportrait.motion.driving_keypoints` then gives ``x_d = scale (kp R + exp) + t``
(t_z = 0) and the stitching, exactly the official keypoints.

Strengths (not in the reference; 1 = the reference): ``pose_strength`` multiplies ``d - d0`` of the pose
logits and of ``t`` (0 = the source's head pose and position throughout), ``exp_strength`` multiplies
``d - d0`` of the expression. This is the official ``use_d_keys`` dict mechanism. Note that scaling
logit differences is not linear in degrees (the softmax expectation saturates), but it is monotone
and keeps every intermediate value a valid pose distribution.
"""
from __future__ import annotations

import random
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ...errors import InputError
from ...liveportrait import kinematics as K
from ...liveportrait.motion import DriveOptions, Motion, SourceMotion, driving_keypoints as _lp_driving_keypoints

MOTION_DIM = 265
LAYOUT = (("scale", 1), ("pitch", 66), ("yaw", 66), ("roll", 66), ("t", 3), ("exp", 63))
SLICES = {}
_s = 0
for _k, _n in LAYOUT:
    SLICES[_k] = slice(_s, _s + _n)
    _s += _n
POSE_DIMS = 202            # scale, pitch, yaw, roll, t: smoothed and (online) carried in cond_frame
LIP_KPS = (6, 12, 14, 17, 19, 20)
EYE_KPS = (11, 13, 15, 16, 18)
BLINK_LEN = 15
OPEN_MIN, OPEN_MAX = 60, 100
GAZE_X, GAZE_Y = 0.26, 0.28
DEFAULT_KEYS = ("exp", "pitch", "yaw", "roll", "t")


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).float()


# --------------------------------------------------------------------------- vectors
def source_vector(raw: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(265,) motion vector of the source from the motion extractor's raw heads (``pitch``/``yaw``/
    ``roll`` 66-bin logits, ``t``, ``exp``, ``scale``; batch 1). It is the first window's ``cond_frame``."""
    missing = [k for k, _ in LAYOUT if k not in raw]
    if missing:
        raise InputError(f"source motion lacks {', '.join(missing)} (raw motion-extractor outputs are needed)")
    parts = []
    for k, n in LAYOUT:
        v = _t(raw[k]).reshape(-1)
        if v.numel() < n or (k in ("pitch", "yaw", "roll") and v.numel() != n):
            raise InputError(f"source '{k}' must have {n} values (66-bin logits for angles), got {v.numel()}")
        v = v[:n]
        parts.append(v - 1 if k == "scale" else v)
    return torch.cat(parts)


def split_vector(seq) -> Dict[str, torch.Tensor]:
    """(T, 265) or (265,) vectors -> ``{scale (T,1) = v+1, pitch/yaw/roll (T,66), t (T,3), exp (T,63)}``."""
    v = _t(seq)
    v = v.reshape(-1, v.shape[-1])
    if v.shape[-1] < MOTION_DIM:
        raise InputError(f"Ditto motion vectors have {MOTION_DIM} values, got {v.shape[-1]}")
    out = {k: v[:, SLICES[k]] for k, _ in LAYOUT}
    out["scale"] = out["scale"] + 1
    return out


def clip_motion(seq, v_min_max=None) -> torch.Tensor:
    """The official ``cvt_fmt`` clip: rows 0 / 1 of the cfg's (4, 265) ``v_min_max_for_clip``."""
    seq = _t(seq)
    if v_min_max is None:
        return seq
    mm = _t(v_min_max)
    return torch.minimum(torch.maximum(seq, mm[0]), mm[1])


def source_info(raw: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Raw source heads as flat float32 rows: angles (1, 66) logits, t (1, 3), exp/kp (1, 63), scale (1, 1)."""
    out = {}
    for k, n in LAYOUT + (("kp", 63),):
        if k not in raw:
            raise InputError(f"source motion lacks '{k}'")
        out[k] = _t(raw[k]).reshape(1, -1)[:, :n]
    return out


# --------------------------------------------------------------------------- blinks
def blink_indices(n: int, blink_len: int = BLINK_LEN, open_n: Union[int, Sequence[int]] = 0,
                  seed: Optional[int] = None) -> torch.Tensor:
    """(n,) row of the blink template per frame (0 = eyes as in row 0, i.e. open), the official
    ``_set_eye_blink_idx``: a ``blink_len``-frame blink every ``open_n`` frames (an int, a list used in
    turn, or 0 = random 60..100 drawn with ``seed``; < 0 = no blinks); no blink starts in the last
    ``max(last gap, blink_len)`` frames, so the clip ends with open eyes."""
    idx = [0] * n
    if isinstance(open_n, (int, np.integer)):
        if open_n < 0:
            return torch.zeros(n, dtype=torch.long)
        gaps = [int(open_n)] if open_n > 0 else []
    else:
        gaps = [int(g) for g in open_n]
    rng = random.Random(seed)
    draw = lambda: rng.randint(OPEN_MIN, OPEN_MAX)  # noqa: E731
    start = gaps[0] if gaps else draw()
    end = gaps[-1] if gaps else draw()
    max_i = n - max(end, blink_len)
    cur, k = start, 1
    while cur < max_i:
        idx[cur:cur + blink_len] = list(range(blink_len))
        if gaps:
            gap = gaps[k % len(gaps)]
            k += 1
        else:
            gap = draw()
        cur += blink_len + gap
    return torch.tensor(idx[:n], dtype=torch.long)


# --------------------------------------------------------------------------- composition
def _per_frame(value, n: int) -> Optional[torch.Tensor]:
    if value is None:
        return None
    v = _t(value).reshape(-1)
    if v.numel() == 1:
        return v.expand(n)
    if v.numel() != n:
        raise InputError(f"a per-frame control needs 1 or {n} values, got {v.numel()}")
    return v


#: frames composed at a time by :func:`compose_motion`: its float intermediates (several times the 265 values of
#: a frame) stay this size whatever the length; every step is per frame, so the values are those of one piece
COMPOSE_BLOCK = 1024


def compose_motion(seq, source_raw: Mapping[str, torch.Tensor], d0=None, relative: bool = True, drive_eye: bool = True,
            blink_template=None, blink_idx=None, delta_pitch=None, delta_yaw=None, delta_roll=None,
            pose_strength: float = 1.0, exp_strength: float = 1.0, gaze_fix: Optional[bool] = None,
            v_min_max=None, blink_open_n: Union[int, Sequence[int]] = 0,
            blink_seed: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """The official ``MotionStitch`` rules for an image source, before the keypoint transform.

    ``seq`` (T, 265) generated motion; ``source_raw`` the source's raw motion-extractor heads; ``d0``
    (265,) anchor (default: ``seq[0]``); ``blink_template`` (B, 63) ``delta_eye_arr`` with ``blink_idx``
    (T,) rows (default: :func:`blink_indices` over the T frames with gaps ``blink_open_n``, 0 = the
    official random 60..100 drawn with ``blink_seed``); ``delta_*`` degree offsets
    (scalar or per frame); ``gaze_fix`` defaults to ``drive_eye``; ``v_min_max`` the optional clip.
    Returns ``{pitch, yaw, roll (T,) degrees, t (T, 3), exp (T, 21, 3), scale (T,)}``.

    Long motions are composed :data:`COMPOSE_BLOCK` frames at a time into the result tensors.
    """
    options = dict(relative=relative, drive_eye=drive_eye, blink_template=blink_template, pose_strength=pose_strength,
                   exp_strength=exp_strength, gaze_fix=gaze_fix, v_min_max=v_min_max)
    seq = _t(seq)
    n = seq.shape[0]
    if seq.ndim != 2 or n <= COMPOSE_BLOCK:
        return _compose_block(seq, source_raw, d0, blink_idx=blink_idx, delta_pitch=delta_pitch, delta_yaw=delta_yaw,
                              delta_roll=delta_roll, blink_open_n=blink_open_n, blink_seed=blink_seed, **options)
    # what depends on the whole clip is settled first: the anchor, the blink rows and the per-frame offsets
    if relative and d0 is None:
        d0 = clip_motion(seq[:1], v_min_max)[0]
    if drive_eye and blink_template is not None:
        if blink_idx is None:
            blink_idx = blink_indices(n, _t(blink_template).reshape(-1, 63).shape[0], blink_open_n, blink_seed)
        blink_idx = torch.as_tensor(blink_idx).long().reshape(-1)
        if blink_idx.numel() < n:
            raise InputError(f"blink_idx has {blink_idx.numel()} entries for {n} frames")
    deltas = {k: _per_frame(v, n) for k, v in (("delta_pitch", delta_pitch), ("delta_yaw", delta_yaw),
                                                ("delta_roll", delta_roll))}
    out: Dict[str, torch.Tensor] = {}
    for b0 in range(0, n, COMPOSE_BLOCK):
        b1 = min(b0 + COMPOSE_BLOCK, n)
        part = _compose_block(seq[b0:b1], source_raw, d0,
                              blink_idx=None if blink_idx is None else blink_idx[b0:b1],
                              **{k: None if v is None else v[b0:b1] for k, v in deltas.items()}, **options)
        for k, v in part.items():
            if k not in out:
                out[k] = torch.empty((n,) + tuple(v.shape[1:]), dtype=v.dtype)
            out[k][b0:b1] = v
    return out


def _compose_block(seq, source_raw: Mapping[str, torch.Tensor], d0=None, relative: bool = True,
                   drive_eye: bool = True, blink_template=None, blink_idx=None, delta_pitch=None, delta_yaw=None,
                   delta_roll=None, pose_strength: float = 1.0, exp_strength: float = 1.0,
                   gaze_fix: Optional[bool] = None, v_min_max=None, blink_open_n: Union[int, Sequence[int]] = 0,
                   blink_seed: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """:func:`compose_motion` of frames that are composed in one piece."""
    seq = clip_motion(seq, v_min_max)
    d = split_vector(seq)
    n = seq.shape[0]
    s = source_info(source_raw)
    strength = {"pitch": pose_strength, "yaw": pose_strength, "roll": pose_strength, "t": pose_strength,
                "exp": exp_strength}
    m = {}
    if relative:
        a = split_vector(seq[:1] if d0 is None else clip_motion(d0, None).reshape(1, -1))
        for k in DEFAULT_KEYS:
            delta = d[k] - a[k]
            if strength[k] != 1:
                delta = delta * float(strength[k])
            m[k] = s[k] + delta
    else:
        for k in DEFAULT_KEYS:
            m[k] = d[k] if strength[k] == 1 else s[k] + (d[k] - s[k]) * float(strength[k])

    # expression: lips (and eyes) driven, the rest from the source; eyes from a blink template
    lip = torch.zeros(21, 3)
    lip[list(LIP_KPS)] = 1
    eye = torch.zeros(21, 3)
    eye[list(EYE_KPS)] = 1
    lip, eye = lip.reshape(1, -1), eye.reshape(1, -1)
    exp_s = s["exp"]
    if drive_eye and blink_template is not None:
        tmpl = _t(blink_template).reshape(-1, 63)
        if blink_idx is None:
            idx = blink_indices(n, tmpl.shape[0], blink_open_n, blink_seed)
        else:
            idx = torch.as_tensor(blink_idx).long().reshape(-1)
        if idx.numel() < n:
            raise InputError(f"blink_idx has {idx.numel()} entries for {n} frames")
        delta_eye = tmpl[idx[:n] % tmpl.shape[0]]
        a1, a2, a3 = lip, 1 - lip, eye
        exp = m["exp"] * a1 + exp_s * a2 + delta_eye * a3
    else:
        a1 = lip + eye if drive_eye else lip
        exp = m["exp"] * a1 + exp_s * (1 - a1)

    deg = {k: K.headpose_to_degree(m[k]) for k in ("pitch", "yaw", "roll")}
    for k, dv in (("pitch", delta_pitch), ("yaw", delta_yaw), ("roll", delta_roll)):
        dv = _per_frame(dv, n)
        if dv is not None:
            deg[k] = deg[k] + dv

    if drive_eye if gaze_fix is None else gaze_fix:
        yaw_s = K.headpose_to_degree(s["yaw"]).double()
        pitch_s = K.headpose_to_degree(s["pitch"]).double()
        dx = (deg["yaw"].double() - yaw_s) * GAZE_X
        dy = (deg["pitch"].double() - pitch_s) * GAZE_Y
        pos = dx > 0
        exp = exp.clone()
        exp[:, 33] += (dx * torch.where(pos, 0.0007, 0.001)).float()
        exp[:, 45] += (dx * torch.where(pos, 0.001, 0.0007)).float()
        exp[:, 34] += (dy * -0.001).float()
        exp[:, 46] += (dy * -0.001).float()

    return {"pitch": deg["pitch"], "yaw": deg["yaw"], "roll": deg["roll"], "t": m["t"],
            "exp": exp.reshape(n, 21, 3), "scale": s["scale"].reshape(1).expand(n).clone()}


def to_motion(seq, source_raw: Mapping[str, torch.Tensor], fps: float = 25.0, d0=None, **options) -> Motion:
    """Generated (T, 265) motion combined with the source -> :class:`Motion` (``composed=True``).

    Options as :func:`compose_motion`: ``relative``, ``drive_eye``, ``blink_template`` / ``blink_idx``,
    ``blink_open_n`` / ``blink_seed``, ``delta_pitch`` / ``delta_yaw`` / ``delta_roll`` (degrees),
    ``pose_strength``, ``exp_strength``, ``gaze_fix``, ``v_min_max``. Drive it with
    ``DriveOptions(stitching=True)`` (region ``all``)."""
    c = compose_motion(seq, source_raw, d0=d0, **options)
    return Motion(exp=c["exp"], pitch=c["pitch"], yaw=c["yaw"], roll=c["roll"], t=c["t"], scale=c["scale"],
                  fps=fps, composed=True)


def source_motion(source_raw: Mapping[str, torch.Tensor]) -> SourceMotion:
    """The source as :class:`SourceMotion` (degrees, canonical keypoints, ``x_s``)."""
    s = source_info(source_raw)
    return SourceMotion.from_kp_info(K.kp_info(s))


def driving_keypoints(motion: Motion, source_raw: Mapping[str, torch.Tensor], stitching_net=None,
                      stitching: bool = True):
    """``(x_s (1, 21, 3), x_d before stitching (T, 21, 3), x_d (T, 21, 3))`` for a composed motion,
    through :func:`core.liveportrait.motion.driving_keypoints` (the official keypoint transform and
    stitching MLP)."""
    src = source_motion(source_raw)
    opts = DriveOptions(relative=True, region="all", stitching=stitching and stitching_net is not None)
    x_d, pre = _lp_driving_keypoints(src, motion, opts, stitching_net, return_stitch_input=True)
    return src.x_s, pre, x_d


__all__ = ["BLINK_LEN", "EYE_KPS", "LAYOUT", "LIP_KPS", "MOTION_DIM", "POSE_DIMS", "SLICES", "blink_indices",
           "clip_motion", "compose_motion", "driving_keypoints", "source_info", "source_motion", "source_vector",
           "split_vector", "to_motion"]
