"""JoyVASA's combination of generated motion with one source portrait
(``live_portrait_wmg_pipeline.execute``, ``animation_region='all'``), returned as a composed
:class:`~core.liveportrait.motion.Motion`.

Per frame i (frame 0 = the reference)::

    R     = (R_i R_0^T) R_s
    exp   = exp_s + (exp_i - exp_0), with the lip keypoints 6, 12, 14, 17, 19, 20 = exp_i (absolute)
    scale = s_s (s_i / s_0)
    t     = t_s + (t_i - t_0),  t_z = 0

``driving_keypoints`` then gives ``x_d = scale (kp_s R + exp) + t`` and applies the renderer's
options; the official CLI is ``DriveOptions(relative=False, stitching=False, multiplier=1.1)`` and
the official Gradio demo ``DriveOptions(relative=True, expression_friendly=True, normalize_lip=True,
stitching=True, multiplier=1.0)`` (see :data:`CLI_OPTIONS` / :data:`GRADIO_OPTIONS`).

Strengths (1.0 = the official rule exactly): ``pose_strength`` scales the relative rotation
(fractional power of ``R_i R_0^T`` via its axis-angle), the translation offset and the log scale
ratio; ``expression_strength`` scales ``exp_i - exp_0`` and, for the lip keypoints, ``exp_i - exp_s``
(0 keeps the source's own expression).
"""
from __future__ import annotations

import math
from typing import Mapping, Union

import torch

from ...errors import InputError
from ...liveportrait import kinematics as K
from ...liveportrait.motion import DriveOptions, Motion, SourceMotion

LIP_KPS = (6, 12, 14, 17, 19, 20)

#: the renderer options reproducing the official CLI (``inference.py`` defaults) and Gradio demo
CLI_OPTIONS = dict(relative=False, expression_friendly=False, stitching=False, normalize_lip=False, multiplier=1.1)
GRADIO_OPTIONS = dict(relative=True, expression_friendly=True, stitching=True, normalize_lip=True, multiplier=1.0)


def drive_options(preset: str = "cli") -> DriveOptions:
    """:class:`DriveOptions` of the official ``"cli"`` or ``"gradio"`` defaults."""
    if preset not in ("cli", "gradio"):
        raise ValueError(f"preset must be 'cli' or 'gradio', got {preset!r}")
    return DriveOptions(**(CLI_OPTIONS if preset == "cli" else GRADIO_OPTIONS))


def _source_parts(source: Union[SourceMotion, Mapping[str, torch.Tensor]]):
    """(exp [1, 21, 3], R [1, 3, 3], scale [1, 1], t [1, 3]) of the source."""
    if isinstance(source, SourceMotion):
        return source.exp.float(), source.R.float(), source.scale.float().reshape(1, 1), source.t.float().reshape(1, 3)
    try:
        exp = torch.as_tensor(source["exp"]).float().reshape(1, -1, 3)
        R = source.get("R")
        R = torch.as_tensor(R).float().reshape(1, 3, 3) if R is not None else \
            K.rotation_matrix(source["pitch"], source["yaw"], source["roll"])[:1]
        scale = torch.as_tensor(source["scale"]).float().reshape(1, 1)
        t = torch.as_tensor(source["t"]).float().reshape(1, 3)
    except KeyError as exc:
        raise InputError(f"the source motion lacks {exc}") from None
    return exp, R, scale, t


