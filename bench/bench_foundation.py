"""Throughput and peak memory of the foundation stages: ResizePad256 and the mp4 writer.

    python bench/bench_foundation.py [--frames 500] [--device auto] [--json out.json]

ResizePad256: SDA-sized 128x96 frames -> 256x256, frames per second for several chunk sizes
(the whole batch goes to the device chunk by chunk). Mux: 256x256 frames + 16 kHz audio streamed
into ffmpeg (libx264 medium, crf 19), frames per second, for three lengths. Peak RSS is the
process maximum after each: it must not grow with the video's length.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from common import peak_rss_mb, report  # noqa: E402  (also puts the repo root on sys.path)
from core.audio import Audio  # noqa: E402
from core.resize import resize_pad  # noqa: E402
from core.video import VideoWriter  # noqa: E402


def bench_resize(frames: int, device: str):
    x = torch.rand(frames, 128, 96, 3)
    out = {}
    for chunk in (1, 16, 64, 256):
        resize_pad(x[:chunk], 256, device=device, chunk=chunk)  # warm-up
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        resize_pad(x, 256, device=device, chunk=chunk)
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        out[f"chunk_{chunk}"] = round(frames / (time.perf_counter() - t), 1)
    return out


def bench_mux(frames: int, with_audio: bool = True):
    frame = torch.rand(16, 256, 256, 3)
    audio = Audio(torch.randn(1, int(frames / 25 * 16000)) * 0.05, 16000) if with_audio else None
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        with VideoWriter(Path(d) / "bench.mp4", 25, audio, expected_frames=frames) as w:
            for i in range(0, frames, 16):
                w.write(frame[: min(16, frames - i)])
        return round(frames / (time.perf_counter() - t), 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "device": a.device, "frames": a.frames}
    # the mux first, so the peak RSS reflects it (and not the resize batches held below)
    bench_mux(32, True)  # warm-up: imports, allocator pools and the first ffmpeg start are not growth
    res["peak_rss_mb_after_warmup"] = round(peak_rss_mb(), 1)
    for key, with_audio in (("mux_video_only", False), ("mux_with_audio", True)):
        res[key] = {}
        for n in (a.frames // 5, a.frames, a.frames * 4):
            fps = bench_mux(n, with_audio)
            res[key][f"{n}_frames"] = {"fps": fps, "peak_rss_mb": round(peak_rss_mb(), 1)}
    res["resize_128x96_to_256_fps"] = bench_resize(a.frames, a.device)
    report(res, a.json)


if __name__ == "__main__":
    main()
