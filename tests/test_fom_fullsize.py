"""FOM (vox-256) at the official size with seeded weights (tests/seeded.py): the half-precision quality bound.

Frames animated in bf16 and fp16 (``animate``, the path FOMAnimate runs, networks as ``get_fom`` prepares
them) against the fp32 frames of the same inputs: a 256x256 face (the LivePortrait reference's source) driven
by itself shifted, moved and mirrored. The bound is the product's promise, written in the README ("Half
precision, FOM" under "Memory and devices"): max absolute error, mean absolute error and PSNR of the frames
in 0..1. Seeded weights are not trained ones; the keypoint heads, soft-argmax, jacobians and the dense
motion's mixing weights run in float32 under autocast (core/fom/model.py), which is what keeps the warps of
half-precision frames where fp32 puts them.
"""
import pytest
import torch
from safetensors.torch import load_file

from core.device import autocast, mkldnn_native
from core.fom import FOM, animate, keypoints, preset
from core.fom.model import build
from lp_fullsize import COMPACT, source_image
from seeded import frame_errors, seed_module

#: the half-precision promise (README, "Memory and devices"): (max abs, mean abs, min PSNR dB)
HALF_BOUNDS = {"bf16": (0.15, 0.008, 36.0), "fp16": (0.1, 0.0015, 47.0)}


@pytest.fixture(scope="module")
def fom():
    cfg = preset("vox-256")
    kp, gen = build(cfg)
    seed_module(kp, "fom.kp_detector")
    seed_module(gen, "fom.generator")
    return FOM(kp, gen, cfg).optimize_for_inference()


@pytest.fixture(scope="module")
def faces():
    src = source_image(load_file(str(COMPACT)))  # [1,3,256,256]
    drv = torch.cat([src, src.roll(6, 3), src.roll(-8, 2), src.flip(3)])
    return src.permute(0, 2, 3, 1), drv.permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def fp32_frames(fom, faces):
    return animate(fom, *faces, batch_size=4, device="cpu", precision="fp32")


def test_geometry_stays_float32_under_autocast(fom, faces):
    """Under half-precision autocast the keypoint detector's heads, soft-argmax and jacobian sums, and the dense
    motion's mixing weights, occlusion and flow come out in float32 (the convolutions before them run in half)."""
    x = faces[1].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    want = keypoints(fom, x)
    dense = fom.generator.dense_motion_network
    with torch.inference_mode(), autocast(torch.device("cpu"), torch.bfloat16):
        raw = fom.kp_detector(x)
        src_kp = fom.kp_detector(x[:1])
        motion = dense(dense.downsample(x[:1]), raw, src_kp)
    assert raw["value"].dtype == raw["jacobian"].dtype == torch.float32
    assert {motion[k].dtype for k in ("mask", "occlusion_map", "deformation")} == {torch.float32}
    assert (raw["value"] - want["value"]).abs().max() < 0.004  # the bf16 hourglass moves them by ~0.002


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_quality_bound(fom, faces, fp32_frames, precision):
    if not mkldnn_native(precision):
        pytest.skip(f"this CPU has no native {precision} convolutions in oneDNN (emulated kernels take minutes)")
    half = animate(fom, *faces, batch_size=4, device="cpu", precision=precision)
    assert half.dtype == torch.float32 and half.shape == fp32_frames.shape and torch.isfinite(half).all()
    assert fp32_frames.std() > 0.05  # the seeded networks draw a picture, not a flat field
    e = frame_errors(half, fp32_frames)
    bound_max, bound_mean, bound_psnr = HALF_BOUNDS[precision]
    print(f"{precision}: max {e['max_abs']:.4g} mean {e['mean_abs']:.4g} PSNR {e['psnr_db']:.1f} dB")
    assert e["max_abs"] <= bound_max and e["mean_abs"] <= bound_mean and e["psnr_db"] >= bound_psnr, e
