"""SDA (GRID) speed and memory with full-size random weights: seconds of compute per second of video
and peak RSS for clips of growing length (each length in its own process, so every peak is its own).

    python bench/bench_sda.py [--durations 2,10,60,600] [--device cpu] [--chunk-frames 128] [--json out.json]

The official code made 2 s of video in 0.94 s on this 2-core CPU class, but it handles a clip as one
batch (RSS 2.65 GB for 10 s, 6.8 GB for 30 s) and frames the audio in time quadratic in its length.
Here the time per second of video should stay flat and the peak RSS nearly constant with length.
"""
import argparse
import json
import subprocess
import sys
import time

from common import peak_rss_mb, report  # noqa: E402  (also puts the repo root on sys.path)

GRID = {"img_size": [128, 96], "audio_rate": 50000, "video_rate": 25, "audio_feat_len": 0.2,
        "audio_feat_samples": 10000, "id_enc_dim": 128, "rnn_gen_dim": 256, "aud_enc_dim": 256, "aux_latent": 10,
        "sequential_noise": True}  # the real grid.dat's settings (shared/reference/sda/checkpoint_manifest.json)


def one(seconds: float, device: str, chunk_frames: int) -> dict:
    import numpy as np
    import torch

    from core.sda import animate_stream, build_model

    torch.manual_seed(0)
    model = build_model(GRID, np.zeros((68, 2)), device="cpu").eval().to(device)
    for p in model.parameters():  # random weights of a sensible scale (speed does not depend on values)
        torch.nn.init.normal_(p, 0, 0.02)
    face = (np.random.default_rng(0).random((128, 96, 3)) * 255).astype(np.uint8)
    audio = (np.random.default_rng(1).standard_normal(int(seconds * 16000)) * 3000).astype(np.int16)

    def run():
        start = time.perf_counter()
        stream = animate_stream(model, face, audio, fs=16000, seed=0, aligned=True, chunk_frames=chunk_frames)
        prep = time.perf_counter() - start
        frames = sum(chunk.shape[0] for chunk in stream)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return frames, prep, time.perf_counter() - start

    frames, prep, cold = run()   # the first call in a fresh process (one-time library set-up included)
    out = {"seconds": seconds, "frames": frames, "prepare_s": round(prep, 3), "total_s": round(cold, 3),
           "s_per_video_s": round(cold / (frames / 25.0), 4)}
    if seconds <= 10:            # and once warm
        _, _, warm = run()
        out["warm_total_s"] = round(warm, 3)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--durations", default="2,10,60,600")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk-frames", type=int, default=128)
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        print(json.dumps(one(a.one, a.device, a.chunk_frames)))
        return
    import torch

    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": a.device,
           "chunk_frames": a.chunk_frames, "official_2s_clip_s": 0.94, "official_rss_mb": {"10": 2650, "30": 6800},
           "runs": []}
    for d in (float(x) for x in a.durations.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(d), "--device", a.device,
                              "--chunk-frames", str(a.chunk_frames)], capture_output=True, text=True, check=True)
        res["runs"].append(json.loads(out.stdout.strip().splitlines()[-1]))
    two = next((r for r in res["runs"] if r["seconds"] == 2.0), None)
    if two:
        res["speedup_vs_official_2s_cold"] = round(0.94 / two["total_s"], 2)
        res["speedup_vs_official_2s_warm"] = round(0.94 / two["warm_total_s"], 2)
    report(res, a.json)


if __name__ == "__main__":
    main()
