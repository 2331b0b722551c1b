"""The gather-built 3-D sampler (core.sampling, the MPS path of LivePortrait's warps) against torch's
``grid_sample`` on the CPU: the warping module's sampling patterns, the borders, non-finite
coordinates, half precision and the warping network end to end.

Bound: each output is the sum of 8 corner terms ``value * weight``; the source coordinates are
computed by the same float32 operations as torch's kernel (identical), each weight is a product of
three factors, one of which (``1 - frac`` against torch's ``lo + 1 - i``) may differ by one rounding.
So the two results differ by at most about (8 summed + 4 in the weight) roundings of the largest
|value| (the weights sum to 1): ``tol.close_elementwise(ops=12)``, 1.4e-6 for values in [-1, 1],
inside the 1e-5 that the MPS path promises.

The axis-separable sampler (LivePortrait's sparse motions, translated identity grids) takes the same taps
per axis, with weights ``max(0, 1 - |i - j|)`` (one rounding from torch's), and sums them in another
order; the zero entries of its interpolation matrices add exact zeros, so the same bound holds.
"""
import pytest
import torch
from torch.nn import functional as F

import tolerance as tol
from core.sampling import gather_grid_sample_3d, grid_sample_3d, resolve_sampler, separable_grid_sample_3d
from core.liveportrait.warping import coordinate_grid_3d

SUM_OPS = 12


def _torch(volume, grid):
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _check(volume, grid):
    got = gather_grid_sample_3d(volume, grid)
    ref = _torch(volume, grid)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    err = tol.close_elementwise(got, ref, ops=SUM_OPS, magnitude=float(volume.abs().max()))
    assert float((got - ref).abs().max()) <= 1e-5 * float(volume.abs().max())
    return err


def test_warping_pattern_shared_volume_and_borders():
    """LivePortrait's dense-motion pattern: identity grid shifted by keypoint offsets, K+1 motions
    stacked along depth against ONE shared volume (batch 1); shifts push points past every face."""
    g = torch.Generator().manual_seed(0)
    c, d, h, w = 4, 16, 64, 64
    volume = torch.rand(1, c, d, h, w, generator=g) * 2 - 1
    grid = coordinate_grid_3d(d, h, w)
    shifts = torch.rand(6, 1, 1, 1, 3, generator=g) * 0.6 - 0.3  # up to 0.3 outside the cube
    sparse = (grid.unsqueeze(0) + shifts).reshape(1, 6 * d, h, w, 3)
    _check(volume, sparse)


def test_batched_volumes_and_out_of_range_points():
    g = torch.Generator().manual_seed(1)
    volume = torch.randn(3, 5, 7, 9, 11, generator=g).clamp(-1, 1)
    grid = torch.rand(3, 4, 6, 8, 3, generator=g) * 2.6 - 1.3   # many corners outside
    # exact borders and exact voxel centres
    grid[0, 0, 0, :3] = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 0.0]])
    grid[1, 0, 0, 0] = torch.tensor([1 / 11 - 1, 1 / 9 - 1, 1 / 7 - 1])
    _check(volume, grid)


def test_non_finite_coordinates_read_zero_like_grid_sample():
    volume = torch.ones(1, 2, 4, 4, 4)
    grid = torch.zeros(1, 1, 1, 5, 3)
    grid[0, 0, 0, 0, 0] = float("nan")
    grid[0, 0, 0, 1, 1] = float("inf")
    grid[0, 0, 0, 2, 2] = float("-inf")
    grid[0, 0, 0, 3, 0] = 1e30
    got = gather_grid_sample_3d(volume, grid)
    assert torch.isfinite(got).all()
    assert torch.equal(got[..., :4], torch.zeros_like(got[..., :4]))
    assert torch.allclose(got[..., 4], torch.ones(1, 2, 1, 1))   # the finite centre point
    ref = _torch(volume, grid)
    finite = torch.isfinite(ref)
    assert torch.equal(got[finite], ref[finite])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_volume_keeps_its_dtype(dtype):
    g = torch.Generator().manual_seed(2)
    volume = torch.rand(1, 3, 5, 6, 7, generator=g)
    grid = torch.rand(1, 2, 3, 4, 3, generator=g) * 2 - 1
    got = gather_grid_sample_3d(volume.to(dtype), grid)
    assert got.dtype == dtype
    ref = _torch(volume, grid)
    # 8 half-precision roundings of values in [0, 1] (the sum is accumulated in the half dtype)
    eps = torch.finfo(dtype).eps
    assert float((got.float() - ref).abs().max()) <= SUM_OPS * eps


