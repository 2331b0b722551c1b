"""``run.py batch``: many jobs from a JSON-lines file, one after another and on a real local Ray cluster (tiny
weights, the procedural LivePortrait workflow): outputs published whole and once, reruns skip finished jobs, bad
lines reported while the others run, a worker killed mid-job replaced and its job retried."""
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, mp4_facts
from test_lp_nodes import models_dir
from test_motion_nodes import write_speech_clip

WORKFLOW = str(ROOT / "workflows" / "api" / "liveportrait_procedural.api.json")
UI_WORKFLOW = str(ROOT / "workflows" / "liveportrait_procedural.json")


def _ray_missing():
    try:
        importlib.import_module("ray")
    except ImportError:
        if os.environ.get("CI"):
            raise RuntimeError("the Ray tests cannot run in CI: ray is not installed (pip install -r "
                               "requirements-ray.txt)")
        return "ray is not installed (pip install -r requirements-ray.txt)"
    return None


RAY_MISSING = _ray_missing()
RAY = pytest.mark.skipif(bool(RAY_MISSING), reason=RAY_MISSING or "")


@pytest.fixture
def place(tmp_path):
    """A working folder with a portrait, two speech clips (0.3 s and 4 s) and the tiny LivePortrait weights."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(ROOT / "example_inputs" / "portrait.png").convert("RGB").resize((96, 120)).save(inputs / "portrait.png")
    write_speech_clip(inputs / "speech.wav", 0.3)
    write_speech_clip(inputs / "long.wav", 4.0, start=0.5)
    models_dir(tmp_path / "models")
    return tmp_path


def job(output, seed=0, audio="speech.wav", workflow=WORKFLOW, **more):
    sets = {"portrait.detector": "center", "motion.seed": seed, "audio.audio": audio, "video.preset": "ultrafast",
            **more}
    return {"workflow": workflow, "set": sets, "output": output}


def write_jobs(path: Path, entries) -> Path:
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries), encoding="utf-8")
    return path


def batch(cwd: Path, jobs: Path, *extra: str, timeout: int = 600, env=None) -> subprocess.CompletedProcess:
    """``python run.py batch JOBS --input-dir in --models-dir models --offline ...`` as a user types it."""
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "run.py"), "batch", str(jobs), "--input-dir", "in", "--models-dir", "models",
               "--offline", "--report", "report.json", *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def report(cwd: Path) -> dict:
    return {entry["line"]: entry for entry in json.loads((cwd / "report.json").read_text())}


def frames(path: Path) -> np.ndarray:
    from core.video import read_frames

    return np.stack(list(read_frames(path)))


def leftovers(out: Path):
    """Anything in the output folder that is not a finished output: work folders, partial files."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith(".") or "partial" in p.name)


def test_batch_one_after_another(place):
    jobs = write_jobs(place / "jobs.jsonl", [
        "# a comment, then a blank line",
        "",
        job("anna.mp4", seed=1),
        {**job("talks/ben.mp4", seed=2), "set": ["portrait.detector=center", "motion.seed=2", "video.preset=ultrafast"]},
        job("ui.mp4", seed=1, workflow=UI_WORKFLOW),                       # a UI-format workflow reads the same
        '{"workflow": "x.json", "output": ',                                # not JSON
        job("anna.mp4", seed=3),                                            # the same output as line 3
        job("../escape.mp4"),                                               # outside the output folder
        {**job("typo.mp4"), "sett": {}},                                    # an unknown key
        job("nodetail.mp4", **{"motion.no_such_input": 1}),                 # an override the node lacks
        job("noweights.mp4", **{"portrait.detector": "face-alignment sfd"}),  # fails when it runs (no detector weights)
        job("wrong.png"),                                                   # the workflow saves an mp4
    ])
    res = batch(place, jobs)
    assert res.returncode == 1, res.stderr
    out = place / "output"
    assert res.stdout.split() == [str(out / "anna.mp4"), str(out / "talks" / "ben.mp4"), str(out / "ui.mp4")]
    got = report(place)
    assert [got[n]["status"] for n in (3, 4, 5)] == ["done"] * 3
    assert all(got[n]["status"] == "failed" for n in (6, 7, 8, 9, 10, 11, 12))
    assert "not valid JSON" in got[6]["error"] and "also line 3's" in got[7]["error"]
    assert "outside the output folder" in got[8]["error"] and "'sett'" in got[9]["error"]
    assert "no_such_input" in got[10]["error"]
    assert got[11]["attempts"] == 2 and "s3fd" in got[11]["error"]          # tried twice, then reported
    assert got[12]["attempts"] == 2 and "saved a .mp4 file" in got[12]["error"]
    assert all(got[n]["attempts"] == 0 for n in (6, 7, 8, 9, 10))           # refused before running
    assert "3 done, 0 skipped (output exists), 7 failed" in res.stderr
    assert sorted(p.name for p in out.rglob("*.*")) == ["anna.mp4", "ben.mp4", "ui.mp4"]
    assert leftovers(out) == []
    (w, h, n), codec, seconds = mp4_facts(out / "anna.mp4")
    assert (w, h, n) == (96, 120, 8) and codec == "aac"
    # the same workflow in UI and API format, same seed: the same video; another seed, another video
    assert np.array_equal(frames(out / "anna.mp4"), frames(out / "ui.mp4"))
    assert not np.array_equal(frames(out / "anna.mp4"), frames(out / "talks" / "ben.mp4"))

    # a rerun runs only what is missing: the finished outputs are left as they are
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    (out / "ui.mp4").unlink()
    del stamp[out / "ui.mp4"]
    again = batch(place, jobs)
    assert again.returncode == 1 and again.stdout.split() == [str(out / "ui.mp4")], again.stderr
    rerun = report(place)
    assert rerun[3]["status"] == rerun[4]["status"] == "skipped" and rerun[5]["status"] == "done"
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    assert leftovers(out) == []


