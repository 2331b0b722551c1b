"""JoyVASA's sampler (``DitTalkingHead.sample``): DDPM ancestral sampling with an x0 target and
classifier-free guidance on the audio.

For t = T..1 (T = 50), with the schedule buffers (index 0 = ``beta_0 = 0``)::

    x0   = u + s (c - u)          u, c = denoiser outputs (last L tokens) for the batch [null audio, audio]
    x    = c0 x_t + c1 x0 + sigma_t z
    c0   = (1 - ab_{t-1}) sqrt(a_t) / (1 - ab_t)      c1 = (1 - a_t) sqrt(ab_{t-1}) / (1 - ab_t)
    sigma_t = sigmas_inflex[t]    (flexibility 0)     z ~ N(0, I) for t > 1, z = 0 at t = 1

The unconditional entry replaces the window's L audio tokens by ``null_audio_feat``; the previous
motion / audio context is the same for both entries. Noise comes from a callable so the caller
controls the draw order (:mod:`.stream`); all draws are made on the CPU.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch

NoiseFn = Callable[[int], torch.Tensor]


def cpu_noise(generator: Optional[torch.Generator], shape) -> NoiseFn:
    """``noise(t)`` drawing ``randn(shape)`` from ``generator`` on the CPU (the global RNG when None)."""
    def draw(_t: int) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return draw


def step_coefficients(sched, t):
    """``(c0, c1, sigma_t)`` of the step from ``t`` (an int, or a LongTensor of steps for all at once).

    Unlike Ditto's DDIM radicands these need no clamp: every schedule :class:`.model.DiffusionSchedule`
    builds has ``1e-4 <= beta_t <= 0.999`` for t >= 1, so ``1 - ab_t >= ~1e-4`` and ``a_t >= 1e-3`` stay far
    from 0 (tests/test_numerics.py sweeps 1..60 steps and more up to 1000)."""
    alpha, alpha_bar, alpha_bar_prev = sched.alphas[t], sched.alpha_bars[t], sched.alpha_bars[t - 1]
    c0 = (1 - alpha_bar_prev) * torch.sqrt(alpha) / (1 - alpha_bar)
    c1 = (1 - alpha) * torch.sqrt(alpha_bar_prev) / (1 - alpha_bar)
    return c0, c1, sched.get_sigmas(t, 0)


@torch.no_grad()
def sample_window(model, audio_feat: torch.Tensor, x_T: torch.Tensor, noise: NoiseFn,
                  prev_motion_feat: Optional[torch.Tensor] = None, prev_audio_feat: Optional[torch.Tensor] = None,
                  cfg_scale: float = 2.8, indicator: Optional[torch.Tensor] = None, keep: Iterable[int] = (),
                  on_step: Optional[Callable[[int], None]] = None) -> Dict[object, torch.Tensor]:
    """One window: ``{"x0": (N, L, m), t: x_t for t in keep}`` (x_t = the state after the step from t + 1).

    ``audio_feat`` (N, L, d); ``prev_*`` default to the learned start context; ``noise(t)`` gives z
    for t = T..2 in that order; ``on_step(t)`` is called after each step (may raise to cancel)."""
    net, sched = model.denoising_net, model.diffusion_sched
    device = audio_feat.device
    n, length = audio_feat.shape[:2]
    if prev_motion_feat is None:
        prev_motion_feat = model.start_motion_feat.expand(n, -1, -1)
    if prev_audio_feat is None:
        prev_audio_feat = model.start_audio_feat.expand(n, -1, -1)
    null = model.null_audio_feat.expand(n, length, -1)
    audio_in = torch.cat([null, audio_feat], dim=0)
    prev_motion_in = torch.cat([prev_motion_feat] * 2, dim=0)
    prev_audio_in = torch.cat([prev_audio_feat] * 2, dim=0)
    indicator_in = torch.cat([indicator] * 2, dim=0) if indicator is not None else None
    keep = set(int(k) for k in keep)
    out: Dict[object, torch.Tensor] = {}
    x = x_T.to(device=device, dtype=audio_feat.dtype)
    for t in range(sched.num_steps, 0, -1):
        z = noise(t).to(device=device, dtype=x.dtype) if t > 1 else torch.zeros_like(x)
        c0, c1, sigma = step_coefficients(sched, t)
        step = torch.full((2 * n,), t, dtype=torch.long, device=device)
        res = net(torch.cat([x] * 2, dim=0), audio_in, prev_motion_in, prev_audio_in, step, indicator_in)
        uncond, cond = res[:n, -length:], res[n:, -length:]
        x0 = uncond + cfg_scale * (cond - uncond)
        x = c0 * x + c1 * x0 + sigma * z
        if t - 1 in keep:
            out[t - 1] = x.clone()
        if on_step is not None:
            on_step(t)
    out["x0"] = x
    return out


__all__ = ["NoiseFn", "cpu_noise", "sample_window", "step_coefficients"]
