"""The motion type every producer emits and LivePortraitRender consumes, and the official rules
that turn it into driving keypoints.

A :class:`Motion` is a sequence of per-frame LivePortrait motion parameters:

| field | shape | meaning |
| --- | --- | --- |
| ``exp`` | [T, 21, 3] | expression deltas in the canonical keypoint frame (before scale) |
| ``pitch``, ``yaw``, ``roll`` | [T] | head rotation in degrees (x, y, z axes) |
| ``t`` | [T, 3] | translation (x, y used; z ignored) |
| ``scale`` | [T] | isotropic scale |
| ``R`` | [T, 3, 3] or None | rotation matrix (row-vector convention, ``kp @ R``); when present it wins over the angles (official motion templates store it) |
| ``eyes`` | [T, 2] or None | eye open ratios (left, right), for eye retargeting |
| ``lip`` | [T, 1] or None | lip open ratio, for lip retargeting |
| ``fps`` | float | frames per second |
| ``composed`` | bool | True when the producer already combined the motion with one source portrait (MotionDiT: Ditto / JoyVASA apply their own relative rules); the renderer then uses pose, expression, t and scale as they are, whatever its ``relative`` setting |

The video-driven extractor, MotionDiT (Ditto, JoyVASA) and the procedural motion all produce
this type, in float32 on the CPU.

Eye / lip retargeting of a *composed* motion (the procedural motion drives the mouth and the eyes
this way): ``x_d + delta`` on top of the motion's own keypoints (so its head motion survives),
then stitching, where ``delta = R(x_s, c_s, c_d) - R(x_s, c_s, c_s)`` is the retargeting MLP's
change from the source's own open ratio ``c_s`` to the target ``c_d`` (0 when the target is the
source's ratio). An unknown source ratio (no 203-point landmarks) is taken as
:data:`DEFAULT_SOURCE_EYES` / :data:`DEFAULT_SOURCE_LIP`. Non-composed motions follow the official
rule exactly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, Optional

import torch

from ..errors import InputError
from ..geometry import hull_measure
from . import kinematics as K

LIP_KPS = (6, 12, 14, 17, 19, 20)
EYE_KPS = (11, 13, 15, 16, 18)
REGIONS = ("all", "exp", "pose", "lip", "eyes")
NORMALIZE_LIP_THRESHOLD = 0.03
#: source lip-open ratio assumed by the retargeting of a composed motion when the portrait's is unknown:
#: a closed mouth (a portrait usually has its mouth closed; the procedural motion's silence is 0 too)
DEFAULT_SOURCE_LIP = 0.0
#: source eye-open ratio (both eyes) assumed when unknown: a typical open eye in LivePortrait's
#: landmark ratio |p6-p18| / |p0-p12| (its motion templates range 0 (closed) .. 0.57)
DEFAULT_SOURCE_EYES = 0.35
_LIP_ARRAY: Optional[torch.Tensor] = None


def lip_array() -> torch.Tensor:
    """LivePortrait's neutral lip expression [1, 21, 3] (reference for a single-image driver)."""
    global _LIP_ARRAY
    if _LIP_ARRAY is None:
        data = json.loads((Path(__file__).resolve().parent / "configs" / "lip_array.json").read_text())
        _LIP_ARRAY = torch.tensor(data["lip_array"], dtype=torch.float64)[None]
    return _LIP_ARRAY