def test_batch_errors_before_running(place):
    res = batch(place, place / "missing.jsonl")
    assert res.returncode == 1 and "cannot read the jobs file" in res.stderr and "Traceback" not in res.stderr
    empty = write_jobs(place / "empty.jsonl", ["# nothing"])
    res = batch(place, empty)
    assert res.returncode == 1 and "holds no jobs" in res.stderr
    res = batch(place, write_jobs(place / "one.jsonl", [job("a.mp4")]), "--ray", "auto", "--workers", "0")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    # a byte-order mark before the first line (some Windows editors write one) and a workflow that is not there
    bom = place / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"workflow": "nope.json", "output": "a.mp4"}).encode() + b"\n")
    res = batch(place, bom)
    assert res.returncode == 1 and report(place)[1]["error"].startswith("cannot read workflow file nope.json")
    # an output through a symlinked sub-folder that leads out of the output folder (MuxVideo's prefix rule)
    (place / "elsewhere").mkdir()
    (place / "output").mkdir(exist_ok=True)
    (place / "output" / "link").symlink_to(place / "elsewhere", target_is_directory=True)
    res = batch(place, write_jobs(place / "link.jsonl", [job("link/a.mp4")]))
    assert res.returncode == 1 and "points outside the output folder" in report(place)[1]["error"]
    assert not list((place / "elsewhere").iterdir())


@pytest.mark.parametrize("cluster,asked,planned", [
    ((2, 0), (None, None, None), (1, 2.0, 0.0)),         # a 2-core machine: one worker with both cores
    ((16, 0), (None, None, None), (4, 4.0, 0.0)),        # 16 cores: four workers of 4
    ((2, 0), (2, None, None), (2, 1.0, 0.0)),
    ((16, 4), (None, None, None), (4, 4.0, 1.0)),        # one worker per GPU, the CPUs shared out
    ((16, 4), (2, None, None), (2, 8.0, 1.0)),
    ((8, 2), (None, 2.0, 0.5), (4, 2.0, 0.5)),           # two workers per GPU
    ((8, 2), (3, 1.0, 0.0), (3, 1.0, 0.0)),              # CPU workers on a GPU cluster, when asked
])
def test_workers_follow_the_cluster(cluster, asked, planned):
    sys.path.insert(0, str(ROOT))
    import run

    cluster_mod = importlib.import_module(f"{run.load_pack().__name__}.headless.cluster")
    assert cluster_mod.plan_workers(*cluster, *asked) == planned


@pytest.mark.parametrize("cluster,asked,message", [
    ((2, 0), (3, 1.0, None), "need 3 CPUs; the cluster has 2"),
    ((16, 1), (2, None, 1.0), "need 2 GPUs; the cluster has 1"),
    ((2, 0), (0, None, None), "at least 1"),
    ((2, 0), (None, 0.0, None), "more than 0"),
])
def test_a_plan_the_cluster_cannot_hold_is_refused(cluster, asked, message):
    sys.path.insert(0, str(ROOT))
    import run

    name = run.load_pack().__name__
    cluster_mod = importlib.import_module(f"{name}.headless.cluster")
    errors = importlib.import_module(f"{name}.core.errors")
    with pytest.raises(errors.TalkingHeadError, match=message):
        cluster_mod.plan_workers(*cluster, *asked)


