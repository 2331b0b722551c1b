"""Ditto's diffusion schedule and DDIM sampler (official ``core/models/modules/LMDM.py``).

* Schedule: cosine, 1000 steps, ``s = 8e-3``; betas in float64, clipped to [0, 0.999], then
  float32; ``a = cumprod(1 - beta)`` in float32.
* Steps: ``times = reversed(int(linspace(-1, 999, S + 1)))`` (float32 linspace, truncated), pairs
  ``(t, t')``. For ``t' < 0`` the result is ``x0``; otherwise, with eta = 1::

      sigma = sqrt((1 - a_t / a_t') (1 - a_t') / (1 - a_t)),   c = sqrt(1 - a_t' - sigma^2)
      x = x0 sqrt(a_t') + c eps + sigma z_i

  where ``x0`` is the guided prediction (``u + w (c - u)``, w = 2) and
  ``eps = sqrt(1/(1-a_t)) x_t - x0 / sqrt(1/a_t - 1)``. No clipping.
* Shape (shared with JoyVASA's sampler): ``sample(denoiser, x_T, schedule, noise, progress)`` with
  ``denoiser(x, t) -> x0`` a callable closing over the window's conditions and the guidance
  (:func:`guided_denoiser` builds Ditto's), ``schedule`` a :class:`Schedule` (:func:`make_schedule`).
* Random draws (reference order): the S-1 step noises ``z_0..z_{S-2}`` are drawn once per run and
  reused by every window; each window then draws only ``x_T``. :func:`draw_step_noise` and
  :func:`draw_x_T` draw from a ``torch.Generator`` in exactly that order, so a CPU generator seeded
  with ``s`` reproduces the reference run under ``torch.manual_seed(s)`` on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ...progress import Progress, ProgressFn, as_progress

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]

N_TIMESTEPS = 1000
COSINE_S = 8e-3


def cosine_alphas_cumprod(n: int = N_TIMESTEPS, s: float = COSINE_S) -> torch.Tensor:
    """(n,) float32 cumulative alphas of the cosine schedule, computed like the reference."""
    steps = torch.arange(n + 1, dtype=torch.float64, device="cpu") / n + s
    f = torch.cos(steps / (1 + s) * math.pi / 2).pow(2)
    f = f / f[0]
    betas = np.clip((1 - f[1:] / f[:-1]).numpy(), 0, 0.999)
    alphas = 1.0 - torch.from_numpy(betas).float()
    return torch.cumprod(alphas, dim=0)


def time_pairs(steps: int, n: int = N_TIMESTEPS) -> List[Tuple[int, int]]:
    """``[(t, t_next), ...]`` for ``steps`` DDIM steps, e.g. 50 -> (999, 979), ..., (19, -1)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    times = torch.linspace(-1, n - 1, steps=steps + 1).int().tolist()[::-1]
    return list(zip(times[:-1], times[1:]))


@dataclass
class Schedule:
    """The timesteps and per-step constants of one sampling setup (float32 tensors on
    ``alphas_cumprod``'s device). Step ``i`` goes from ``pairs[i][0]`` to ``pairs[i][1]``; the
    coefficients are those of the S-1 steps that do not end the run (``t' >= 0``)."""

    pairs: List[Tuple[int, int]]
    alpha_next_sqrt: torch.Tensor   # (S-1,) sqrt(a_t')
    c: torch.Tensor                 # (S-1,) the eps coefficient
    sigma: torch.Tensor             # (S-1,) the noise coefficient
    eps_xt: torch.Tensor            # (S-1,) sqrt(1 / (1 - a_t)): eps = eps_xt x_t - x0 / eps_x0
    eps_x0: torch.Tensor            # (S-1,) sqrt(1 / a_t - 1)

    @property
    def steps(self) -> int:
        return len(self.pairs)


def make_schedule(alphas_cumprod: torch.Tensor, steps: int, eta: float = 1.0) -> Schedule:
    pairs = time_pairs(steps, alphas_cumprod.shape[0])
    an, cs, sg, ex, e0 = [], [], [], [], []
    for t, tn in pairs:
        if tn < 0:
            continue
        a, a_next = alphas_cumprod[t], alphas_cumprod[tn]
        # both radicands are >= 0 in exact arithmetic (with eta = 1 the second is 0 for some step pairs);
        # float32 rounding can push them just below 0, where sqrt gives NaN
        sigma = eta * ((1 - a / a_next) * (1 - a_next) / (1 - a)).clamp_min(0).sqrt()
        cs.append((1 - a_next - sigma ** 2).clamp_min(0).sqrt())
        an.append(a_next.sqrt())
        sg.append(sigma)
        # the reference's predict_noise_from_start, term by term (LMDM.noise_from_x0)
        ex.append(torch.sqrt(1.0 / (1.0 - a)))
        e0.append(torch.sqrt(1.0 / a - 1))
    empty = alphas_cumprod.new_zeros(0)
    st = lambda v: torch.stack(v) if v else empty  # noqa: E731
    return Schedule(pairs, st(an), st(cs), st(sg), st(ex), st(e0))


