"""Batch throughput: jobs per hour with 1 and with 2 Ray workers on this machine, and a long render split in parts.

    python bench/batch_scaling.py [--jobs 8] [--seconds 4] [--size 512] [--workers 1 2] [--json out.json]

The batch is ``--jobs`` renders of the procedural LivePortrait workflow (``workflows/api/liveportrait_procedural
.api.json``: a portrait and ``--seconds`` of speech, paste-back into a ``--size`` px portrait), with the tiny test
weights (tests/fixtures; the weights change how long a frame takes, not how the jobs are spread). Each setting runs
the same batch into a fresh output folder through :func:`headless.batch.run_batch`, the code ``run.py batch`` runs:

* ``local``: no Ray, the jobs one after another in this process (torch on ``--cpus-per-worker`` threads);
* ``ray_N``: a new local Ray cluster with N workers of ``--cpus-per-worker`` cores each (default 1; torch uses that
  many threads in each): so ``ray_2`` uses twice the cores of ``ray_1``, and the ratio is the scaling.

Reported per setting: the wall time from the first job's start to the last one's end (``batch_s``; the Ray cluster's
start, ``startup_s``, is counted apart), ``jobs_per_hour`` from it, and the ratio of each setting's jobs per hour to
the 1-worker Ray setting's (``speedup_vs_1_worker``). Then one job of ``--jobs`` x ``--seconds`` of speech rendered
whole and split in as many parts as the largest worker count (``split``): wall times and the ratio.

On N GPUs: ``python run.py batch JOBS.jsonl --ray auto`` starts one worker per GPU; jobs per hour grow with N as long
as each job keeps its GPU busy (full-size models) and the inputs and outputs are on storage every node reads.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, cpu_name, report  # noqa: E402  (puts the repo root on sys.path)

sys.path.insert(0, str(ROOT / "tests"))


def speech(path: Path, seconds: float) -> None:
    """``seconds`` of example_inputs/speech.wav (repeated as often as needed) as a 16 kHz 16-bit wav."""
    import wave

    import numpy as np

    from core.audio import load_audio

    x = load_audio(ROOT / "example_inputs" / "speech.wav").waveform[0].numpy()
    n = int(seconds * 16000)
    x = np.tile(x, -(-n // x.size))[:n]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def setup(folder: Path, seconds: float, jobs: int, size: int) -> None:
    from PIL import Image

    from test_lp_nodes import models_dir

    (folder / "in").mkdir(parents=True)
    image = Image.open(ROOT / "example_inputs" / "portrait.png").convert("RGB")
    scale = size / max(image.size)
    image.resize((round(image.size[0] * scale), round(image.size[1] * scale))).save(folder / "in" / "portrait.png")
    speech(folder / "in" / "speech.wav", seconds)
    speech(folder / "in" / "long.wav", seconds * jobs)        # the split render: the whole batch's speech in one
    models_dir(folder / "models")


def jobs_file(folder: Path, count: int, **extra) -> Path:
    workflow = str(ROOT / "workflows" / "api" / "liveportrait_procedural.api.json")
    path = folder / f"jobs-{time.monotonic_ns()}.jsonl"
    with path.open("w") as f:
        for i in range(count):
            sets = {"portrait.detector": "center", "motion.seed": i, "video.preset": "veryfast",
                    **extra.get("sets", {})}
            line = {"workflow": workflow, "set": sets, "output": f"job{i}.mp4"}
            if "segments" in extra:
                line["segments"] = extra["segments"]
            f.write(json.dumps(line) + "\n")
    return path


def run(batch, registry, folder: Path, jobs_path: Path, pool, label: str, startup: float) -> dict:
    out = folder / f"out-{label}"
    shutil.rmtree(out, ignore_errors=True)
    jobs = batch.read_jobs(jobs_path, registry, out, [folder / "in"])
    assert all(j.problem is None for j in jobs), [j.problem for j in jobs]
    times = {"start": [], "end": []}

    def on_event(kind, job, info):
        if kind == "start":
            times["start"].append(time.perf_counter())
        elif kind in ("done", "failed"):
            times["end"].append(time.perf_counter())

    outcomes = batch.run_batch(jobs, pool, out, models_dir=folder / "models", offline_weights=True,
                               on_event=on_event)
    failed = [o.error for o in outcomes if o.status != "done"]
    if failed:
        raise SystemExit(f"{label}: {failed}")
    span = max(times["end"]) - min(times["start"])
    return {"jobs": len(jobs), "startup_s": round(startup, 2), "batch_s": round(span, 2),
            "jobs_per_hour": round(len(jobs) * 3600 / span, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0, help="speech per job")
    ap.add_argument("--size", type=int, default=512, help="the portrait's longest side")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpus-per-worker", type=float, default=1.0, help="cores (torch threads) per worker; the local "
                    "run uses as many threads")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import run as runner

    name = runner.load_pack().__name__
    import importlib

    batch = importlib.import_module(f"{name}.headless.batch")
    cluster = importlib.import_module(f"{name}.headless.cluster")
    registry = runner.registry()
    import ray
    import torch

    cores = os.cpu_count() or 1
    folder = Path(tempfile.mkdtemp(prefix="th-batch-bench-"))
    results = {"cpu": cpu_name(), "cores": cores, "cpus_per_worker": args.cpus_per_worker,
               "torch": torch.__version__, "ray": ray.__version__,
               "weights": "tiny (tests/fixtures)", "jobs": args.jobs, "speech_s_per_job": args.seconds,
               "portrait_px": args.size, "settings": {}}
    try:
        setup(folder, args.seconds, args.jobs, args.size)
        plain = jobs_file(folder, args.jobs)
        torch.set_num_threads(int(args.cpus_per_worker))
        results["settings"]["local"] = run(batch, registry, folder, plain, batch.LocalPool(registry), "local", 0.0)
        for workers in args.workers:
            t = time.perf_counter()
            pool = cluster.RayPool("auto", workers=workers, cpus=args.cpus_per_worker,
                                   init={"num_cpus": max(cores, int(workers * args.cpus_per_worker))})
            for actor in list(pool.idle):         # the workers are up (the pack loaded) before the clock starts
                ray.get(actor.ping.remote())
            startup = time.perf_counter() - t
            try:
                results["settings"][f"ray_{workers}"] = run(batch, registry, folder, plain, pool, f"ray{workers}",
                                                            startup)
                if workers == max(args.workers):
                    whole = jobs_file(folder, 1, sets={"audio.audio": "long.wav"})
                    split = jobs_file(folder, 1, sets={"audio.audio": "long.wav"}, segments=workers)
                    a = run(batch, registry, folder, whole, pool, "whole", startup)
                    b = run(batch, registry, folder, split, pool, "split", startup)
                    results["split"] = {"parts": workers, "whole_s": a["batch_s"], "split_s": b["batch_s"],
                                        "speedup": round(a["batch_s"] / b["batch_s"], 2)}
            finally:
                pool.close()
        base = results["settings"].get("ray_1", {}).get("jobs_per_hour")
        if base:
            for key, value in results["settings"].items():
                value["speedup_vs_1_worker"] = round(value["jobs_per_hour"] / base, 2)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(results, args.json)


if __name__ == "__main__":
    main()