def rotation_power(R: torch.Tensor, p: float) -> torch.Tensor:
    """``R ** p`` for rotation matrices (T, 3, 3): the same axis, ``p`` times the angle."""
    Rd = R.double()
    eye = torch.eye(3, dtype=Rd.dtype, device=Rd.device)
    w = torch.stack([Rd[:, 2, 1] - Rd[:, 1, 2], Rd[:, 0, 2] - Rd[:, 2, 0], Rd[:, 1, 0] - Rd[:, 0, 1]], dim=-1)
    sin = w.norm(dim=-1) / 2
    cos = ((Rd.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    angle = torch.atan2(sin, cos)
    axis = w / (2 * sin).clamp_min(1e-300)[:, None]
    # near 180 degrees the antisymmetric part vanishes: the axis from the symmetric part
    # (R + R^T) / 2 = cos I + (1 - cos) u u^T, signed like w
    sym = ((Rd + Rd.transpose(1, 2)) / 2 - cos[:, None, None] * eye) / (1 - cos).clamp_min(1e-12)[:, None, None]
    col = sym.diagonal(dim1=-2, dim2=-1).argmax(-1)
    alt = sym[torch.arange(sym.shape[0]), :, col]
    alt = alt / alt.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    alt = torch.where(((alt * w).sum(-1) < 0)[:, None], -alt, alt)
    axis = torch.where(((cos < 0) & (sin < 1e-2))[:, None], alt, axis)
    axis = torch.where((sin < 1e-12)[:, None] & (cos > 0)[:, None], torch.zeros_like(axis), axis)
    a = angle * p
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)
    out = eye + torch.sin(a)[:, None, None] * Kx + (1 - torch.cos(a))[:, None, None] * (Kx @ Kx)
    return out.to(R.dtype)


def euler_degrees(R: torch.Tensor):
    """(pitch, yaw, roll) degrees (T,) with ``R = (Rz(roll) Ry(yaw) Rx(pitch))^T`` (inverse of
    :func:`kinematics.rotation_matrix`)."""
    Rd = R.double()
    pitch = torch.atan2(Rd[:, 1, 2], Rd[:, 2, 2])
    yaw = torch.asin((-Rd[:, 0, 2]).clamp(-1.0, 1.0))
    roll = torch.atan2(Rd[:, 0, 1], Rd[:, 0, 0])
    deg = 180.0 / math.pi
    return (pitch * deg).float(), (yaw * deg).float(), (roll * deg).float()


@torch.no_grad()
def to_motion(generated: Union[Mapping[str, torch.Tensor], Motion],
              source: Union[SourceMotion, Mapping[str, torch.Tensor]], fps: float = 25.0, pose_strength: float = 1.0, expression_strength: float = 1.0) -> Motion:
    """The generated motion (:func:`.stream.generate`) combined with ``source`` as JoyVASA does.

    ``source``: a :class:`SourceMotion`, or the motion extractor's info for the source (``exp``,
    ``pitch``/``yaw``/``roll`` in degrees or 66-bin logits, ``t``, ``scale``; ``kp`` is not needed here).
    Returns ``Motion(composed=True)`` with ``R`` (and matching Euler angles), exp, scale, t (t_z = 0)."""
    if isinstance(generated, Motion):
        generated = {"exp": generated.exp, "R": generated.rotation(), "scale": generated.scale, "t": generated.t}
    exp_s, R_s, s_s, t_s = _source_parts(source)
    exp_d = torch.as_tensor(generated["exp"]).float()
    n = int(exp_d.shape[0])
    if n == 0:
        raise InputError("the generated motion has no frames")
    exp_d = exp_d.reshape(n, -1, 3)
    R_d = generated.get("R")
    R_d = torch.as_tensor(R_d).float().reshape(n, 3, 3) if R_d is not None else \
        K.rotation_matrix(generated["pitch"], generated["yaw"], generated["roll"])
    s_d = torch.as_tensor(generated["scale"]).float().reshape(n, 1)
    t_d = torch.as_tensor(generated["t"]).float().reshape(n, 3)
    ps, es = float(pose_strength), float(expression_strength)

    R_rel = R_d @ R_d[:1].permute(0, 2, 1)
    if ps != 1.0:
        R_rel = rotation_power(R_rel, ps)
    R_new = R_rel @ R_s
    lip = list(LIP_KPS)
    if es == 1.0:
        exp_new = exp_s + (exp_d - exp_d[:1])
        exp_new[:, lip, :] = exp_d[:, lip, :]
    else:
        exp_new = exp_s + es * (exp_d - exp_d[:1])
        exp_new[:, lip, :] = exp_s[:, lip, :] + es * (exp_d[:, lip, :] - exp_s[:, lip, :])
    if ps == 1.0:
        scale_new = s_s * (s_d / s_d[:1])
        t_new = t_s + (t_d - t_d[:1])
    else:
        scale_new = s_s * (s_d / s_d[:1]) ** ps
        t_new = t_s + ps * (t_d - t_d[:1])
    t_new = t_new.clone()
    t_new[:, 2] = 0
    pitch, yaw, roll = euler_degrees(R_new)
    return Motion(exp=exp_new, pitch=pitch, yaw=yaw, roll=roll, t=t_new, scale=scale_new[:, 0], R=R_new,
                  fps=float(fps), composed=True)


__all__ = ["CLI_OPTIONS", "GRADIO_OPTIONS", "LIP_KPS", "drive_options", "euler_degrees", "rotation_power",
           "to_motion"]
