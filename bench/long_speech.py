"""Every shipped workflow on long speech: peak memory and speed of ``python run.py`` on the tiny test weights.

    python bench/long_speech.py [--lengths 30,120,600] [--workflows a,b] [--timeout 3600]
                                [--json bench/results_long_speech_cpu_2core.json] [--work DIR]
                                [--memory-limit-gb 8]

For each workflow in ``workflows/api/*.api.json`` and each length (seconds of speech), runs
``python run.py workflows/api/<name>.api.json --set ...`` in a fresh process, with the overrides the tests use for
the tiny weights (``tests/workflow_cases.py``: tiny checkpoint names, the ``center`` detector, ...) and the models
and inputs placed the same way (``place_models`` / ``place_inputs``). The inputs are made as long as asked:

* every LoadAudio gets ``example_inputs/speech.wav`` looped to the length (a workflow with several speakers
  gives each an equal share, so the video is as long as asked);
* every LoadMotion gets ``example_inputs/motion.safetensors`` looped to as many frames;
* every LoadVideo gets its driving video (the one the test case names) looped to the length, with the looped
  speech as its sound track.

Recorded per run: the child's peak resident memory (``os.wait4``'s rusage of that one process, which includes its
ffmpeg children), wall and CPU seconds, the mp4's frames, size and duration, seconds of compute per second of
video, and the machine's load average before and after (timings on a shared machine depend on it). A run that
fails (an up-front refusal, the allocator failing on a whole IMAGE batch, a timeout, a crash) is recorded with its
error line; the bench goes on. ``--memory-limit-gb`` caps each run's address space
(``RLIMIT_AS``), so a graph that tries to hold a whole long video as one IMAGE batch fails inside its own process
instead of pushing a shared machine into swap or the OOM killer.

The results are merged into the JSON file (a run replaces the entry of the same workflow and length) and the
whole file is printed as a Markdown table.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from common import ROOT  # noqa: E402  (also puts the repo root on sys.path)

sys.path.insert(0, str(ROOT / "tests"))  # the cases, and the helpers that place the tiny weights

import workflow_cases as cases  # noqa: E402
from core.files import atomic_write  # noqa: E402

DEFAULT_JSON = ROOT / "bench" / "results_long_speech_cpu_2core.json"
FPS = 25
#: the source clips the driving videos are looped from (the test cases' files, by name)
DRIVING_SOURCES = {"driving.mp4": ROOT / "example_inputs" / "driving.mp4",
                   "driving_short.mp4": ROOT / "tests" / "fixtures" / "driving_short.mp4"}


# --------------------------------------------------------------------------- inputs
def ffmpeg() -> str:
    from core.audio import ffmpeg_exe

    return ffmpeg_exe()


def write_speech(path: Path, seconds: float) -> Path:
    """``example_inputs/speech.wav`` looped to ``seconds`` (16-bit mono wav)."""
    if not path.exists():
        from core.audio import load_audio

        speech = load_audio(ROOT / "example_inputs" / "speech.wav")
        x = speech.waveform[0].numpy()
        n = int(round(seconds * speech.sample_rate))
        with atomic_write(path, ".partial.wav") as tmp, wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(speech.sample_rate)
            w.writeframes((np.clip(np.tile(x, -(-n // len(x)))[:n], -1, 1) * 32767).astype("<i2").tobytes())
    return path


def write_motion(path: Path, seconds: float) -> Path:
    """``example_inputs/motion.safetensors`` looped to ``seconds`` at its frame rate."""
    if not path.exists():
        import torch

        from core.liveportrait.motion import Motion

        motion = Motion.load(ROOT / "example_inputs" / "motion.safetensors")
        n = int(round(seconds * motion.fps))
        with atomic_write(path, ".partial.safetensors") as tmp:
            motion.take(torch.arange(n) % len(motion)).save(tmp)
    return path


def write_driving(path: Path, source: Path, speech: Path, seconds: float) -> Path:
    """``source``'s picture looped to ``seconds`` with ``speech`` as the sound track (H.264 + AAC)."""
    if not path.exists():
        with atomic_write(path, ".partial.mp4") as tmp:
            cmd = [ffmpeg(), "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(source), "-i",
                   str(speech), "-map", "0:v:0", "-map", "1:a:0", "-t", f"{seconds:g}", "-r", str(FPS), "-c:v",
                   "libx264", "-preset", "ultrafast", "-crf", "16", "-pix_fmt", "yuv420p", "-c:a", "aac", str(tmp)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"ffmpeg could not loop {source.name}: {error_line(res.stderr)}")
    return path


