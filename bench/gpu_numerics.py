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
import sys
import time

import torch

from common import ROOT, report  # noqa: E402  (puts the repo root on sys.path)

sys.path.insert(0, str(ROOT / "tests"))  # the seeded reference weights live with the tests
from lp_fullsize import COMPACT, frame_errors, render_seeded, seeded_nets  # noqa: E402


def timed_render(nets, ref, device, precision):
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = render_seeded(nets, ref, dev, precision)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


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
    nets = seeded_nets()
    cpu32, t_cpu = timed_render(nets, ref, "cpu", "fp32")
    res = {"torch": torch.__version__, "device": a.device, "reference": "CPU fp32, same weights and inputs",
           "cpu_fp32_s_per_call": round(t_cpu, 3), "frames": int(cpu32.shape[0])}
    if a.device.startswith("cuda") and torch.cuda.is_available():
        res["card"] = torch.cuda.get_device_name()
    for precision in a.precisions.split(","):
        timed_render(nets, ref, a.device, precision)  # warm-up (kernels, prepared weights)
        out, secs = timed_render(nets, ref, a.device, precision)
        e = frame_errors(out, cpu32)
        res[precision] = {"max_abs": round(e["max_abs"], 6), "mean_abs": round(e["mean_abs"], 7),
                          "psnr_db": round(e["psnr_db"], 2), "finite": bool(torch.isfinite(out).all()),
                          "s_per_call": round(secs, 4)}
    report(res, a.json)


if __name__ == "__main__":
    main()
