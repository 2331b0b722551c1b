"""Loading Ditto's LMDM checkpoint and its cfg pickle (never running pickled code).

* ``lmdm_v0.4_hubert.pth`` = ``{"model_state_dict": MotionDecoder.state_dict()}`` (no key prefix),
  or a flat safetensors twin whose keys carry the ``model_state_dict.`` prefix or none. Sizes are read
  from the key shapes; the head count cannot be (8 for the released model; ``num_heads`` or a
  safetensors metadata entry ``num_heads`` overrides). Keys and shapes are checked strictly.
* ``v0.4_hubert_cfg_pytorch.pkl``: a plain pickle ``{base_cfg, audio2motion_cfg, default_kwargs}``
  read with :func:`core.weights.load_pickle`; :func:`load_cfg` keeps what matters for motion
  (sampling steps, window overlap, cond_frame rule, smoothing, emotion track, clip ranges, blink
  template, pose controls, condition flags) and falls back to the reference defaults for anything
  missing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from ...errors import CheckpointError
from ...weights import check_state_dict, flatten_state, load_checkpoint, load_pickle, looks_like
from .model import LMDM, infer_config

PREFIX = "model_state_dict."


def lmdm_state_dict(path: os.PathLike) -> Dict[str, torch.Tensor]:
    """The flat MotionDecoder state dict of an official ``.pth`` or a safetensors twin."""
    obj = load_checkpoint(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state_dict"), Mapping):
        obj = obj["model_state_dict"]
    flat = flatten_state(obj)
    if any(k.startswith(PREFIX) for k in flat):
        flat = {k[len(PREFIX):]: v for k, v in flat.items() if k.startswith(PREFIX)}
    if not flat:
        raise CheckpointError(f"{Path(path).name}: holds no tensors; is it Ditto's lmdm_v0.4_hubert.pth?")
    return flat


def _metadata_heads(path: Path) -> Optional[int]:
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return int(meta["num_heads"]) if "num_heads" in meta else None
    except Exception:  # unreadable metadata: the checkpoint loader reports real problems
        return None


def load_lmdm(path: os.PathLike, num_heads: Optional[int] = None, device="cpu",
              dtype: torch.dtype = torch.float32, batch_cfg: bool = False) -> LMDM:
    """Ditto's LMDM (eval mode, ``.config`` dict) from ``lmdm_v0.4_hubert.pth`` or a safetensors twin.

    ``batch_cfg``: run the two guidance passes as one batch (faster on a GPU, not bit-identical)."""
    path = Path(path)
    state = lmdm_state_dict(path)
    heads = num_heads or _metadata_heads(path)
    try:
        cfg = infer_config(state, heads)
    except CheckpointError as exc:
        hint = looks_like(state, "ditto")
        raise CheckpointError(f"{path.name}: {exc}" + (f".{hint}" if hint else "")) from exc
    model = LMDM(**cfg)
    check_state_dict(model, state, f"{path.name} (Ditto LMDM)")
    model.load_state_dict(state, strict=True)
    model.config["path"] = str(path)
    model.batch_cfg = bool(batch_cfg)
    model = model.to(device=device, dtype=dtype)
    model.alphas_cumprod = model.alphas_cumprod.float()   # the schedule stays float32 in any dtype
    model.rotary.freqs = model.rotary.freqs.float()
    return model.requires_grad_(False).eval()


# --------------------------------------------------------------------------- cfg pickle
@dataclass
class DittoCfg:
    """What the official cfg pickle says about motion generation (reference defaults when absent)."""

    sampling_timesteps: int = 50
    overlap_v2: int = 10
    fix_kp_cond: int = 0
    fix_kp_cond_dim: Optional[Sequence[int]] = None
    smo_k_d: int = 3
    online_mode: bool = False
    emo: Any = 4                                    # label, labels, or (m, 8) track (torch)
    v_min_max_for_clip: Optional[torch.Tensor] = None   # (4, 265); rows 0 / 1 = min / max
    delta_eye_arr: Optional[torch.Tensor] = None    # (15, 63) blink template
    delta_eye_open_n: Any = 0                       # blink gaps: 0 random 60..100, int, list, < 0 none
    overall_ctrl_info: Dict[str, Any] = field(default_factory=dict)   # e.g. {"delta_pitch": 2}
    relative_d: bool = True
    drive_eye: Optional[bool] = None               # None = True for an image source
    use_d_keys: Any = None
    flag_stitching: bool = True
    fade_type: str = ""
    crop_scale: float = 2.3
    crop_vx_ratio: float = 0.0
    crop_vy_ratio: float = -0.125
    crop_flag_do_rot: bool = True
    ch_info: Optional[dict] = None                 # a reference character's source info (online cfg)
    use_emo: bool = True
    use_sc: bool = True
    use_eye_open: bool = True
    use_eye_ball: bool = True
    seq_frames: int = 80
    motion_feat_dim: int = 265
    audio_feat_dim: int = 1103
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


_TENSORS = ("v_min_max_for_clip", "delta_eye_arr")


def _plain(v):
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v)).float() if v.dtype.kind in "fiub" else v
    if isinstance(v, np.generic):
        return v.item()
    return v


def parse_cfg(cfg: Mapping) -> DittoCfg:
    """A loaded cfg dict -> :class:`DittoCfg` (unknown or missing keys are tolerated)."""
    out = DittoCfg(raw=dict(cfg) if isinstance(cfg, Mapping) else {})
    if not isinstance(cfg, Mapping):
        raise CheckpointError("the Ditto cfg pickle does not hold a dict")
    names = {f for f in DittoCfg.__dataclass_fields__ if f != "raw"}
    a2m = cfg.get("audio2motion_cfg") or {}
    kw = cfg.get("default_kwargs") or {}
    for src in (a2m, kw):
        if not isinstance(src, Mapping):
            continue
        for k, v in src.items():
            if k in names and v is not None:
                v = _plain(v)
                if k == "emo" and isinstance(v, torch.Tensor) and v.ndim == 0:
                    v = int(v)
                setattr(out, k, v)
    for k in _TENSORS:
        v = getattr(out, k)
        if v is not None and not isinstance(v, torch.Tensor):
            setattr(out, k, torch.as_tensor(np.asarray(v), dtype=torch.float32))
    if isinstance(out.fix_kp_cond_dim, (list, tuple, np.ndarray, torch.Tensor)):
        out.fix_kp_cond_dim = [int(x) for x in list(out.fix_kp_cond_dim)]
    if not isinstance(out.overall_ctrl_info, Mapping):
        out.overall_ctrl_info = {}
    return out


def load_cfg(path: os.PathLike) -> DittoCfg:
    """Ditto's cfg pickle (e.g. ``v0.4_hubert_cfg_pytorch.pkl``) without executing code."""
    return parse_cfg(load_pickle(path))


__all__ = ["DittoCfg", "load_cfg", "load_lmdm", "lmdm_state_dict", "parse_cfg"]
