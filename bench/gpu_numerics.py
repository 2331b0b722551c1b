"""LivePortrait numerics on an accelerator against the CPU, at the official size (seed-0 reference weights).

    python bench/gpu_numerics.py [--device cuda] [--json out.json]

Builds the official-size appearance extractor, warping module and SPADE decoder with the reference data's
seeded weights (tests/lp_fullsize.py), renders the reference's two driving keypoint sets on the CPU in fp32
(the ground truth, itself checked against the official outputs by tests/test_lp_fullsize.py), then on
``--device`` in fp32 (TF32 off), fp16 and bf16, and reports per precision the max / mean absolute error and the
PSNR of the 512x512 faces against the CPU fp32 ones, with the time per call. ``--device cpu`` runs the same
comparison on the CPU (half precision against fp32 there). Part of bench/gpu_check.sh.
"""
import argparse
import math
import sys
import time
from types import SimpleNamespace

import torch

from common import ROOT, report  # noqa: E402  (puts the repo root on sys.path)

sys.path.insert(0, str(ROOT / "tests"))  # the seeded reference weights live with the tests
from lp_fullsize import COMPACT, seeded_module  # noqa: E402
from core.device import autocast, resolve_dtype  # noqa: E402
from core.liveportrait.load import LivePortraitModels, preset  # noqa: E402
from core.liveportrait.render import LivePortraitSource, render_frames  # noqa: E402


def render(nets, ref, device, precision):
    dev = torch.device(device)
    for m in nets.values():
        m.to(dev)
    x = (ref["input.I_s_u8"].permute(2, 0, 1).unsqueeze(0).float() / 255).to(dev)
    with torch.inference_mode(), autocast(dev, resolve_dtype(precision, dev)):
        feature = nets["F"](x)
    models = LivePortraitModels(nets["F"], None, nets["W"], nets["G"], None, config=preset("liveportrait"))
    source = LivePortraitSource(feature_3d=feature, motion=SimpleNamespace(x_s=ref["W.in_kp_source"][:1]))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = torch.cat(list(render_frames(models, source, ref["W.in_kp_driving"], batch_size=2, device=dev,
                                       precision=precision)))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def compare(got, want):
    err = (got - want).abs()
    mse = float(err.square().mean())
    return {"max_abs": round(float(err.max()), 6), "mean_abs": round(float(err.mean()), 7),
            "psnr_db": round(10 * math.log10(1.0 / max(mse, 1e-20)), 2), "finite": bool(torch.isfinite(got).all())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precisions", default="fp32,fp16,bf16")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from safetensors.torch import load_file

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = load_file(str(COMPACT))
    g = seeded_module("spade_generator")
    g.optimize_for_inference()
    nets = {"F": seeded_module("appearance_feature_extractor"), "W": seeded_module("warping_module"), "G": g}
    cpu32, t_cpu = render(nets, ref, "cpu", "fp32")
    res = {"torch": torch.__version__, "device": a.device, "reference": "CPU fp32, same weights and inputs",
           "cpu_fp32_s_per_call": round(t_cpu, 3), "frames": int(cpu32.shape[0])}
    if a.device.startswith("cuda") and torch.cuda.is_available():
        res["card"] = torch.cuda.get_device_name()
    for precision in a.precisions.split(","):
        render(nets, ref, a.device, precision)  # warm-up (kernels, prepared weights)
        out, secs = render(nets, ref, a.device, precision)
        res[precision] = dict(compare(out.cpu(), cpu32), s_per_call=round(secs, 4))
    report(res, a.json)


if __name__ == "__main__":
    main()