@pytest.fixture
def batch_module():
    sys.path.insert(0, str(ROOT))
    import run

    name = run.load_pack().__name__
    return importlib.import_module(f"{name}.headless.batch"), run.registry()


def test_second_attempt_never_overwrites(place, batch_module, monkeypatch):
    """Two attempts of one job that both finish (a worker given up on that came back): the first one's file stays,
    the second reports success without touching it; an attempt's folder is removed either way."""
    monkeypatch.chdir(place)
    mod, registry = batch_module
    out = place / "output"
    (jobs,) = mod.read_jobs(write_jobs(place / "j.jsonl", [job("same.mp4")]), registry, out, [place / "in"])
    assert jobs.problem is None
    first = {"prompt": jobs.prompt, "output": str(jobs.path), "input_dirs": jobs.input_dirs,
             "models_dir": str(place / "models"), "offline": True}
    a = mod.run_job({**first, "work": str(out / mod.WORK_FOLDER / "r" / "1-1")}, registry)
    assert a["ok"] and a["published"], a
    before = (out / "same.mp4").read_bytes()
    changed = {**first, "prompt": mod.read_jobs(write_jobs(place / "k.jsonl", [job("same.mp4", seed=5)]), registry,
                                                out, [place / "in"])[0].prompt}
    b = mod.run_job({**changed, "work": str(out / mod.WORK_FOLDER / "r" / "1-2")}, registry)
    assert b["ok"] and not b["published"], b
    assert (out / "same.mp4").read_bytes() == before
    assert not (out / mod.WORK_FOLDER / "r" / "1-1").exists() and not (out / mod.WORK_FOLDER / "r" / "1-2").exists()


def test_several_files_make_a_folder(place, batch_module, monkeypatch, tmp_path):
    """A workflow that saves two files: the job's output is a folder holding both, published in one rename."""
    monkeypatch.chdir(place)
    mod, registry = batch_module
    prompt = json.loads(Path(WORKFLOW).read_text())
    video = next(k for k, node in prompt.items() if node["class_type"] == "TalkingHead_MuxVideo")
    prompt["99"] = json.loads(json.dumps(prompt[video]))
    prompt["99"]["inputs"]["filename_prefix"] = "second"
    prompt["99"]["_meta"]["title"] = "second video"
    wf = tmp_path / "two.api.json"
    wf.write_text(json.dumps(prompt))
    out = place / "output"
    (j,) = mod.read_jobs(write_jobs(place / "j.jsonl", [job("pair", workflow=str(wf))]), registry, out, [place / "in"])
    outcomes = mod.run_batch([j], mod.LocalPool(registry), out, models_dir=place / "models", offline_weights=True)
    assert outcomes[0].status == "done", outcomes[0].error
    assert sorted(p.name.split("_")[0] for p in (out / "pair").rglob("*.mp4")) == ["liveportrait", "second"]
    assert leftovers(out) == []


