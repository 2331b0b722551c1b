"""Live mode's latency, frame rate and audio-video sync, measured as a client sees them.

    python bench/live_latency.py [--weights tiny|full] [--device cpu] [--precision auto] [--seconds 6]
                                 [--idle 2] [--latency S] [--steps 10] [--size 512] [--json out.json]

A live server (``live.server``, the code ``python run.py live`` runs) is started in this process on
127.0.0.1 with either the tiny test weights or full-size random weights (LivePortrait, Ditto's LMDM and
HuBERT-large at their released sizes; speed does not depend on the values), the portrait
``example_inputs/portrait.png`` (480x600, centre crop: no face-detector weights needed) at ``--size``. A
WebSocket client then plays two scenarios over the real protocol:

1. **microphone** (realtime): the session starts idle (``--idle`` s of nothing: the server feeds silence),
   then ``--seconds`` of speech-like audio is sent paced at real time in 40 ms messages, then 1 s of
   nothing, then stop. Reported: ``first_frame_s`` (from ``ready`` to the first frame),
   ``speech_to_frame_s`` (the server's figure: from the first speech sample's arrival to the first frame at
   or after its place on the timeline), ``fps_received`` over the speech, the frames dropped (late /
   client), the DDIM steps the policy ended on, and sync: ``drift_s`` = the video timeline's end
   (``end.frames / 25``) minus the audio's (``end.samples / 16000``), and for every received frame its
   arrival against its display time (``ready + latency + i / 25``): the share that came in time and the
   worst lateness.
2. **tts** (not realtime): ``--seconds`` of audio sent as fast as the server takes it, then stop, as a TTS
   stream from an agent; every frame is made. Reported: time to the first frame, wall time over audio time
   (``realtime_factor``; < 1 = faster than real time), frames per second.

Precision ``auto`` renders in bf16 on CPUs with native bf16 (the fastest there), fp16 on GPUs.
"""
import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, cpu_name, peak_rss_mb, report  # noqa: E402  (puts the repo root on sys.path)

sys.path.insert(0, str(ROOT / "tests"))
RATE, FPS = 16000, 25


