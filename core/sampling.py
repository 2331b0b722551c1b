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

__all__ = ["SAMPLERS", "gather_grid_sample_3d", "grid_sample_3d", "resolve_sampler", "separable_grid_sample_3d"]

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


def _interpolation_matrix(coord: torch.Tensor, size: int) -> torch.Tensor:
    """``(..., n_out)`` grid coordinates along one axis -> ``(..., n_out, size)`` float32 matrix whose
    row o holds the linear-interpolation weights of output o: ``max(0, 1 - |i_o - j|)`` for voxel j, i.e.
    ``1 - frac`` and ``frac`` on the two voxels around the source index ``i_o`` and zero elsewhere (a tap
    outside the axis has no column: zeros padding). All float maths, no float -> int64 index conversion
    (under torch.compile, inductor's AVX2 code turned a scatter's converted indices into garbage)."""
    i = ((coord.float() + 1) * size - 1) / 2
    # non-finite or far out: two voxels outside, where every weight is zero
    i = torch.nan_to_num(i, nan=-2.0, posinf=size + 1.0, neginf=-2.0).clamp(-2.0, size + 1.0)
    taps = torch.arange(size, dtype=i.dtype, device=i.device)
    return (1 - (i.unsqueeze(-1) - taps).abs()).clamp_min(0)


def separable_grid_sample_3d(volume: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor,
                             gz: torch.Tensor) -> torch.Tensor:
    """``grid_sample(volume, grid, "bilinear", "zeros", align_corners=False)`` for grids whose x depends on
    the output's w only, y on h only and z on d only (a scaled and shifted identity grid: LivePortrait's
    sparse motions are translations of one) as three small matrix products, one per axis.

    ``volume`` ``(Nv, C, D, H, W)``; ``gx`` ``(Nv, G, W')``, ``gy`` ``(Nv, G, H')``, ``gz`` ``(Nv, G, D')``: G grids
    per volume -> ``(Nv, G, C, D', H', W')`` float32 (computed with autocast off; a permuted view).

    Trilinear weights are products of one linear weight per axis, and a corner is outside the volume when
    one of its indices is, so the sum over the 8 corners factors into a 2-tap interpolation along W, then
    H, then D, each a product with a ``(n_out, n_in)`` matrix holding two weights per row. The taps are
    those of :func:`gather_grid_sample_3d`, the weights equal to float32 rounding, and the sums run in
    another order. The products also multiply the zero entries of the matrices, so a NaN or infinity
    anywhere in the volume spreads along its rows, where ``grid_sample`` would only pass on the ones it
    reads: the volume is expected finite (it is a network's activation).

    Why: torch's 5-D ``grid_sample`` runs at ~12 ns per output point on the CPU (68 ms for LivePortrait's
    22 motions of a 4 x 16 x 64 x 64 volume on 2 cores); the three products take a few ms, and need no 3-D
    sampling kernel (MPS has none)."""
    if volume.dim() != 5:
        raise ValueError(f"expected a (N, C, D, H, W) volume, got {tuple(volume.shape)}")
    nv, c, d, h, w = volume.shape
    if not (gx.dim() == gy.dim() == gz.dim() == 3) or not (gx.shape[:2] == gy.shape[:2] == gz.shape[:2]) \
            or gx.shape[0] != nv:
        raise ValueError(f"expected (Nv, G, n) axis grids for a volume batch of {nv}, got {tuple(gx.shape)}, "
                         f"{tuple(gy.shape)} and {tuple(gz.shape)}")
    g, ow, oh, od = gx.shape[1], gx.shape[2], gy.shape[2], gz.shape[2]
    with torch.autocast(device_type=volume.device.type, enabled=False):
        mx = _interpolation_matrix(gx, w)                                   # (Nv, G, W', W)
        my = _interpolation_matrix(gy, h)                                   # (Nv, G, H', H)
        mz = _interpolation_matrix(gz, d)                                   # (Nv, G, D', D)
        # along D, all G grids in one product with the volume: (Nv, G*D', D) @ (Nv, D, C*H*W)
        vol = volume.float().transpose(1, 2).reshape(nv, d, c * h * w)
        t = torch.matmul(mz.reshape(nv, g * od, d), vol)                   # (Nv, G*D', C*H*W)
        # along W, per grid: (Nv*G, D'*C*H, W) @ (Nv*G, W, W')
        t = torch.matmul(t.view(nv * g, od * c * h, w), mx.reshape(nv * g, ow, w).transpose(1, 2))
        # along H, per grid: (Nv*G, H', H) @ (Nv*G, H, D'*C*W')   (one transposing copy)
        t = t.view(nv * g, od * c, h, ow).transpose(1, 2).reshape(nv * g, h, od * c * ow)
        t = torch.matmul(my.reshape(nv * g, oh, h), t)                      # (Nv*G, H', D'*C*W')
    return t.view(nv, g, oh, od, c, ow).permute(0, 1, 4, 3, 2, 5)          # (Nv, G, C, D', H', W') view