@dataclass
class Motion:
    exp: torch.Tensor
    pitch: torch.Tensor
    yaw: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor
    scale: torch.Tensor
    R: Optional[torch.Tensor] = None
    eyes: Optional[torch.Tensor] = None
    lip: Optional[torch.Tensor] = None
    fps: float = 25.0
    composed: bool = False

    def __post_init__(self) -> None:
        self.composed = bool(self.composed)
        n = int(self.exp.shape[0])
        self.exp = self.exp.detach().float().cpu().reshape(n, -1, 3)
        for name in ("pitch", "yaw", "roll", "scale"):
            setattr(self, name, getattr(self, name).detach().float().cpu().reshape(n))
        self.t = self.t.detach().float().cpu().reshape(n, 3)
        for name, shape in (("R", (n, 3, 3)), ("eyes", (n, 2)), ("lip", (n, 1))):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.detach().float().cpu().reshape(shape))
        if n == 0:
            raise InputError("a motion needs at least one frame")

    def __len__(self) -> int:
        return int(self.exp.shape[0])

    def rotation(self) -> torch.Tensor:
        return self.R if self.R is not None else K.rotation_matrix(self.pitch, self.yaw, self.roll)

    def frames(self, start: int, stop: Optional[int] = None) -> "Motion":
        """Frames ``start:stop`` (a new Motion sharing storage)."""
        return self.take(slice(start, stop))

    def take(self, index) -> "Motion":
        """The frames picked by ``index`` (a slice or an index tensor; frames may repeat)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in kw.items():
            if isinstance(value, torch.Tensor):
                kw[name] = value[index]
        return Motion(**kw)

    @classmethod
    def from_kp_info(cls, info: Dict[str, torch.Tensor], fps: float = 25.0, eyes=None, lip=None) -> "Motion":
        """From the motion extractor's per-frame info (:func:`kinematics.kp_info`)."""
        return cls(exp=info["exp"], pitch=info["pitch"], yaw=info["yaw"], roll=info["roll"], t=info["t"],
                   scale=info["scale"], eyes=eyes, lip=lip, fps=fps)

    def to_tensors(self) -> Dict[str, torch.Tensor]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        out["fps"] = torch.tensor([self.fps], dtype=torch.float64)
        if self.composed:
            out["composed"] = torch.ones(1, dtype=torch.uint8)
        return out

    @classmethod
    def from_tensors(cls, data: Dict[str, torch.Tensor]) -> "Motion":
        kw = {k: v for k, v in data.items() if k not in ("fps", "composed")}
        return cls(**kw, fps=float(data["fps"][0]) if "fps" in data else 25.0,
                   composed=bool(data["composed"].reshape(-1)[0]) if "composed" in data else False)

    def save(self, path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.to_tensors().items()}, str(path))

    @classmethod
    def load(cls, path) -> "Motion":
        """A motion saved by :meth:`save` (safetensors only: nothing is unpickled)."""
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
        except Exception as exc:
            raise InputError(f"'{Path(path).name}' is not a readable motion file (safetensors): {exc}") from exc
        required = ("exp", "pitch", "yaw", "roll", "t", "scale")
        missing = [k for k in required if k not in data]
        if missing:
            raise InputError(f"'{Path(path).name}' is not a motion file: it lacks {', '.join(missing)}")
        return cls.from_tensors(data)


@dataclass
class SourceMotion:
    """The source portrait's own motion: canonical keypoints, pose, expression, and ``x_s``."""

    kp: torch.Tensor      # [1, 21, 3] canonical keypoints
    exp: torch.Tensor     # [1, 21, 3]
    pitch: torch.Tensor   # [1, 1] degrees
    yaw: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor       # [1, 3]
    scale: torch.Tensor   # [1, 1]
    eyes: Optional[torch.Tensor] = None   # [1, 2] open ratios (from landmarks), when known
    lip: Optional[torch.Tensor] = None    # [1, 1]
    x_s: torch.Tensor = field(init=False)
    R: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.R = K.rotation_matrix(self.pitch, self.yaw, self.roll)
        self.x_s = K.transform_keypoint(self.kp, exp=self.exp, t=self.t, scale=self.scale, rot=self.R)

    @classmethod
    def from_kp_info(cls, info: Dict[str, torch.Tensor], eyes=None, lip=None) -> "SourceMotion":
        return cls(kp=info["kp"][:1], exp=info["exp"][:1], pitch=info["pitch"][:1], yaw=info["yaw"][:1],
                   roll=info["roll"][:1], t=info["t"][:1], scale=info["scale"][:1], eyes=eyes, lip=lip)


@dataclass
class DriveOptions:
    """How motion drives the source (the official pipeline's flags)."""

    relative: bool = True
    region: str = "all"                 # all | exp | pose | lip | eyes
    expression_friendly: bool = False   # scale the motion by the keypoint hull volumes (video driver)
    stitching: bool = True
    normalize_lip: bool = False         # close the source's mouth once (relative mode)
    eye_retargeting: bool = False
    lip_retargeting: bool = False
    multiplier: float = 1.0
    single_image_driver: bool = False   # the motion comes from one image: reference = neutral lips