def build_parts(weights: str, device, precision: str, live):
    if weights == "tiny":
        import tempfile

        from live_common import tiny_parts

        return tiny_parts(Path(tempfile.mkdtemp(prefix="th-live-bench-")), precision=precision,
                          core=live.__name__.rsplit(".", 1)[0])
    from bench_liveportrait import random_models
    from bench_motion import random_hubert_large, random_lmdm

    from core.audio_features import HubertEncoder

    return live.LiveParts(random_models(device), random_lmdm(device, torch.float32),
                          HubertEncoder(random_hubert_large(device, torch.float32)), device=device,
                          precision=precision)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    return (0.25 * g.standard_normal(n) * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


class Client:
    """A WebSocket client that records every message with its arrival time (a reader thread)."""

    def __init__(self, url: str):
        from websockets.sync.client import connect

        import inspect

        quiet = {"ping_interval": None} if "ping_interval" in inspect.signature(connect).parameters else {}
        self.ws = connect(url, max_size=None, **quiet)
        self.events = []
        self.closed = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)

    def _read(self):
        try:
            for msg in self.ws:                   # frames are not kept: the process's memory is the server's
                if isinstance(msg, bytes):
                    msg = msg[:5]
                self.events.append((time.perf_counter(), msg))
        except Exception:  # noqa: BLE001 - the socket closed
            pass
        self.closed.set()

    def start(self, **fields):
        self.ws.send(json.dumps({"type": "start", "sample_rate": RATE, "format": "s16le", **fields}))
        msg = self.ws.recv(timeout=600)
        self.ready_wall = time.perf_counter()
        self.ready = json.loads(msg)
        if self.ready.get("type") != "ready":
            raise RuntimeError(f"the server answered {msg!r}")
        self.reader.start()

    def send_audio(self, x: np.ndarray):
        self.ws.send((np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes())

    def stop(self, timeout: float):
        self.ws.send(json.dumps({"type": "stop"}))
        self.closed.wait(timeout)


def summarise(client, proto, speech_start=None, speech_end=None) -> dict:
    frames, stats, end, errors = [], [], None, []
    for t, msg in client.events:
        if isinstance(msg, bytes):
            kind, index, _ = proto.unpack(msg)
            if kind == proto.VIDEO:
                frames.append((t, index))
        else:
            data = json.loads(msg)
            if data["type"] == "stats":
                stats.append(data)
            elif data["type"] == "end":
                end = data
            elif data["type"] == "error":
                errors.append(data["message"])
    if errors or end is None:
        raise RuntimeError(f"the session did not end cleanly: {errors or 'no end message'}")
    ready, latency = client.ready_wall, client.ready["latency"]
    lateness = [t - (ready + latency + i / FPS) for t, i in frames]
    last = stats[-1] if stats else {}
    out = {
        "frames_received": len(frames),
        "frames_total": end["frames"],
        "first_frame_s": round(frames[0][0] - ready, 3) if frames else None,
        "frames_dropped_late": last.get("frames_dropped_late"),
        "frames_dropped_client": last.get("frames_dropped_client"),
        "steps_at_end": last.get("steps"),
        "steps_lowered": last.get("steps_lowered"),
        "speech_to_frame_s": next((s["speech_to_frame_s"] for s in reversed(stats) if s.get("speech_to_frame_s")),
                                  None),
        "render_s_per_frame": last.get("render_s_per_frame"),
        "silence_skipped_s": last.get("silence_skipped_s"),
        "drift_s": round(end["frames"] / FPS - end["samples"] / RATE, 4),
        "drift_within_one_frame": abs(end["frames"] / FPS - end["samples"] / RATE) <= 1 / FPS,
        "last_frame_index": frames[-1][1] if frames else None,
        "frames_in_time_share": round(sum(x <= 0 for x in lateness) / len(lateness), 3) if lateness else None,
        "worst_lateness_s": round(max(lateness), 3) if lateness else None,
    }
    if speech_start is not None:
        during = [t for t, _ in frames if speech_start <= t <= speech_end + latency]
        span = speech_end + latency - speech_start
        out["fps_received_during_speech"] = round(len(during) / span, 2)
    else:
        span = frames[-1][0] - frames[0][0] if len(frames) > 1 else float("nan")
        out["fps_received"] = round((len(frames) - 1) / span, 2) if len(frames) > 1 else None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--latency", type=float, default=None, help="default: 1.5 s (tiny), 3 s (full on a CPU)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from run import load_pack

    pack = load_pack().__name__
    import importlib

    live = importlib.import_module(f"{pack}.core.live")
    server_mod = importlib.import_module(f"{pack}.live.server")
    proto = importlib.import_module(f"{pack}.live.protocol")
    device = torch.device(a.device)
    t = time.perf_counter()
    parts = build_parts(a.weights, device, a.precision, live)
    build_s = time.perf_counter() - t
    latency = a.latency or (1.5 if a.weights == "tiny" or device.type != "cpu" else 3.0)
    config = live.LiveConfig(steps=a.steps, min_steps=min(2, a.steps), latency=latency)
    server = server_mod.LiveServer(parts, server_mod.Portraits([ROOT / "example_inputs" / "portrait.png"]),
                                   detector="center", max_side=a.size, config=config)
    port = []
    threading.Thread(target=server_mod.serve, args=(server, "127.0.0.1", 0, port.append), daemon=True).start()
    while not port:
        time.sleep(0.05)
    url = f"ws://127.0.0.1:{port[0]}{proto.WS_PATH}"
    t = time.perf_counter()
    server.source(None)                      # the portrait's source is made once per server, before sessions
    prepare_s = time.perf_counter() - t

    # 1. microphone, realtime
    c = Client(url)
    c.start(realtime=True)
    time.sleep(a.idle)
    audio = speech_like(a.seconds)
    step = RATE // FPS
    speech_start = time.perf_counter()
    for i in range(0, audio.size, step):
        c.send_audio(audio[i:i + step])
        wait = speech_start + (i + step) / RATE - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
    speech_end = time.perf_counter()
    time.sleep(1.0)
    c.stop(timeout=120 + 10 * a.seconds)
    mic = summarise(c, proto, speech_start, speech_end)

    # 2. a TTS stream, not realtime: as fast as the server takes it
    c = Client(url)
    c.start(realtime=False)
    t0 = time.perf_counter()
    for i in range(0, audio.size, RATE // 5):
        c.send_audio(audio[i:i + RATE // 5])
    c.stop(timeout=600 + 60 * a.seconds)
    wall = time.perf_counter() - t0
    tts = summarise(c, proto)
    tts["realtime_factor"] = round(wall / a.seconds, 3)
    tts["wall_s"] = round(wall, 2)

    results = {
        "what": "live mode through its WebSocket protocol (bench/live_latency.py)",
        "weights": a.weights, "device": str(device), "precision": a.precision,
        "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "frame_size": [int(c.ready["width"]), int(c.ready["height"])], "latency_s": latency, "steps": a.steps,
        "speech_s": a.seconds, "idle_s": a.idle, "build_models_s": round(build_s, 1),
        "prepare_portrait_s": round(prepare_s, 2),
        "microphone_realtime": mic, "tts_not_realtime": tts, "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    report(results, a.json)


if __name__ == "__main__":
    main()
