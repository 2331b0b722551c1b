"""Trilinear sampling of a 3-D volume, built from gathers (runs on every torch backend).

``torch.nn.functional.grid_sample`` on a 5-D input has no kernel on Apple GPUs (MPS): torch
falls back to the CPU there, copying the volume out and back every call. :func:`gather_grid_sample_3d`
computes the same thing - ``grid_sample(volume, grid, mode="bilinear", padding_mode="zeros",
align_corners=False)`` - from operations every backend has (floor, comparisons, index_select,
multiply-add), so the warp stays on the device.

The maths, per output point with grid coordinates ``(x, y, z)`` in [-1, 1]:

* source index along an axis of size ``n``: ``i = ((c + 1) * n - 1) / 2`` (align_corners=False);
* the 8 corners ``(floor(i) + {0, 1})`` per axis, weighted by the products of the distances to the
  opposite corner (trilinear weights, summing to 1);
* a corner outside the volume reads zero (zeros padding): its weight is dropped, the others kept.

Non-finite coordinates read zero (every corner out of range), as ``grid_sample`` does. The volume is
read channels-last (one contiguous row of C values per voxel), so each corner is one ``index_select``
of whole rows: the layout CPU caches and GPU memory coalescing like.

:func:`grid_sample_3d` picks the kernel: ``"auto"`` = this one on MPS, torch's elsewhere;
``"gather"`` / ``"torch"`` force one (the sampler a model uses is a plain attribute, see
:class:`core.liveportrait.warping.WarpingNetwork`).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["SAMPLERS", "gather_grid_sample_3d", "grid_sample_3d", "resolve_sampler"]

#: the 3-D sampler choices
SAMPLERS = ("auto", "torch", "gather")


def resolve_sampler(sampler: str, device: torch.device) -> str:
    """``"auto"`` -> ``"gather"`` on MPS (no 3-D grid_sample kernel there), else ``"torch"``."""
    sampler = (sampler or "auto").lower()
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    if sampler == "auto":
        return "gather" if device.type == "mps" else "torch"
    return sampler


def _axis(coord: torch.Tensor, size: int):
    """Grid coordinate -> (lower corner index as long, weight of the upper corner, and the
    validity of the lower and upper corners) along one axis of ``size`` voxels."""
    i = ((coord + 1) * size - 1) / 2
    # non-finite or far out: park it two voxels outside, where both corners read zero (this also
    # keeps the float -> long conversion in range)
    i = torch.nan_to_num(i, nan=-2.0, posinf=size + 1.0, neginf=-2.0).clamp_(-2.0, size + 1.0)
    lo = torch.floor(i)
    frac = i - lo
    lo = lo.long()
    return lo, frac, (lo >= 0) & (lo < size), (lo >= -1) & (lo < size - 1)


def gather_grid_sample_3d(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``grid_sample(volume, grid, "bilinear", "zeros", align_corners=False)`` for a 5-D ``volume``
    ``(N, C, D, H, W)`` and ``grid`` ``(N, D', H', W', 3)`` (x, y, z in [-1, 1]) -> ``(N, C, D', H', W')``
    in the volume's dtype. Coordinates and weights are computed in float32 at least."""
    if volume.dim() != 5 or grid.dim() != 5 or grid.shape[-1] != 3:
        raise ValueError(f"expected a (N, C, D, H, W) volume and a (N, D', H', W', 3) grid, got "
                         f"{tuple(volume.shape)} and {tuple(grid.shape)}")
    n, c, d, h, w = volume.shape
    if grid.shape[0] != n:
        raise ValueError(f"volume batch {n} and grid batch {grid.shape[0]} differ")
    _, od, oh, ow, _ = grid.shape
    g = grid if grid.dtype in (torch.float32, torch.float64) else grid.float()
    g = g.reshape(n, -1, 3)
    x0, fx, vx0, vx1 = _axis(g[..., 0], w)
    y0, fy, vy0, vy1 = _axis(g[..., 1], h)
    z0, fz, vz0, vz1 = _axis(g[..., 2], d)
    # rows of C values, one per voxel of every batch item
    rows = volume.permute(0, 2, 3, 4, 1).reshape(n * d * h * w, c)
    base = (torch.arange(n, device=volume.device) * (d * h * w)).view(n, 1)
    out, zero = None, fx.new_zeros(())
    for dz, fz_, vz in ((0, 1 - fz, vz0), (1, fz, vz1)):
        zi = (z0 + dz).clamp_(0, d - 1)
        for dy, fy_, vy in ((0, 1 - fy, vy0), (1, fy, vy1)):
            yi = (y0 + dy).clamp_(0, h - 1)
            wzy, vzy = fz_ * fy_, vz & vy
            for dx, fx_, vx in ((0, 1 - fx, vx0), (1, fx, vx1)):
                xi = (x0 + dx).clamp_(0, w - 1)
                weight = torch.where(vzy & vx, wzy * fx_, zero)
                idx = base + (zi * h + yi) * w + xi
                values = rows.index_select(0, idx.reshape(-1))
                weight = weight.reshape(-1, 1).to(values.dtype)
                if out is None:
                    out = values.mul_(weight)
                else:
                    out.addcmul_(values, weight)
    return out.view(n, od, oh, ow, c).permute(0, 4, 1, 2, 3).contiguous()


def grid_sample_3d(volume: torch.Tensor, grid: torch.Tensor, sampler: str = "auto") -> torch.Tensor:
    """The 5-D bilinear warp with zeros padding and ``align_corners=False`` by the chosen kernel
    (:func:`resolve_sampler`)."""
    if resolve_sampler(sampler, volume.device) == "gather":
        return gather_grid_sample_3d(volume, grid)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