def node_titles(prompt: dict, class_type: str) -> list:
    return [n.get("_meta", {}).get("title", i) for i, n in prompt.items() if n.get("class_type") == class_type]


def overrides_for(name: str, seconds: float, inputs: Path) -> dict:
    """The test case's overrides with every speech, motion and driving-video input ``seconds`` long (the inputs
    are written into ``inputs`` when missing)."""
    case = cases.WORKFLOW_CASES[name]
    sets = {title: dict(values) for title, values in case.overrides.items()}
    prompt = cases.load_workflow(name, case.overrides)
    audio_titles = node_titles(prompt, "LoadAudio")
    share = seconds / max(len(audio_titles), 1)
    speech = write_speech(inputs / f"speech_{share:g}s.wav", share)
    for title in audio_titles:
        sets.setdefault(title, {})["audio"] = speech.name
    for title in node_titles(prompt, "TalkingHead_LoadMotion"):
        sets.setdefault(title, {})["motion_file"] = write_motion(inputs / f"motion_{seconds:g}s.safetensors",
                                                                 seconds).name
    for title in node_titles(prompt, "LoadVideo"):
        node = next(n for n in prompt.values() if n.get("_meta", {}).get("title") == title)
        source = DRIVING_SOURCES.get(node["inputs"]["file"], inputs / node["inputs"]["file"])
        full = write_speech(inputs / f"speech_{seconds:g}s.wav", seconds)
        looped = write_driving(inputs / f"{Path(source).stem}_{seconds:g}s.mp4", source, full, seconds)
        sets.setdefault(title, {})["file"] = looped.name
    return sets


def prepare(work: Path) -> tuple:
    """``work/models`` with every family's tiny weights and ``work/input`` with the examples (as the tests)."""
    models, inputs = work / "models", work / "input"
    if not (models / ".complete").exists():
        cases.place_models(models)
        (models / ".complete").write_text("")
    if not (inputs / ".complete").exists():
        cases.place_inputs(inputs)
        (inputs / ".complete").write_text("")
    return models, inputs


# --------------------------------------------------------------------------- one run
def _limit(memory_bytes):
    def apply():
        os.setsid()  # its own process group: a timeout ends run.py and its ffmpeg together
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    return apply


def error_line(stderr: str) -> str:
    """The runner's message (``error: ...``, first lines), else the last line of a traceback."""
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("error: "):
            return " ".join(x.strip() for x in lines[i:i + 3])[:600]
    return lines[-1][:600] if lines else ""


def run_one(name: str, seconds: float, work: Path, models: Path, inputs: Path, timeout: float,
            memory_limit: int) -> dict:
    sets = overrides_for(name, seconds, inputs)
    run_dir = work / "runs" / f"{name}_{seconds:g}s"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, str(ROOT / "run.py"), str(cases.WORKFLOWS / f"{name}.api.json"), "--input-dir", str(inputs),
           "--models-dir", str(models), "--output-dir", str(run_dir / "output"), "--offline", "--quiet"]
    for title, values in sets.items():
        cmd += [a for key, value in values.items() for a in ("--set", f"{title}.{key}={value}")]
    entry = {"workflow": name, "speech_s": seconds, "command": " ".join(cmd[1:]).replace(str(ROOT) + os.sep, "")}
    out_path, err_path = run_dir / "stdout.txt", run_dir / "stderr.txt"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with open(out_path, "w") as out, open(err_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=run_dir, stdout=out, stderr=err, preexec_fn=_limit(memory_limit))
        status = usage = None
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = err_path.read_text(errors="replace")
    entry.update(wall_s=round(wall, 2), cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
                 peak_rss_mb=round(usage.ru_maxrss / 1024, 1), returncode=proc.returncode)
    if load is not None:  # the machine's 1-minute load average before and after: other work slows the timings
        entry["load_avg"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    if timed_out:
        entry.update(ok=False, error=f"timed out after {timeout:g} s (killed)")
    elif proc.returncode != 0:
        line = error_line(stderr)
        if proc.returncode < 0:
            line = f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "") + \
                   (f"; {line}" if line else "")
        entry.update(ok=False, error=line or f"exit code {proc.returncode}")
    else:
        files = [Path(x) for x in out_path.read_text().split("\n") if x.strip().endswith(".mp4")]
        if not files:
            entry.update(ok=False, error="the run wrote no mp4")
        else:
            from core import video

            info = video.probe(files[-1])
            frames = int(info["video"]["frames"])
            fps = float(info["video"]["fps"]) or FPS
            entry.update(ok=True, frames=frames, size=[info["video"]["width"], info["video"]["height"]],
                         video_s=round(frames / fps, 3),
                         audio_s=round(video.audio_duration(files[-1]), 3) if info["audio"] else None,
                         s_per_video_s=round(wall / (frames / fps), 3) if frames else None)
            for f in files:  # 10 minutes of 480x600 is a few hundred MB: the figures are what is kept
                f.unlink(missing_ok=True)
    return entry


