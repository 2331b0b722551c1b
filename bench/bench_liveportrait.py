"""LivePortrait speed and memory with full-size (official config) random weights, CPU or GPU.

    python bench/bench_liveportrait.py [--device cpu] [--precision fp32] [--batches 1,2,4] [--repeats 1]
                                       [--official LIVEPORTRAIT_CHECKOUT] [--json out.json]

Reports seconds per frame of rendering (warping + SPADE decoder, the source prepared once) for
each batch size, of the warping and decoder parts separately (batch 1), of motion extraction
(batch 1 and 8), source preparation, and peak RSS. Weights are random (shapes as published);
speed does not depend on their values.

Against the official code and the hardware:

* ``--official DIR``: a checkout of KwaiVGI/LivePortrait (its ``src/modules``, plain torch). Its warping
  module and SPADE decoder are built with the same weights and timed in this run at batch 1, in the same
  precision (half precision as autocast); ``speedup_vs_official_same_run`` is their time over ours, and for a
  half precision also ``speedup_vs_official_fp32_same_run`` (the official code as released runs fp32). Without
  it the official fp32 figure stored by the reference harness is reported (another run, same machine kind).
* ``render_gflop_per_frame``: the convolutions and matrix products of one frame, counted by
  ``torch.utils.flop_counter`` on the official modules when given, else on ours in fp32 (where no
  convolution is rearranged); ``peak_gflops``: the best of a 2048^3 matrix product and the decoder's
  512-channel 3x3 convolution at 64x64, in this precision on this machine; ``floor_s_per_frame`` their
  ratio and ``share_of_floor`` the floor over the measured batch-1 time.
"""
import argparse

import torch

from common import count_flops, peak_gflops, peak_rss_mb, report, timed  # noqa: E402  (puts the repo root on sys.path)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--official", default=None, help="a KwaiVGI/LivePortrait checkout to time in the same run")
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
    ours_1 = res["render_s_per_frame"].get("batch_1")
    official_nets = official_modules(a.official, models, device) if a.official else None
    x_d = x_s + 0.01 * torch.randn(1, 21, 3, device=device)
    if official_nets is not None:
        w_off, g_off = official_nets

        def official_render():
            with torch.no_grad(), autocast(device, dtype):
                g_off(w_off(source.feature_3d, kp_driving=x_d, kp_source=x_s)["out"])

        official_render()  # warm-up
        res["official_render_s_per_frame_batch1"] = round(timed(official_render, device, a.repeats), 3)
        if ours_1:
            res["speedup_vs_official_same_run"] = round(res["official_render_s_per_frame_batch1"] / ours_1, 2)
        if dtype != torch.float32:  # and the official code as released runs it: fp32
            def official_fp32():
                with torch.no_grad():
                    g_off(w_off(source.feature_3d.float(), kp_driving=x_d, kp_source=x_s)["out"])

            res["official_fp32_render_s_per_frame_batch1"] = round(timed(official_fp32, device, a.repeats), 3)
            if ours_1:
                res["speedup_vs_official_fp32_same_run"] = round(
                    res["official_fp32_render_s_per_frame_batch1"] / ours_1, 2)
        flops = count_flops(lambda: g_off(w_off(source.feature_3d.float(), kp_driving=x_d, kp_source=x_s)["out"]))
        res["flops_counted_on"] = "official modules"
    else:
        def ours_fp32():
            warped = models.warping(source.feature_3d.float(), kp_driving=x_d, kp_source=x_s)["out"]
            return models.spade(warped)

        flops = count_flops(ours_fp32)
        res["flops_counted_on"] = "this pack's modules, fp32"
    res["render_gflop_per_frame"] = round(flops / 1e9, 1)
    res["peak_gflops"] = round(peak_gflops(device, dtype), 1)
    res["floor_s_per_frame"] = round(flops / 1e9 / res["peak_gflops"], 3)
    if ours_1:
        res["share_of_floor"] = round(res["floor_s_per_frame"] / ours_1, 3)
    official = official_render_s_per_frame()
    if official is not None and "batch_1" in res["render_s_per_frame"]:
        # the official modules timed by the reference harness on the same machine kind (not in this run)
        res["official_fp32_render_s_per_frame_batch1_stored"] = round(official, 3)
        res["speedup_vs_official_fp32_batch1"] = round(official / res["render_s_per_frame"]["batch_1"], 2)
    report(res, a.json)


def official_modules(checkout, models, device):
    """The official WarpingNetwork and SPADEDecoder of a LivePortrait checkout (``src/modules``), built from the
    official config and given ``models``' weights (same key names), in eval mode on ``device``."""
    import importlib
    import sys
    from pathlib import Path

    root = Path(checkout).resolve()
    if not (root / "src" / "modules" / "warping_network.py").is_file():
        raise SystemExit(f"--official: {root} has no src/modules/warping_network.py (a KwaiVGI/LivePortrait checkout)")
    sys.path.insert(0, str(root))
    try:
        warping_mod = importlib.import_module("src.modules.warping_network")
        spade_mod = importlib.import_module("src.modules.spade_generator")
    finally:
        sys.path.remove(str(root))
    p = preset("liveportrait")["model_params"]
    w = warping_mod.WarpingNetwork(**p["warping_module_params"])
    g = spade_mod.SPADEDecoder(**p["spade_generator_params"])
    w.load_state_dict(models.warping.state_dict(), strict=True)
    g.load_state_dict(models.spade.state_dict(), strict=True)
    return w.eval().to(device), g.eval().to(device)


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