@torch.inference_mode()
def driving_keypoints(source: SourceMotion, motion: Motion, opts: DriveOptions, stitching_net=None,
                      lip_net=None, eye_net=None, return_stitch_input: bool = False):
    """Driving keypoints ``x_d`` [T, 21, 3] for every frame of ``motion`` (float32, CPU).

    The rules of LivePortrait's pipeline for an image source: relative or absolute motion per
    animation region, ``t_z = 0``, ``x_d = s (kp_s @ R + exp) + t``; optional expression-friendly
    scaling; then lip normalisation / stitching / eye-lip retargeting; finally
    ``x_s + (x_d - x_s) * multiplier``.

    A composed motion with eye / lip retargeting on gets ``x_d + delta`` (the change from the
    source's open ratio to the motion's, see the module docstring), then stitching; a part whose
    ratios the motion does not carry is left as the motion has it.
    """
    if opts.region not in REGIONS:
        raise InputError(f"region must be one of {REGIONS}, got {opts.region!r}")
    n = len(motion)
    R_d = motion.rotation()
    exp_d, s_d, t_d = motion.exp, motion.scale[:, None], motion.t
    exp_s, s_s, t_s, R_s = source.exp, source.scale.reshape(1, 1), source.t, source.R
    pose = opts.region in ("all", "pose")
    if motion.composed:  # already combined with this source by its producer: use as is
        R_new = R_d if pose else R_s.expand(n, 3, 3)
        exp_rel = exp_d
        scale = s_d if opts.region == "all" else s_s.expand(n, 1)
        t = t_d if pose else t_s.expand(n, 3)
    elif opts.relative:
        if opts.single_image_driver:
            R_new = R_s.expand(n, 3, 3)
            exp_rel = exp_s + exp_d - lip_array().float()
        else:
            R_new = (R_d @ R_d[:1].transpose(1, 2)) @ R_s if pose else R_s.expand(n, 3, 3)
            exp_rel = exp_s + (exp_d - exp_d[:1])
        scale = s_s * (s_d / s_d[:1]) if opts.region == "all" else s_s.expand(n, 1)
        t = t_s + (t_d - t_d[:1]) if pose else t_s.expand(n, 3)
    else:
        R_new = R_d if pose else R_s.expand(n, 3, 3)
        exp_rel = exp_s.expand(n, -1, -1).clone()
        for idx in (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20):
            exp_rel[:, idx] = exp_d[:, idx]
        exp_rel[:, 3:5, 1] = exp_d[:, 3:5, 1]
        exp_rel[:, 5, 2] = exp_d[:, 5, 2]
        exp_rel[:, 8, 2] = exp_d[:, 8, 2]
        exp_rel[:, 9, 1:3] = exp_d[:, 9, 1:3]
        scale = s_s.expand(n, 1)
        t = t_d if pose else t_s.expand(n, 3)
    if opts.region in ("all", "exp"):
        exp = exp_rel
    elif opts.region in ("lip", "eyes"):
        exp = exp_s.expand(n, -1, -1).clone()
        idx = list(LIP_KPS if opts.region == "lip" else EYE_KPS)
        exp[:, idx] = exp_rel[:, idx]
    else:  # pose: the source keeps its expression
        exp = exp_s.expand(n, -1, -1)
    t = t.clone()
    t[:, 2] = 0
    x_s = source.x_s
    x_d = scale[:, :, None] * (source.kp @ R_new + exp) + t[:, None, :]

    if opts.expression_friendly and not opts.single_image_driver:
        multiplier = (hull_measure(x_s) ** 0.5) / (hull_measure(x_d[:1]) ** 0.5)
        x_d = x_s + (x_d - x_d[:1]) * multiplier

    stitch_in = x_d
    retarget = opts.eye_retargeting or opts.lip_retargeting
    if retarget and motion.composed:  # on top of the composed keypoints: the head motion survives
        x_d = x_d + _composed_retargeting(source, motion, opts, lip_net, eye_net)
        stitch_in = x_d
        if opts.stitching:
            x_d = K.stitching(_need(stitching_net, "stitching"), x_s, x_d)
    elif not retarget:
        if opts.stitching:
            x_d = K.stitching(_need(stitching_net, "stitching"), x_s, x_d)
        if opts.normalize_lip and opts.relative:
            x_d = x_d + _lip_normalisation(source, lip_net)
    else:
        delta = torch.zeros_like(x_d)
        if opts.eye_retargeting:
            ratio = _combined(source.eyes, "eye", motion.eyes, 0, n)
            delta = delta + K.retarget_eye(_need(eye_net, "eye retargeting"), x_s, ratio)
        if opts.lip_retargeting:
            ratio = _combined(source.lip, "lip", motion.lip, 0, n)
            delta = delta + K.retarget_lip(_need(lip_net, "lip retargeting"), x_s, ratio)
        x_d = (x_s + delta) if opts.relative else (x_d + delta)
        stitch_in = x_d
        if opts.stitching:
            x_d = K.stitching(_need(stitching_net, "stitching"), x_s, x_d)
    x_d = x_s + (x_d - x_s) * opts.multiplier
    return (x_d, stitch_in) if return_stitch_input else x_d