@RAY
def test_ray_batch_survives_a_killed_worker(place):
    """On a real local Ray cluster with two workers: a long render split in two parts, one per worker, then six
    jobs; one worker is killed (SIGKILL) in the middle of the long job. A new worker takes its place, the job runs
    again, and every output appears exactly once, whole, equal to the same job run without Ray; the joined render
    equals the whole one bit for bit (lossless encoding)."""
    entries = [{**job("split.mp4", audio="long.wav", **{"video.crf": 0}), "segments": 2}]
    entries += [job(f"j{i}.mp4", seed=i) for i in range(6)]
    entries[3] = job("j2.mp4", seed=2, audio="long.wav")
    jobs = write_jobs(place / "jobs.jsonl", entries)
    out = place / "output"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "batch", str(jobs), "--input-dir", "in",
                             "--models-dir", "models", "--offline", "--report", "report.json", "--ray", "auto",
                             "--workers", "2", "--cpus-per-worker", "1", "--quiet"],
                            cwd=place, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        for claim in out.glob(".talkinghead-batch/*/4-1/worker.json"):
            try:
                killed = json.loads(claim.read_text())["pid"]
            except (OSError, ValueError):
                continue
            time.sleep(0.5)                       # well inside the 4 s job
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed is not None, stderr
    assert proc.returncode == 0, stderr
    got = report(place)
    assert all(entry["status"] == "done" for entry in got.values()), got
    assert got[4]["attempts"] == 2 and str(killed) not in got[4]["worker"]
    assert len(got[1]["worker"].split(", ")) == 2                  # the two parts ran on two workers
    names = ["split.mp4"] + [f"j{i}.mp4" for i in range(6)]
    assert sorted(stdout.split()) == sorted(str(out / name) for name in names)
    assert sorted(p.name for p in out.iterdir()) == sorted(names) and leftovers(out) == []
    assert mp4_facts(out / "j2.mp4")[0] == (96, 120, 100) and mp4_facts(out / "j0.mp4")[0] == (96, 120, 8)
    workers = {entry["worker"] for entry in got.values()}
    assert len(workers) >= 2                     # the jobs were spread over more than one process

    # the same jobs without Ray give the same videos (same code, same CPU, one torch thread either way)
    alone = write_jobs(place / "alone.jsonl", [job("alone.mp4", seed=4),
                                               job("whole.mp4", audio="long.wav", **{"video.crf": 0})])
    assert batch(place, alone, "--quiet").returncode == 0
    assert np.array_equal(frames(out / "alone.mp4"), frames(out / "j4.mp4"))
    assert np.array_equal(frames(out / "whole.mp4"), frames(out / "split.mp4"))
    assert mp4_facts(out / "split.mp4")[1:] == mp4_facts(out / "whole.mp4")[1:]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_split_render_equals_whole(place):
    """A render cut into parts (each encoded on its own, joined without re-encoding, the sound added once) against
    the same workflow rendered whole: losslessly encoded (crf 0) the decoded frames are equal, bit for bit; at the
    default crf each part is its own lossy encode, no worse than the whole one; the length and the sound track are
    the whole render's. The still-portrait workflow (one frame held over the speech, extend_to_audio) splits too."""
    still = str(ROOT / "workflows" / "api" / "portrait_still_video.api.json")
    lossless = {"video.crf": 0}
    jobs = write_jobs(place / "jobs.jsonl", [
        job("whole.mp4", audio="long.wav", **lossless),
        {**job("split.mp4", audio="long.wav", **lossless), "segments": 3},
        job("whole19.mp4", audio="long.wav"),
        {**job("split19.mp4", audio="long.wav"), "segments": 2},
        {"workflow": still, "set": {"audio.audio": "long.wav", "video.crf": 0, "video.preset": "ultrafast"},
         "output": "still.mp4"},
        {"workflow": still, "set": {"audio.audio": "long.wav", "video.crf": 0, "video.preset": "ultrafast"},
         "output": "still3.mp4", "segments": 3},
        {**job("toomany.mp4", **lossless), "segments": 20},                 # 8 frames in 20 parts: empty parts
        job("short.mp4", **lossless),
        {**job("direct.mp4", workflow=str(ROOT / "workflows" / "api" / "liveportrait_procedural_long.api.json")),
         "segments": 2},                                                    # renders straight into its mp4
        {**job("zero.mp4"), "segments": 0},
    ])
    res = batch(place, jobs, "--quiet")
    got = report(place)
    assert res.returncode == 1 and [got[n]["status"] for n in range(1, 9)] == ["done"] * 8, res.stderr
    assert "only output is one MuxVideo" in got[9]["error"] and "'segments'" in got[10]["error"]
    out = place / "output"
    whole, split = frames(out / "whole.mp4"), frames(out / "split.mp4")
    assert whole.shape == (100, 120, 96, 3) and np.array_equal(whole, split)
    for name in ("split.mp4", "split19.mp4"):
        info = mp4_facts(out / name)
        assert info[0] == (96, 120, 100) and info[1] == "aac" and info[2] == pytest.approx(4.0, abs=0.03), name
    assert psnr(frames(out / "split19.mp4"), whole) >= psnr(frames(out / "whole19.mp4"), whole) - 1.0
    assert np.array_equal(frames(out / "still.mp4"), frames(out / "still3.mp4"))
    assert mp4_facts(out / "still3.mp4")[0] == mp4_facts(out / "still.mp4")[0] == (256, 256, 100)
    assert np.array_equal(frames(out / "toomany.mp4"), frames(out / "short.mp4"))
    assert mp4_facts(out / "toomany.mp4")[0] == (96, 120, 8)
    # the workflow embedded in the joined file is the job's own (ComfyUI reopens it), not the parts' rewritten one
    embedded = json.loads(metadata(out / "split.mp4")["prompt"])
    assert [n["class_type"] for n in embedded.values()].count("TalkingHead_MuxVideo") == 1
    assert embedded == json.loads(metadata(out / "whole.mp4")["prompt"])
    assert leftovers(out) == []