# --------------------------------------------------------------------------- results
def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return info


def merge(path: Path, runs: list, settings: dict) -> dict:
    data = {"runs": []}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            pass
    keep = {(r["workflow"], r["speech_s"]): r for r in data.get("runs", [])}
    for r in runs:
        keep[(r["workflow"], r["speech_s"])] = r
    data["runs"] = sorted(keep.values(), key=lambda r: (r["workflow"], r["speech_s"]))
    data["machine"] = machine()
    data.setdefault("settings", {}).update(settings)
    data["about"] = ("python run.py workflows/api/<workflow>.api.json on the tiny test weights "
                     "(tests/workflow_cases.py overrides), speech looped to speech_s seconds; peak_rss_mb = the run's "
                     "peak resident memory; s_per_video_s = wall seconds per second of video (bench/long_speech.py)")
    return data


def _length(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def markdown(data: dict) -> str:
    runs = data["runs"]
    lengths = sorted({r["speech_s"] for r in runs})
    head = "| workflow | " + " | ".join(f"{_length(s)}: peak RSS | {_length(s)}: s per video s" for s in lengths) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(lengths))]
    notes = []
    for name in sorted({r["workflow"] for r in runs}):
        cells = []
        for s in lengths:
            r = next((x for x in runs if x["workflow"] == name and x["speech_s"] == s), None)
            if r is None:
                cells += ["", ""]
            elif r.get("ok"):
                cells += [f"{r['peak_rss_mb']:.0f} MB", f"{r['s_per_video_s']:.2f}"]
            else:
                notes.append(f"{name}, {_length(s)}: {r.get('error', '')}")
                cells += [f"failed ({r['peak_rss_mb']:.0f} MB)", f"[{len(notes)}]"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="30,120,600", help="seconds of speech, comma separated")
    ap.add_argument("--workflows", default="", help="workflow names (workflows/api/<name>.api.json); default all")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one run may take before it is killed")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="results file (merged with what is there)")
    ap.add_argument("--work", default="", help="folder for models, inputs and outputs (kept); default a temporary one")
    ap.add_argument("--memory-limit-gb", type=float, default=8.0,
                    help="address-space limit of each run (0 = none)")
    a = ap.parse_args(argv)
    lengths = [float(x) for x in a.lengths.split(",") if x.strip()]
    if not lengths or min(lengths) <= 0:
        ap.error("--lengths needs one or more positive numbers of seconds, e.g. 30,120,600")
    names = [x.strip() for x in a.workflows.split(",") if x.strip()] or list(cases.API_WORKFLOWS)
    unknown = [n for n in names if n not in cases.API_WORKFLOWS or n not in cases.WORKFLOW_CASES]
    if unknown:
        ap.error(f"unknown workflow(s) {unknown}; known: {', '.join(cases.API_WORKFLOWS)}")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="long_speech_"))
    work.mkdir(parents=True, exist_ok=True)
    limit = int(a.memory_limit_gb * 2 ** 30) if a.memory_limit_gb > 0 else 0
    try:
        models, inputs = prepare(work)
        runs = []
        for seconds in lengths:
            for name in names:
                print(f"{name} at {_length(seconds)} ...", file=sys.stderr, flush=True)
                try:
                    entry = run_one(name, seconds, work, models, inputs, a.timeout, limit)
                except Exception as exc:  # the bench itself (an input it could not make): recorded, not fatal
                    entry = {"workflow": name, "speech_s": seconds, "ok": False, "peak_rss_mb": 0.0,
                             "error": f"bench: {type(exc).__name__}: {exc}"}
                runs.append(entry)
                state = f"{entry['peak_rss_mb']:.0f} MB, {entry.get('wall_s', 0):.0f} s" if entry["ok"] else \
                    f"failed: {entry['error']}"
                print(f"  {state}", file=sys.stderr, flush=True)
                # written after every run: a long session that is stopped keeps what it measured
                data = merge(Path(a.json), runs, {"timeout_s": a.timeout, "memory_limit_gb": a.memory_limit_gb})
                with atomic_write(a.json) as tmp:
                    tmp.write_text(json.dumps(data, indent=1) + "\n")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
