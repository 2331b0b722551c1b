"""Ditto's diffusion schedule and DDIM sampler (official ``core/models/modules/LMDM.py``).

* Schedule: cosine, 1000 steps, ``s = 8e-3``; betas in float64, clipped to [0, 0.999], then
  float32; ``a = cumprod(1 - beta)`` in float32.
* Steps: ``times = reversed(int(linspace(-1, 999, S + 1)))`` (float32 linspace, truncated), pairs
  ``(t, t')``. For ``t' < 0`` the result is ``x0``; otherwise, with eta = 1::

      sigma = sqrt((1 - a_t / a_t') (1 - a_t') / (1 - a_t)),   c = sqrt(1 - a_t' - sigma^2)
      x = x0 sqrt(a_t') + c eps + sigma z_i

  where ``x0`` is the guided prediction (``u + w (c - u)``, w = 2) and
  ``eps = sqrt(1/(1-a_t)) x_t - x0 / sqrt(1/a_t - 1)``. No clipping.
* Random draws (reference order): the S-1 step noises ``z_0..z_{S-2}`` are drawn once per run and
  reused by every window; each window then draws only ``x_T``. :func:`draw_step_noise` and
  :func:`draw_x_T` draw from a ``torch.Generator`` in exactly that order, so a CPU generator seeded
  with ``s`` reproduces the reference run under ``torch.manual_seed(s)`` on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...errors import Cancelled

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
    """The per-step constants of one sampling setup (all float32 tensors on ``alphas_cumprod``'s device)."""

    pairs: List[Tuple[int, int]]
    alpha_next_sqrt: torch.Tensor   # (S-1,)
    c: torch.Tensor                 # (S-1,)
    sigma: torch.Tensor             # (S-1,)

    @property
    def steps(self) -> int:
        return len(self.pairs)


def make_schedule(alphas_cumprod: torch.Tensor, steps: int, eta: float = 1.0) -> Schedule:
    pairs = time_pairs(steps, alphas_cumprod.shape[0])
    an, cs, sg = [], [], []
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
    empty = alphas_cumprod.new_zeros(0)
    st = lambda v: torch.stack(v) if v else empty  # noqa: E731
    return Schedule(pairs, st(an), st(cs), st(sg))


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
def ddim_sample(model, cond_frame: torch.Tensor, cond: torch.Tensor, steps: int, x_T: torch.Tensor,
                step_noise: torch.Tensor, guidance: float = 2.0, schedule: Optional[Schedule] = None,
                trajectory: Optional[list] = None, step_callback: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """DDIM (eta 1) with classifier-free guidance for one window.

    ``cond_frame`` (B, 265), ``cond`` (B, L, C), ``x_T`` (B, L, 265), ``step_noise`` (S-1, B, L, 265)
    (or (S-1, 1, L, 265), broadcast). ``trajectory``, when a list, receives ``x`` before each step and
    then the output. ``step_callback`` is called after every step (progress / cancellation).
    """
    dev = model.final_layer.weight.device
    dtype = model.final_layer.weight.dtype
    sched = schedule if schedule is not None else make_schedule(model.alphas_cumprod, steps)
    if step_noise.shape[0] < sched.steps - 1:
        raise ValueError(f"{sched.steps} steps need {sched.steps - 1} step noises, got {step_noise.shape[0]}")
    cond_frame = cond_frame.to(dev, dtype)
    cond = cond.to(dev, dtype)
    x = x_T.to(dev, torch.float32)          # the diffusion state stays float32 whatever the model dtype
    b = x.shape[0]
    enc_c = model.encode_cond(cond, b)      # step-independent: computed once per window
    enc_u = model.encode_cond(None, b)
    i = 0
    for t, t_next in sched.pairs:
        if trajectory is not None:
            trajectory.append(x)
        tt = torch.full((1,), t, dtype=torch.long, device=dev)
        x0 = model.guided(x.to(dtype), cond_frame, enc_c, enc_u, tt, guidance).float()
        if t_next < 0:
            x = x0
        else:
            eps = model.noise_from_x0(x, tt, x0)
            z = step_noise[i].to(dev, torch.float32)
            x = x0 * sched.alpha_next_sqrt[i] + sched.c[i] * eps + sched.sigma[i] * z
            i += 1
        if step_callback is not None:
            step_callback()
    if trajectory is not None:
        trajectory.append(x)
    return x


def check_stop(should_stop: Optional[Callable[[], bool]]) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("Ditto motion generation was cancelled")


__all__ = ["Schedule", "check_stop", "cosine_alphas_cumprod", "ddim_sample", "draw_step_noise", "draw_x_T",
           "make_generator", "make_schedule", "time_pairs"]
