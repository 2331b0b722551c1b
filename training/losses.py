"""The training objective (the reference's, ``antgroup/ditto-talkinghead`` branch ``train``).

x0-prediction under the 1000-step cosine schedule
(:func:`~..core.motion.ditto.sampler.cosine_alphas_cumprod`, the one
:func:`~..core.motion.ditto.sampler.make_schedule` samples with), ``t`` uniform in [0, 1000),
``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``; loss = sum over the parts scale, pitch, yaw, roll, t,
exp of the MSE of position, velocity (first difference) and acceleration (second difference), each
averaged over its own dims (optionally + first frame vs ``cond_frame``, the reference's
``--use_last_frame_loss``). Classifier-free guidance training: with probability 0.2 per sample the
encoded condition is replaced by the null embedding (``null_cond_embed`` / ``null_cond_hidden``,
exactly the model's unconditional pass). Steps, noise and drops come from ``(seed, step)``
(:func:`draw_step`).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch

from ..core.motion.ditto.model import LMDM
from .common import PARTS, generator


def part_losses(pred: torch.Tensor, target: torch.Tensor, weights: Optional[Mapping[str, float]] = None,
                cond_frame: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The reference's per-part losses (float32): for every part ``k`` of :data:`~.common.PARTS`,
    ``k_P`` = MSE of the values, ``k_V`` of the first and ``k_A`` of the second frame differences,
    each averaged over its (B, frames, part dims) and times the part weight; with ``cond_frame``
    also ``k_L`` = MSE of the first predicted frame vs ``cond_frame``."""
    pred, target = pred.float(), target.float()
    out: Dict[str, torch.Tensor] = {}
    for k, (s, e) in PARTS.items():
        w = 1.0 if weights is None else float(weights.get(k, 1.0))
        p, g = pred[..., s:e], target[..., s:e]
        vp, vg = p[:, 1:] - p[:, :-1], g[:, 1:] - g[:, :-1]
        ap, ag = vp[:, 1:] - vp[:, :-1], vg[:, 1:] - vg[:, :-1]
        out[f"{k}_P"] = (p - g).pow(2).mean() * w
        out[f"{k}_V"] = (vp - vg).pow(2).mean() * w
        out[f"{k}_A"] = (ap - ag).pow(2).mean() * w
        if cond_frame is not None:
            out[f"{k}_L"] = (p[:, 0] - cond_frame.float()[:, s:e]).pow(2).mean() * w
    return out


def q_sample(model: LMDM, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` with the model's (float32 cosine) schedule."""
    a = model.alphas_cumprod.to(x0.device)[t].float().reshape(-1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def diffusion_loss(model: LMDM, x0: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, keep: Optional[torch.Tensor] = None,
                   part_weights: Optional[Mapping[str, float]] = None,
                   last_frame_loss: bool = False) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Total loss and its parts for one batch: ``x0`` (B, L, 265), ``cond_frame`` (B, 265), ``cond``
    (B, L, C), integer steps ``t`` (B,), ``noise`` like ``x0``, ``keep`` (B,) bool = rows that keep
    their condition (the others get the null condition, i.e. the unconditional pass)."""
    b = x0.shape[0]
    x_t = q_sample(model, x0, t, noise)
    tokens, hidden = model.encode_cond(cond, b)
    if keep is not None and not bool(keep.all()):
        tokens = torch.where(keep[:, None, None], tokens, model.null_cond_embed.to(tokens.dtype).expand_as(tokens))
        hidden = torch.where(keep[:, None], hidden, model.null_cond_hidden.to(hidden.dtype).expand_as(hidden))
    pred = model.decode(x_t, cond_frame, tokens, hidden, t)
    parts = part_losses(pred, x0, part_weights, cond_frame if last_frame_loss else None)
    return torch.stack(list(parts.values())).sum(), parts


def draw_step(batch_size: int, seq_frames: int, motion_dim: int, seed: int, step: int,
              cond_drop_prob: float = 0.2, n_timesteps: int = 1000) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t (B,), noise (B, L, D), keep (B,)) of one training step, drawn on the CPU from ``(seed, step)``."""
    g = generator(seed, "step", step)
    t = torch.randint(0, n_timesteps, (batch_size,), generator=g)
    noise = torch.randn((batch_size, seq_frames, motion_dim), generator=g)
    keep = torch.rand((batch_size,), generator=g) >= cond_drop_prob
    return t, noise, keep


@torch.no_grad()
def fixed_batch_loss(model: LMDM, batch: Mapping[str, torch.Tensor], seed: int = 0, cond_drop_prob: float = 0.0,
                     part_weights: Optional[Mapping[str, float]] = None) -> Tuple[float, Dict[str, float]]:
    """Loss of ``model`` on ``batch`` with steps and noise fixed by ``seed`` (for evaluation)."""
    dev = model.final_layer.weight.device
    x0 = batch["x0"].to(dev, torch.float32)
    t, noise, keep = draw_step(x0.shape[0], x0.shape[1], x0.shape[2], seed, -1, cond_drop_prob,
                               model.alphas_cumprod.shape[0])
    dt = model.final_layer.weight.dtype
    total, parts = diffusion_loss(model, x0, batch["cond_frame"].to(dev, dt), batch["cond"].to(dev, dt), t.to(dev),
                                  noise.to(dev), keep.to(dev), part_weights)
    return float(total), {k: float(v) for k, v in parts.items()}


__all__ = ["diffusion_loss", "draw_step", "fixed_batch_loss", "part_losses", "q_sample"]
