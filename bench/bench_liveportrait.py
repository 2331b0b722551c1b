"""LivePortrait speed and memory with full-size (official config) random weights, CPU or GPU.

    python bench/bench_liveportrait.py [--device cpu] [--precision fp32] [--batches 1,2,4] [--json out.json]

Reports seconds per frame of rendering (warping + SPADE decoder, the source prepared once) for
each batch size, of the warping and decoder parts separately (batch 1), of motion extraction
(batch 1 and 8), source preparation, and peak RSS. Weights are random (shapes as published);
speed does not depend on their values.
"""
import argparse
import time

import torch

from common import peak_rss_mb, report  # noqa: E402  (also puts the repo root on sys.path)
from core.liveportrait import LivePortraitModels, extract_motion, prepare_source, preset  # noqa: E402
from core.liveportrait.load import _build  # noqa: E402
from core.liveportrait.stitching import build_networks  # noqa: E402


def random_models(device) -> LivePortraitModels:
    cfg = preset("liveportrait")
    p = cfg["model_params"]
    torch.manual_seed(0)
    mods = {kind: _build(kind, p[f"{kind}_params"]) for kind in
            ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")}
    nets = build_networks(p["stitching_retargeting_module_params"])
    m = LivePortraitModels(mods["appearance_feature_extractor"], mods["motion_extractor"], mods["warping_module"],
                           mods["spade_generator"], nets["stitching"], nets["lip"], nets["eye"], cfg)
    for module in m.modules_for_cache():
        module.eval().to(device)
    return m.optimize_for_inference()  # as get_liveportrait hands the models to inference


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    device = torch.device(a.device)
    models = random_models(device)
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": a.device, "precision": a.precision}
    crop = torch.rand(1, 256, 256, 3)
    res["prepare_source_s"] = round(timed(lambda: prepare_source(models, crop, device=device, precision=a.precision),
                                          device, a.repeats), 3)
    source = prepare_source(models, crop, device=device, precision=a.precision)
    x_s = source.motion.x_s.to(device)
    from core.device import autocast, resolve_dtype
    from core.liveportrait.render import warp_decode

    dtype = resolve_dtype(a.precision, device)

    def render(b):
        x_d = (x_s + 0.01 * torch.randn(b, 21, 3, device=device))
        with autocast(device, dtype):
            warp_decode(models, source.feature_3d, x_s, x_d)

    render(1)  # warm-up
    res["render_s_per_frame"] = {}
    for b in (int(v) for v in a.batches.split(",")):
        res["render_s_per_frame"][f"batch_{b}"] = round(timed(lambda: render(b), device, a.repeats) / b, 3)
    with torch.inference_mode(), autocast(device, dtype):
        x_d = x_s + 0.01 * torch.randn(1, 21, 3, device=device)
        t_w = timed(lambda: models.warping(source.feature_3d, kp_driving=x_d, kp_source=x_s), device, a.repeats)
        warped = models.warping(source.feature_3d, kp_driving=x_d, kp_source=x_s)["out"]
        t_g = timed(lambda: models.spade(warped), device, a.repeats)
    res["warping_s_batch1"], res["decoder_s_batch1"] = round(t_w, 3), round(t_g, 3)
    frames = torch.rand(8, 256, 256, 3)
    for b in (1, 8):
        t = timed(lambda: extract_motion(models, frames[:b], batch_size=b, device=device, precision=a.precision),
                  device, a.repeats)
        res[f"motion_extraction_s_per_frame_batch{b}"] = round(t / b, 4)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    official = official_render_s_per_frame()
    if official is not None and "batch_1" in res["render_s_per_frame"]:
        # the official modules timed by the reference harness on the same machine kind (not in this run)
        res["official_fp32_render_s_per_frame_batch1_stored"] = round(official, 3)
        res["speedup_vs_official_fp32_batch1"] = round(official / res["render_s_per_frame"]["batch_1"], 2)
    report(res, a.json)


def official_render_s_per_frame():
    """Median s/frame (batch 1, fp32, 2 threads) of the official modules from the shared reference data's
    CPU timings, when that folder sits beside the repository; else None."""
    import json
    from common import ROOT

    path = ROOT.parent / "shared" / "reference" / "liveportrait" / "bench_cpu_2core.json"
    try:
        runs = json.loads(path.read_text())["runs"]["render"]
    except (OSError, ValueError, KeyError):
        return None
    for run in runs:
        if run.get("batch") == 1 and run.get("threads") == 2 and "fp32" in str(run.get("autocast")):
            return float(run["sec_per_frame_median"])
    return None


if __name__ == "__main__":
    main()
