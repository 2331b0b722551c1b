"""First Order Motion Model speed and memory at 256x256 with full-size (vox-256) random weights.

    python bench/bench_fom.py [--frames 24] [--device cpu] [--precision fp32] [--json out.json]

Reports seconds per frame of ``animate`` with the networks as ``get_fom`` prepares them (BatchNorm
folded, sub-pixel upsampling, channels-last; source encoded once; batched driving frames) for
batch sizes 1/4/8; the same for the networks as loaded (no inference optimisation); the
"official path" on the same machine (per frame: keypoints, then the generator's one-call forward
that re-encodes the source, as ``demo.make_animation`` does); the split of one batch-1 frame into
stages; the FLOP floor (one frame's convolutions and products, counted by ``torch.utils.flop_counter``,
over the best throughput measured here in this precision: ``share_of_floor``); and peak RSS while
streaming N and 4N frames through ``animate_stream`` (frames discarded as they come, so the peak must not
grow with the video's length). Weights are random: speed does not depend on their values. Each figure is
the best of ``--repeats`` runs (this machine is noisy).
"""
import argparse
import copy
import time

import torch

from common import count_flops, peak_gflops, peak_rss_mb, report, sync  # noqa: E402  (puts the repo root on sys.path)
from core.fom import FOM, animate, animate_stream, keypoints, normalize_kp, prepare_source, preset  # noqa: E402
from core.fom.model import build  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    kp_det, gen = build(preset("vox-256"))
    plain = FOM(kp_det.eval().to(device), gen.eval().to(device), preset("vox-256"))
    fom = FOM(*[copy.deepcopy(m) for m in (plain.kp_detector, plain.generator)], preset("vox-256"))
    fom.optimize_for_inference()
    source = torch.rand(1, 256, 256, 3)
    driving = torch.rand(a.frames, 256, 256, 3)
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": a.device,
           "precision": a.precision, "frames": a.frames}

    def per_frame(fn):
        best = float("inf")
        for _ in range(a.repeats):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            best = min(best, (time.perf_counter() - t) / a.frames)
        return round(best, 4)

    for key, model in (("sec_per_frame", fom), ("sec_per_frame_unoptimised", plain)):
        animate(model, source, driving[:2], batch_size=2, device=device, precision=a.precision)  # warm-up
        res[key] = {f"batch_{bs}": per_frame(lambda: animate(model, source, driving, batch_size=bs, device=device,
                                                             precision=a.precision)) for bs in (1, 4, 8)}
    res["fps_best"] = round(1 / min(res["sec_per_frame"].values()), 2)

    # the official demo's computation: per frame, keypoints + the one-call generator (re-encodes the source)
    x_src = source.permute(0, 3, 1, 2).to(device)
    frames = driving.permute(0, 3, 1, 2).to(device)

    def official_path():
        with torch.inference_mode():
            kp_src = plain.kp_detector(x_src)
            kp_init = plain.kp_detector(frames[:1])
            for i in range(a.frames):
                kp_drv = plain.kp_detector(frames[i:i + 1])
                kp_norm = normalize_kp(kp_src, kp_drv, kp_init, True, True, True)
                plain.generator(x_src, kp_norm, kp_src)

    res["sec_per_frame_official_path"] = per_frame(official_path)
    res["speedup_vs_official_path"] = round(res["sec_per_frame_official_path"] / min(res["sec_per_frame"].values()), 2)

    # one frame split into stages (batch 1, fp32)
    x = source.permute(0, 3, 1, 2).to(device)
    d = driving[:1].permute(0, 3, 1, 2).to(device)
    stages = {}
    with torch.inference_mode():
        for name, fn in [("encode_source_once", lambda: prepare_source(fom, x))]:
            t = time.perf_counter(); fn(); sync(device); stages[name] = time.perf_counter() - t
        state = prepare_source(fom, x)
        t = time.perf_counter(); kpd = keypoints(fom, d); sync(device); stages["keypoints"] = time.perf_counter() - t
        kpn = normalize_kp(state.kp, kpd, kpd, use_relative_movement=True, use_relative_jacobian=True, scale=1.0)
        t = time.perf_counter()
        motion = fom.generator.dense_motion_network(state.small, kpn, state.kp)
        sync(device); stages["dense_motion"] = time.perf_counter() - t
        t = time.perf_counter(); fom.generator.decode(state.encoded, motion); sync(device)
        stages["decode"] = time.perf_counter() - t
    res["stage_ms_batch1"] = {k: round(v * 1000, 1) for k, v in stages.items()}

    # the FLOP floor: one frame's convolutions and products (keypoints, dense motion, decoder; the source is
    # encoded once per video), counted in fp32, over the best throughput seen here in this precision
    with torch.inference_mode():
        flops = count_flops(lambda: fom.generator.decode(state.encoded, fom.generator.dense_motion_network(
            state.small, normalize_kp(state.kp, keypoints(fom, d), kpd, use_relative_movement=True,
                                      use_relative_jacobian=True, scale=1.0), state.kp)))
    from core.device import resolve_dtype

    res["gflop_per_frame"] = round(flops / 1e9, 2)
    res["peak_gflops"] = round(peak_gflops(device, resolve_dtype(a.precision, device)), 1)
    res["floor_s_per_frame"] = round(flops / 1e9 / res["peak_gflops"], 4)
    res["share_of_floor"] = round(res["floor_s_per_frame"] / min(res["sec_per_frame"].values()), 3)

    res["stream_peak_rss_mb"] = {}
    for n in (a.frames, 4 * a.frames):
        batches = (driving[i % a.frames:i % a.frames + 8].permute(0, 3, 1, 2) for i in range(0, n, 8))
        for _ in animate_stream(fom, x, batches, device=device, precision=a.precision):
            pass
        res["stream_peak_rss_mb"][f"{n}_frames"] = round(peak_rss_mb(), 1)
    report(res, a.json)


if __name__ == "__main__":
    main()
