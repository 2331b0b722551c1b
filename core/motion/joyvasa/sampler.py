"""JoyVASA's sampler (``DitTalkingHead.sample``): DDPM ancestral sampling with an x0 target and
classifier-free guidance on the audio.

For t = T..1 (T = 50), with the schedule buffers (index 0 = ``beta_0 = 0``)::

    x0   = u + s (c - u)          u, c = denoiser outputs (last L tokens) for the batch [null audio, audio]
    x    = c0 x_t + c1 x0 + sigma_t z
    c0   = (1 - ab_{t-1}) sqrt(a_t) / (1 - ab_t)      c1 = (1 - a_t) sqrt(ab_{t-1}) / (1 - ab_t)
    sigma_t = sigmas_inflex[t]    (flexibility 0)     z ~ N(0, I) for t > 1, z = 0 at t = 1

The unconditional entry replaces the window's L audio tokens by ``null_audio_feat``; the previous
motion / audio context is the same for both entries (:func:`guided_denoiser`).

Shape (shared with Ditto's sampler): ``sample(denoiser, x_T, schedule, noise, progress)`` with
``denoiser(x, t) -> x0`` a callable closing over the window's audio, context and guidance, ``schedule``
a :class:`Schedule` (:func:`make_schedule`) and ``noise`` the pre-drawn z for t = T..2 (the caller
controls the draw order, :mod:`.stream`; all draws are made on the CPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import torch

from ...progress import Progress, ProgressFn, as_progress

NoiseFn = Callable[[int], torch.Tensor]
Denoiser = Callable[[torch.Tensor, int], torch.Tensor]


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


@dataclass
class Schedule:
    """The timesteps ``T..1`` of one run and the coefficients of each step (float32 tensors on the
    diffusion schedule's device): ``x = c0 x_t + c1 x0 + sigma z``."""

    timesteps: List[int]
    c0: torch.Tensor        # (S,)
    c1: torch.Tensor        # (S,)
    sigma: torch.Tensor     # (S,); 0 at t = 1

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def make_schedule(sched) -> Schedule:
    """The :class:`Schedule` of a :class:`.model.DiffusionSchedule` (``model.diffusion_sched``): every
    step's coefficients from :func:`step_coefficients`, one t at a time as the reference computes them."""
    timesteps = list(range(sched.num_steps, 0, -1))
    c0, c1, sigma = zip(*(step_coefficients(sched, t) for t in timesteps))
    return Schedule(timesteps, torch.stack(c0), torch.stack(c1), torch.stack(sigma))


@torch.no_grad()
def guided_denoiser(model, audio_feat: torch.Tensor, prev_motion_feat: Optional[torch.Tensor] = None,
                    prev_audio_feat: Optional[torch.Tensor] = None, cfg_scale: float = 2.8,
                    indicator: Optional[torch.Tensor] = None) -> Denoiser:
    """JoyVASA's denoiser for one window: ``denoiser(x, t) -> x0 = u + s (c - u)``, the denoising
    network run once on the batch [null audio, audio] (last L tokens of each).

    ``audio_feat`` (N, L, d); ``prev_*`` (the previous window's last motion / audio features) default to
    the learned start context."""
    net = model.denoising_net
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
    cross = net.cross_attention(torch.cat([prev_audio_in, audio_in], dim=1))  # once per window (None: stock)

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        step = torch.full((2 * n,), int(t), dtype=torch.long, device=device)
        res = net(torch.cat([x] * 2, dim=0), audio_in, prev_motion_in, prev_audio_in, step, indicator_in,
                  cross=cross)
        uncond, cond = res[:n, -length:], res[n:, -length:]
        return uncond + cfg_scale * (cond - uncond)

    return denoise


@torch.no_grad()
def sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: Schedule, noise: Optional[torch.Tensor] = None,
           progress: Union[Progress, ProgressFn, None] = None) -> torch.Tensor:
    """DDPM ancestral sampling from ``x_T`` (N, L, m), in ``x_T``'s dtype on its device.

    ``denoiser(x, t) -> x0`` (e.g. :func:`guided_denoiser`) is called once per step ``t = T..1``.
    ``noise`` (S-1, N, L, m): the pre-drawn z for t = T..2 in that order (t = 1 adds none); None draws
    each from the global CPU generator. ``progress``: a :class:`~core.progress.Progress` or
    ``progress(done, total)`` callback, stepped after every step (the one place a run is cancelled)."""
    n_noisy = schedule.steps - 1
    if noise is not None and noise.shape[0] < n_noisy:
        raise ValueError(f"{schedule.steps} steps need {n_noisy} noise draws, got {noise.shape[0]}")
    bar = as_progress(progress, schedule.steps)
    x = x_T
    for i, t in enumerate(schedule.timesteps):
        if i < n_noisy:
            z = noise[i] if noise is not None else torch.randn(tuple(x.shape), dtype=torch.float32)
            z = z.to(device=x.device, dtype=x.dtype)
        else:
            z = torch.zeros_like(x)
        x0 = denoiser(x, t)
        x = schedule.c0[i] * x + schedule.c1[i] * x0 + schedule.sigma[i] * z
        bar.step()
    return x


__all__ = ["Denoiser", "NoiseFn", "Schedule", "cpu_noise", "guided_denoiser", "make_schedule", "sample",
           "step_coefficients"]