def metadata(path: Path) -> dict:
    """The container's tags (what MuxVideo embeds: the prompt), read back with ffmpeg."""
    from core.audio import ffmpeg_exe

    text = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"], capture_output=True,
                          text=True, check=True).stdout
    tags = {}
    for line in text.splitlines()[1:]:      # after ";FFMETADATA1": key=value, with = ; # \\ escaped by a backslash
        name, sep, value = line.partition("=")
        if sep:
            tags[name] = re.sub(r"\\(.)", r"\1", value)
    return tags


def test_sigterm_stops_a_batch_cleanly(place):
    """SIGTERM (a scheduler or a container stopping) in the middle of the second job: exit code 143, the first output
    stays, nothing half-written is left; the same command again skips the first job and makes the rest."""
    jobs = write_jobs(place / "jobs.jsonl", [job("a.mp4"), job("b.mp4", audio="long.wav"), job("c.mp4", seed=1)])
    out = place / "output"
    command = [sys.executable, str(ROOT / "run.py"), "batch", str(jobs), "--input-dir", "in", "--models-dir", "models",
               "--offline", "--quiet"]
    proc = subprocess.Popen(command, cwd=place, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not list(out.glob(".talkinghead-batch/*/2-1/worker.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped (SIGTERM)" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4"] and leftovers(out) == []
    again = subprocess.run(command, cwd=place, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and again.stdout.split() == [str(out / "b.mp4"), str(out / "c.mp4")], again.stderr
    assert "2 done, 1 skipped" in again.stderr


@RAY
def test_batch_on_a_cluster_started_with_ray_start(place):
    """`ray start --head` on 127.0.0.1 (a cluster the batch joins by its address, as on real machines), two workers:
    the jobs run there, and the cluster is still up afterwards (the batch only leaves it)."""
    import socket

    ray_cli = Path(sys.executable).with_name("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a secured cluster as Ray's docs set one up: token mode, the same token on every node and on the driver
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "a" * 32}
    subprocess.run([str(ray_cli), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=180)
    try:
        jobs = write_jobs(place / "jobs.jsonl", [job(f"n{i}.mp4", seed=i) for i in range(3)]
                          + [{**job("parts.mp4", audio="long.wav"), "segments": 2}])
        res = batch(place, jobs, "--ray", f"127.0.0.1:{port}", "--workers", "2", "--quiet", env=env)
        assert res.returncode == 0, res.stderr
        assert "2 Ray worker(s), 1 CPU each" in res.stderr
        got = report(place)
        assert all(entry["status"] == "done" for entry in got.values())
        assert len({w for entry in got.values() for w in entry["worker"].split(", ")}) == 2
        assert mp4_facts(place / "output" / "parts.mp4")[0] == (96, 120, 100)
        status = subprocess.run([str(ray_cli), "status", "--address", f"127.0.0.1:{port}"], capture_output=True,
                                text=True, env=env, timeout=120)
        assert status.returncode == 0, status.stderr
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, env=env, timeout=180)


def test_output_that_cannot_be_written_is_reported(place):
    """An output name whose folder is a file (found when the job publishes), and one too long for the file system
    (refused before anything runs): each job reports why in words (no traceback), the others finish."""
    (place / "output").mkdir()
    (place / "output" / "taken").write_text("a file, not a folder")
    jobs = write_jobs(place / "jobs.jsonl", [job("taken/a.mp4"), job("x" * 300 + ".mp4"), job("ok.mp4")])
    res = batch(place, jobs, "--quiet", "--retries", "0")
    got = report(place)
    assert res.returncode == 1 and got[3]["status"] == "done", res.stderr
    assert got[1]["status"] == got[2]["status"] == "failed" and "Traceback" not in res.stderr
    assert "cannot write" in got[1]["error"] and "too long" in got[2]["error"]
    assert leftovers(place / "output") == []


def test_ray_not_installed_says_how_to_install_it(place):
    """--ray without Ray: one line saying how to install it (the default install never needs Ray)."""
    jobs = write_jobs(place / "jobs.jsonl", [job("a.mp4")])
    code = ("import runpy, sys; sys.modules['ray'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code, str(ROOT / "run.py"), "batch", str(jobs), "--input-dir", "in",
                          "--models-dir", "models", "--offline", "--ray", "auto"], cwd=place, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1 and "requirements-ray.txt" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (place / "output" / "a.mp4").exists()