def test_sampler_choice():
    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert resolve_sampler("auto", cpu) == "torch"
    assert resolve_sampler("auto", mps) == "gather"
    assert resolve_sampler("gather", cpu) == "gather"
    with pytest.raises(ValueError, match="sampler must be one of"):
        resolve_sampler("cubic", cpu)
    v, grid = torch.rand(1, 1, 2, 2, 2), torch.zeros(1, 1, 1, 1, 3)
    assert torch.equal(grid_sample_3d(v, grid, "torch"), _torch(v, grid))
    with pytest.raises(ValueError, match="volume and a"):
        gather_grid_sample_3d(v[0], grid)


# --------------------------------------------------------------------------- axis-separable grids
def _axis_grid(gx, gy, gz):
    """(Nv, G, n) axis coordinates -> the full grids (Nv, G, D', H', W', 3) they stand for."""
    return torch.stack(torch.broadcast_tensors(gx[:, :, None, None, :], gy[:, :, None, :, None],
                                               gz[:, :, :, None, None]), dim=-1)


def _check_separable(volume, gx, gy, gz):
    got = separable_grid_sample_3d(volume, gx, gy, gz)
    nv, g = gx.shape[:2]
    full = _axis_grid(gx, gy, gz)                                     # (Nv, G, D', H', W', 3)
    ref = torch.stack([_torch(volume, full[:, j]) for j in range(g)], dim=1)
    assert got.shape == ref.shape == (nv, g, volume.shape[1], gz.shape[-1], gy.shape[-1], gx.shape[-1])
    assert got.dtype == torch.float32
    # the same taps as the gather sampler, weights within a rounding; the zero entries of the interpolation
    # matrices add exact zeros: the bound of the module docstring holds
    tol.close_elementwise(got, ref, ops=SUM_OPS, magnitude=float(volume.abs().max()))


def test_separable_sampler_translated_identity_grids_shared_volume():
    """LivePortrait's sparse motions: the identity grid translated by K+1 offsets, one shared volume; the
    offsets push points past every face of the cube."""
    g = torch.Generator().manual_seed(2)
    c, d, h, w = 4, 16, 64, 64
    volume = torch.rand(1, c, d, h, w, generator=g) * 2 - 1
    grid = coordinate_grid_3d(d, h, w)
    axes = (grid[0, 0, :, 0], grid[0, :, 0, 1], grid[:, 0, 0, 2])
    shifts = torch.rand(1, 6, 3, generator=g) * 0.6 - 0.3
    gx, gy, gz = ((ax - shifts[..., i:i + 1]) for i, ax in enumerate(axes))
    _check_separable(volume, gx, gy, gz)


def test_separable_sampler_per_volume_grids_borders_and_sizes():
    g = torch.Generator().manual_seed(3)
    volume = torch.randn(3, 5, 7, 9, 11, generator=g).clamp(-1, 1)
    gx = torch.rand(3, 2, 6, generator=g) * 2.6 - 1.3                 # other output sizes, points outside
    gy = torch.rand(3, 2, 4, generator=g) * 2.6 - 1.3
    gz = torch.rand(3, 2, 5, generator=g) * 2.6 - 1.3
    gx[0, 0, :3] = torch.tensor([-1.0, 1.0, 1 / 11 - 1])             # exact faces and a voxel centre
    gz[1, 1, :2] = torch.tensor([-1.0, 1.0])
    _check_separable(volume, gx, gy, gz)


def test_separable_sampler_non_finite_coordinates_and_autocast():
    volume = torch.ones(1, 2, 4, 4, 4)
    gx = torch.tensor([[[0.0, float("nan"), float("inf"), -float("inf")]]])
    gy = gz = torch.zeros(1, 1, 4)
    out = separable_grid_sample_3d(volume, gx, gy, gz)
    assert torch.equal(out[..., 1:], torch.zeros_like(out[..., 1:])) and torch.all(out[..., 0] == 1)
    # autocast is off inside: a bf16 autocast region gives the float32 result
    g = torch.Generator().manual_seed(4)
    volume = torch.rand(1, 3, 5, 6, 7, generator=g)
    gx, gy, gz = (torch.rand(1, 2, n, generator=g) * 2 - 1 for n in (7, 6, 5))
    want = separable_grid_sample_3d(volume, gx, gy, gz)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(separable_grid_sample_3d(volume, gx, gy, gz), want)
    with pytest.raises(ValueError, match="axis grids"):
        separable_grid_sample_3d(volume, gx, gy[:, :1], gz)
