"""LivePortrait motion representation: head pose, keypoint transform, stitching, retargeting.

Plain batched torch functions (float32 in, float32 out). Conventions:

* keypoints are (B, K=21, 3) row vectors (x right, y down, z in) in the [-1, 1] cube;
* head-pose heads are 66 bins of 3 degrees; the angle is the *expectation* over the bins::

      degree = sum_i softmax(logits)_i * i * 3 - 97.5            (range +-97.5)

* rotation (pitch about x, yaw about y, roll about z; degrees)::

      R = (Rz(roll) @ Ry(yaw) @ Rx(pitch))^T,   applied as  kp @ R
      Rx = [[1,0,0],[0,c,-s],[0,s,c]]  Ry = [[c,0,s],[0,1,0],[-s,0,c]]  Rz = [[c,-s,0],[s,c,0],[0,0,1]]

* transformed keypoints (Eqn. 2 of the paper): ``x = s * (kp @ R + exp)``, then ``x[..., :2] += t[:, :2]``
  (t_z is ignored);
* stitching: ``d = S(cat(flat x_s, flat x_d))`` (126 -> 65), ``x_d' = x_d + d[:, :63]`` reshaped,
  then ``x_d'[..., :2] += d[:, 63:65]``;
* retargeting: ``delta = R_eye(cat(flat x_s, [c_s_left, c_s_right, c_d]))`` (66 -> 63),
  ``delta = R_lip(cat(flat x_s, [c_s_lip, c_d_lip]))`` (65 -> 63), reshaped to (B, K, 3);
* open ratios from the 203-point landmarks (eps 1e-6 in the denominator)::

      eyes = [|p6 - p18| / |p0 - p12|,  |p30 - p42| / |p24 - p36|]
      lip  = |p90 - p102| / |p48 - p66|
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import torch

NUM_BINS = 66
BIN_DEGREES = 3.0
DEGREE_OFFSET = 97.5
RATIO_EPS = 1e-6


# --------------------------------------------------------------------------- head pose
def headpose_to_degree(logits: torch.Tensor) -> torch.Tensor:
    """(B, 66) bin logits -> (B,) degrees: ``sum(softmax(logits) * arange(66)) * 3 - 97.5``."""
    prob = torch.softmax(logits.float(), dim=-1)
    idx = torch.arange(logits.shape[-1], dtype=prob.dtype, device=prob.device)
    return (prob * idx).sum(dim=-1) * BIN_DEGREES - DEGREE_OFFSET


def _as_degrees(angle: torch.Tensor) -> torch.Tensor:
    """Degrees as a flat (B,) tensor; (B, 66) logits are converted with :func:`headpose_to_degree`."""
    angle = torch.as_tensor(angle)
    if angle.ndim >= 2 and angle.shape[-1] == NUM_BINS:
        angle = headpose_to_degree(angle)
    return angle.float().reshape(-1)


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees ((B,), (B, 1) or scalars) -> (B, 3, 3) ``(Rz(roll) Ry(yaw) Rx(pitch))^T``.

    The result multiplies row vectors from the right: ``kp @ R``."""
    x = _as_degrees(pitch) * (math.pi / 180.0)
    y = _as_degrees(yaw) * (math.pi / 180.0)
    z = _as_degrees(roll) * (math.pi / 180.0)
    x, y, z = torch.broadcast_tensors(x, y, z)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = torch.cos(x), torch.sin(x), torch.cos(y), torch.sin(y), torch.cos(z), torch.sin(z)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], dim=-1).reshape(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=-1).reshape(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], dim=-1).reshape(-1, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


# --------------------------------------------------------------------------- motion info
def kp_info(raw: Mapping[str, torch.Tensor], num_kp: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Raw motion-extractor heads -> motion info (all float32):

    ``kp``, ``exp`` (B, K, 3); ``pitch``, ``yaw``, ``roll`` degrees (B, 1); ``t`` (B, 3) and
    ``scale`` (B, 1) unchanged."""
    b = raw["kp"].shape[0]
    k = num_kp if num_kp is not None else raw["kp"].shape[-1] // 3
    return {
        "pitch": headpose_to_degree(raw["pitch"])[:, None],
        "yaw": headpose_to_degree(raw["yaw"])[:, None],
        "roll": headpose_to_degree(raw["roll"])[:, None],
        "t": raw["t"].float(),
        "exp": raw["exp"].float().reshape(b, k, 3),
        "scale": raw["scale"].float(),
        "kp": raw["kp"].float().reshape(b, k, 3),
    }


def transform_keypoint(kp, pitch=None, yaw=None, roll=None, exp=None, t=None, scale=None,
                       rot: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x = s * (kp @ R + exp)``, then ``x[..., :2] += t[:, :2]`` (t_z ignored) -> (B, K, 3).

    Either ``transform_keypoint(info)`` with a :func:`kp_info` dict, or the fields one by one.
    Angles are degrees ((B,) / (B, 1)) or (B, 66) logits; ``rot`` (B, 3, 3) replaces the angles
    when given (e.g. a composed relative rotation)."""
    if isinstance(kp, Mapping):
        info = kp
        kp, exp, t, scale = info["kp"], info["exp"], info["t"], info["scale"]
        if rot is None:
            rot = info.get("R")
        if rot is None:
            pitch, yaw, roll = info["pitch"], info["yaw"], info["roll"]
    b = kp.shape[0]
    kp = kp.float().reshape(b, -1, 3)
    if rot is None:
        rot = rotation_matrix(pitch, yaw, roll)
    x = kp @ rot.float()
    if exp is not None:
        x = x + exp.float().reshape(b, -1, 3)
    if scale is not None:
        x = x * scale.float().reshape(b, 1, 1)
    if t is not None:
        t = t.float().reshape(b, -1)
        x = torch.cat([x[..., :2] + t[:, None, :2], x[..., 2:]], dim=-1)
    return x


# --------------------------------------------------------------------------- stitching / retargeting
def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.float().reshape(x.shape[0], -1)


def stitch_delta(net, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    """Stitching MLP output (B, 3K + 2) for source / driving keypoints (B, K, 3).

    A single source (batch 1) is broadcast over the driving batch."""
    if x_s.shape[0] != x_d.shape[0]:
        x_s = x_s.expand(x_d.shape[0], *x_s.shape[1:])
    return net(torch.cat([_flat(x_s), _flat(x_d)], dim=1))


def stitching(net, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    """Stitched driving keypoints: ``x_d + d[:, :3K]`` (reshaped), then ``[..., :2] += d[:, 3K:3K+2]``."""
    b, k = x_d.shape[0], x_d.shape[1]
    d = stitch_delta(net, x_s, x_d)
    out = x_d.float() + d[:, :3 * k].reshape(b, k, 3)
    return torch.cat([out[..., :2] + d[:, None, 3 * k:3 * k + 2], out[..., 2:]], dim=-1)


def _retarget(net, x_s: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = torch.as_tensor(ratio, dtype=torch.float32, device=x_s.device)
    if ratio.ndim == 1:
        ratio = ratio[None]
    b = max(x_s.shape[0], ratio.shape[0])
    x_s = x_s.expand(b, *x_s.shape[1:]) if x_s.shape[0] != b else x_s
    ratio = ratio.expand(b, -1) if ratio.shape[0] != b else ratio
    return net(torch.cat([_flat(x_s), ratio], dim=1)).reshape(b, x_s.shape[1], 3)


def retarget_eye(net, x_s: torch.Tensor, eye_ratio: torch.Tensor) -> torch.Tensor:
    """Eye retargeting delta (B, K, 3); ``eye_ratio`` (B, 3) = [c_s_left, c_s_right, c_d]."""
    return _retarget(net, x_s, eye_ratio)


def retarget_lip(net, x_s: torch.Tensor, lip_ratio: torch.Tensor) -> torch.Tensor:
    """Lip retargeting delta (B, K, 3); ``lip_ratio`` (B, 2) = [c_s_lip, c_d_lip]."""
    return _retarget(net, x_s, lip_ratio)


# --------------------------------------------------------------------------- landmark ratios
def _dist_ratio(lmk: torch.Tensor, a: int, b: int, c: int, d: int) -> torch.Tensor:
    num = torch.linalg.vector_norm(lmk[..., a, :] - lmk[..., b, :], dim=-1)
    den = torch.linalg.vector_norm(lmk[..., c, :] - lmk[..., d, :], dim=-1)
    return num / (den + RATIO_EPS)


def _lmk(lmk203) -> torch.Tensor:
    lmk = torch.as_tensor(lmk203)
    if not lmk.is_floating_point():
        lmk = lmk.float()
    if lmk.shape[-2:] != (203, 2):
        raise ValueError(f"expected (..., 203, 2) landmarks, got {tuple(lmk.shape)}")
    return lmk


def eye_ratio(lmk203) -> torch.Tensor:
    """Eye open ratios (..., 2) = [left, right] from (..., 203, 2) landmarks:
    ``|p6-p18| / (|p0-p12| + 1e-6)`` and ``|p30-p42| / (|p24-p36| + 1e-6)``."""
    lmk = _lmk(lmk203)
    return torch.stack([_dist_ratio(lmk, 6, 18, 0, 12), _dist_ratio(lmk, 30, 42, 24, 36)], dim=-1)


def lip_ratio(lmk203) -> torch.Tensor:
    """Lip open ratio (..., 1) from (..., 203, 2) landmarks: ``|p90-p102| / (|p48-p66| + 1e-6)``."""
    return _dist_ratio(_lmk(lmk203), 90, 102, 48, 66)[..., None]


__all__ = ["NUM_BINS", "eye_ratio", "headpose_to_degree", "kp_info", "lip_ratio", "retarget_eye", "retarget_lip",
           "rotation_matrix", "stitch_delta", "stitching", "transform_keypoint"]
