"""Where LivePortrait's render time goes: torch.profiler per operator, per precision.

    python bench/profile_liveportrait.py [--precisions fp32,bf16] [--batch 1] [--top 25] [--json out.json]

Full-size (official config) random weights, as bench/bench_liveportrait.py builds them; one warm-up
render, then one profiled render (warping + SPADE decoder) per precision. Prints the operators by
self CPU time and writes, per precision, the total, the top operators and the time per group
(convolutions, 3-D sampling, normalisation, activations, copies/casts, the rest).
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_liveportrait import random_models  # noqa: E402  (puts the repo root on sys.path)
from common import report  # noqa: E402
from core.device import autocast, resolve_dtype  # noqa: E402
from core.liveportrait import prepare_source  # noqa: E402
from core.liveportrait.render import warp_decode  # noqa: E402

GROUPS = [
    ("convolution", ("conv", "mkldnn", "onednn")),
    ("3-D sampling", ("grid_sampler", "index_select", "gather")),
    ("normalisation", ("norm", "var", "mean", "rsqrt")),
    ("activation", ("relu", "sigmoid", "softmax", "exp", "leaky")),
    ("copy / cast / layout", ("copy", "to", "contiguous", "clone", "cat", "permute", "empty", "zero", "fill")),
    ("elementwise", ("add", "mul", "sub", "div", "pow", "sum", "where")),
    ("resize", ("upsample", "interpolate", "pool", "pixel_shuffle")),
]


def group_of(name: str) -> str:
    n = name.lower()
    for group, keys in GROUPS:
        if any(k in n for k in keys):
            return group
    return "other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sampler", default="auto")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    device = torch.device("cpu")
    models = random_models(device)
    models.warping.sampler = a.sampler
    crop = torch.rand(1, 256, 256, 3)
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": a.batch, "sampler": a.sampler}
    for precision in a.precisions.split(","):
        dtype = resolve_dtype(precision, device)
        source = prepare_source(models, crop, device=device, precision=precision)
        x_s = source.motion.x_s
        x_d = x_s + 0.01 * torch.randn(a.batch, 21, 3, generator=torch.Generator().manual_seed(0))

        def render():
            with torch.inference_mode(), autocast(device, dtype):
                return warp_decode(models, source.feature_3d, x_s, x_d)

        render()  # warm-up (prepared weights, oneDNN primitives)
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            render()
        wall = time.perf_counter() - t
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        events.sort(key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        groups = {}
        for e in events:
            g = group_of(e.key)
            groups[g] = groups.get(g, 0.0) + e.self_cpu_time_total / 1e6
        print(f"\n== {precision}: {wall:.3f} s wall per batch of {a.batch} (profiled), "
              f"{total:.3f} s of operator self time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))
        res[precision] = {
            "wall_s_profiled": round(wall, 3),
            "self_s_total": round(total, 3),
            "groups_s": {k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 4), "calls": e.count}
                    for e in events[:a.top]],
        }
    report({k: v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "top"}
            for k, v in res.items()})
    if a.json:
        from pathlib import Path
        import json
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