def draw_step_noise(steps: int, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                    device="cpu") -> torch.Tensor:
    """The run's S-1 step noises (S-1, *shape), drawn one ``randn(shape)`` at a time."""
    out = [torch.randn(tuple(shape), generator=generator, device=device) for _ in range(max(steps - 1, 0))]
    return torch.stack(out) if out else torch.zeros((0, *shape), device=device)


def draw_x_T(shape: Sequence[int], generator: Optional[torch.Generator] = None, device="cpu") -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=device)


def make_generator(seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Generator:
    """A CPU generator: the one given, else seeded with ``seed`` (random seed when None).
    Noise is always drawn on the CPU so a seed gives the same motion on every device."""
    if generator is not None:
        return generator
    g = torch.Generator(device="cpu")
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


@torch.no_grad()
def guided_denoiser(model, cond_frame: torch.Tensor, cond: torch.Tensor, guidance: float = 2.0) -> Denoiser:
    """Ditto's denoiser for one window: ``denoiser(x, t) -> x0`` (float32, on the model's device), the
    classifier-free guided prediction ``u + w (c - u)`` of LMDM ``model`` for ``cond_frame`` (B, 265) and
    ``cond`` (B, L, C). The conditions are encoded once here, not at every step; ``x`` is cast to the
    model's dtype (the diffusion state itself stays float32)."""
    dev = model.final_layer.weight.device
    dtype = model.final_layer.weight.dtype
    cond_frame = cond_frame.to(dev, dtype)
    cond = cond.to(dev, dtype)
    b = cond.shape[0]
    enc_c = model.encode_cond(cond, b)      # step-independent: computed once per window
    enc_u = model.encode_cond(None, b)

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        tt = torch.full((1,), int(t), dtype=torch.long, device=dev)
        return model.guided(x.to(dtype), cond_frame, enc_c, enc_u, tt, guidance).float()

    return denoise


@torch.no_grad()
def sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: Schedule, noise: Optional[torch.Tensor] = None,
           progress: Union[Progress, ProgressFn, None] = None) -> torch.Tensor:
    """DDIM (eta as in ``schedule``) from ``x_T`` (B, L, D), float32 on the device it is on.

    ``denoiser(x, t) -> x0`` (e.g. :func:`guided_denoiser`) is called once per step with the float32
    state and the step's timestep ``t``. ``noise`` (S-1, B, L, D) (or (S-1, 1, L, D), broadcast): the
    pre-drawn step noises ``z_0..z_{S-2}`` (the reference draws them once per run,
    :func:`draw_step_noise`); None draws each from the global CPU generator when needed. ``progress``:
    a :class:`~core.progress.Progress` or ``progress(done, total)`` callback, stepped after every step
    (the one place a run is cancelled)."""
    n_noisy = schedule.steps - 1
    if noise is not None and noise.shape[0] < n_noisy:
        raise ValueError(f"{schedule.steps} steps need {n_noisy} step noises, got {noise.shape[0]}")
    bar = as_progress(progress, schedule.steps)
    x = x_T.to(torch.float32)
    i = 0
    for t, t_next in schedule.pairs:
        x0 = denoiser(x, t).to(torch.float32)
        if t_next < 0:
            x = x0
        else:
            eps = schedule.eps_xt[i] * x - x0 / schedule.eps_x0[i]
            z = noise[i] if noise is not None else torch.randn(tuple(x.shape))
            z = z.to(x.device, torch.float32)
            x = x0 * schedule.alpha_next_sqrt[i] + schedule.c[i] * eps + schedule.sigma[i] * z
            i += 1
        bar.step()
    return x


__all__ = ["Denoiser", "Schedule", "cosine_alphas_cumprod", "draw_step_noise", "draw_x_T", "guided_denoiser",
           "make_generator", "make_schedule", "sample", "time_pairs"]