def _need(net, what: str):
    if net is None:
        raise InputError(f"{what} needs the stitching_retargeting_module weights")
    return net


def _composed_retargeting(source: SourceMotion, motion: Motion, opts: DriveOptions, lip_net, eye_net) -> torch.Tensor:
    """Retargeting delta [T, 21, 3] of a composed motion: ``R(x_s, c_s, c_d) - R(x_s, c_s, c_s)`` per part.

    A part is retargeted when its flag is on, the motion carries its ratios and the region includes
    it (eyes: all / exp / eyes; lip: all / exp / lip). Unknown source ratios use the defaults."""
    n, x_s = len(motion), source.x_s
    delta = torch.zeros(n, *x_s.shape[1:])
    if opts.eye_retargeting and motion.eyes is not None and opts.region in ("all", "exp", "eyes"):
        net = _need(eye_net, "eye retargeting")
        c_s = source.eyes if source.eyes is not None else torch.full((1, 2), DEFAULT_SOURCE_EYES)
        c_s = c_s.reshape(1, 2).float()
        anchor = torch.cat([c_s, c_s[:, :1]], dim=1)  # target = the source's (left) eye: no change
        delta = delta + K.retarget_eye(net, x_s, _combined(c_s, "eye", motion.eyes, 0, n)) \
            - K.retarget_eye(net, x_s, anchor)
    if opts.lip_retargeting and motion.lip is not None and opts.region in ("all", "exp", "lip"):
        net = _need(lip_net, "lip retargeting")
        c_s = source.lip if source.lip is not None else torch.full((1, 1), DEFAULT_SOURCE_LIP)
        c_s = c_s.reshape(1, 1).float()
        delta = delta + K.retarget_lip(net, x_s, _combined(c_s, "lip", motion.lip, 0, n)) \
            - K.retarget_lip(net, x_s, torch.cat([c_s, c_s], dim=1))
    return delta


def _combined(source_ratio, kind: str, driving: Optional[torch.Tensor], col: int, n: int) -> torch.Tensor:
    """[c_s..., c_d] per frame: the source's ratio(s) and the driving ratio (left eye only)."""
    if source_ratio is None:
        raise InputError(f"{kind} retargeting needs the source's {kind} open ratio (face landmarks)")
    if driving is None:
        raise InputError(f"{kind} retargeting needs per-frame {kind} open ratios in the motion")
    src = source_ratio.reshape(1, -1).float().expand(n, -1)
    return torch.cat([src, driving[:, col:col + 1].float()], dim=1)


def _lip_normalisation(source: SourceMotion, lip_net) -> torch.Tensor:
    """The delta that closes the source's mouth before animation (0 when it is closed already)."""
    if source.lip is None or lip_net is None:
        return torch.zeros_like(source.x_s)
    ratio = torch.cat([source.lip.reshape(1, 1).float(), torch.zeros(1, 1)], dim=1)
    if float(ratio[0, 0]) < NORMALIZE_LIP_THRESHOLD:
        return torch.zeros_like(source.x_s)
    return K.retarget_lip(lip_net, source.x_s, ratio)


__all__ = ["DEFAULT_SOURCE_EYES", "DEFAULT_SOURCE_LIP", "DriveOptions", "Motion", "REGIONS", "SourceMotion",
           "driving_keypoints", "lip_array"]
