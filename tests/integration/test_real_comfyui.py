"""Opt-in integration test: the pack inside a REAL ComfyUI server (CPU), over its HTTP API.

Skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout whose requirements are installed in
the Python that runs it. The test never touches that checkout: it starts
``python main.py --cpu --base-directory <tmp>`` where ``<tmp>/custom_nodes`` holds only a
symlink to this repository under a folder name that is not a Python identifier, and
``<tmp>/input`` holds the example portrait and speech. The server listens on a free port
of 127.0.0.1 only and is always terminated.

Optional variables:

* ``COMFYUI_PYTHON``: the interpreter for ComfyUI (default: the one running pytest).
* ``COMFYUI_PYTHONPATH``: extra entries put in front of ``PYTHONPATH`` for the server only.
  ComfyUI 0.3.x imports torchvision and torchaudio at startup; on a machine without them, a
  folder of import-only stub modules can be given here.
* ``COMFYUI_STARTUP_TIMEOUT``: seconds to wait for the server (default 180).

Example::

    COMFYUI_DIR=~/ComfyUI python -m pytest -q tests/integration
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "").strip()

pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run this test")

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "workflows" / "portrait_still_video.api.json"
EXAMPLES = ROOT / "examples"
ODD_FOLDER_NAME = "ComfyUI-Talking Head.toolkit (it)"
HOST = "127.0.0.1"

NODES = {  # node id -> display name
    "TalkingHead_LoadPortrait": "LoadPortrait",
    "TalkingHead_ResizePad256": "ResizePad256",
    "TalkingHead_MuxVideo": "MuxVideo",
    "TalkingHead_UnloadModels": "UnloadModels",
    "TalkingHead_FOMAnimate": "FOMAnimate",
    "TalkingHead_LivePortraitExtractMotion": "LivePortraitExtractMotion",
    "TalkingHead_LivePortraitRender": "LivePortraitRender",
    "TalkingHead_SaveMotion": "SaveMotion",
    "TalkingHead_LoadMotion": "LoadMotion",
    "TalkingHead_ProceduralMotion": "ProceduralMotion",
    "TalkingHead_AudioToEmbedding": "AudioToEmbedding",
    "TalkingHead_MotionDiT": "MotionDiT",
    "TalkingHead_JoinSegments": "JoinSegments",
    "TalkingHead_SDABase": "SDABase",
}

STARTUP_TIMEOUT = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "180"))
HTTP_TIMEOUT = 30.0       # one request
PROMPT_TIMEOUT = 240.0    # one queued workflow, from POST to a finished history entry
POLL_INTERVAL = 0.5


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """A running ComfyUI: its base URL, base directory and log."""

    def __init__(self, proc: subprocess.Popen, port: int, base: Path, log: Path) -> None:
        self.proc, self.port, self.base, self.log = proc, port, base, log
        self.url = f"http://{HOST}:{port}"

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def request(self, method: str, path: str, body=None):
        """(HTTP status, decoded JSON or raw bytes) for one request; HTTP errors are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body):
        return self.request("POST", path, body)

    def run_prompt(self, prompt: dict, **extra) -> dict:
        """Queue ``prompt``, poll ``/history`` (bounded) and return its history entry."""
        status, reply = self.post("/prompt", {"prompt": prompt, "client_id": "talkinghead-it", **extra})
        assert status == 200, f"POST /prompt -> {status}: {json.dumps(reply, indent=1)}"
        assert reply.get("node_errors") == {}, reply
        prompt_id = reply["prompt_id"]
        deadline = time.monotonic() + PROMPT_TIMEOUT
        for _ in range(int(PROMPT_TIMEOUT / POLL_INTERVAL) + 1):
            status, history = self.get(f"/history/{prompt_id}")
            assert status == 200, (status, history)
            entry = history.get(prompt_id)
            if entry and (entry["status"]["completed"] or entry["status"]["status_str"] == "error"):
                return entry
            assert self.proc.poll() is None, f"ComfyUI exited ({self.proc.returncode}):\n{self.log_tail()}"
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)
        pytest.fail(f"prompt {prompt_id} did not finish within {PROMPT_TIMEOUT:.0f} s:\n{self.log_tail()}")


def _errors(entry: dict) -> str:
    msgs = [m for m in entry["status"].get("messages", []) if m[0] in ("execution_error", "execution_interrupted")]
    return json.dumps(msgs, indent=1)[:6000]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    comfy_dir = Path(COMFYUI_DIR).expanduser().resolve()
    if not (comfy_dir / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={COMFYUI_DIR!r} is not a ComfyUI checkout (no main.py)")

    base = tmp_path_factory.mktemp("comfy_base")
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir()
    try:
        (custom_nodes / ODD_FOLDER_NAME).symlink_to(ROOT, target_is_directory=True)
    except OSError as exc:  # e.g. Windows without the symlink privilege
        pytest.skip(f"cannot create a symlink here: {exc}")
    (base / "input").mkdir()
    for name in ("portrait.png", "speech.wav", "driving.mp4"):
        shutil.copy2(EXAMPLES / name, base / "input" / name)
    shutil.copy2(ROOT / "tests" / "fixtures" / "driving_short.mp4", base / "input" / "driving_short.mp4")
    (base / "models" / "liveportrait").mkdir(parents=True)  # tiny seeded LivePortrait weights
    for f in (ROOT / "tests" / "fixtures" / "liveportrait" / "weights").iterdir():
        shutil.copy2(f, base / "models" / "liveportrait" / f.name)
    (base / "models" / "fom").mkdir(parents=True)  # tiny random FOM weights (official layout)
    shutil.copy2(ROOT / "tests" / "fixtures" / "fom" / "tiny-cpk.pth.tar", base / "models" / "fom" / "tiny-cpk.pth.tar")

    env = dict(os.environ)
    extra_path = os.environ.get("COMFYUI_PYTHONPATH", "").strip()
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH", "")) if p)
    env["TALKINGHEAD_OFFLINE"] = "1"  # the workflow needs no weights: never download
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"

    port = _free_port()
    log = base / "comfyui.log"
    cmd = [os.environ.get("COMFYUI_PYTHON") or sys.executable, "main.py", "--cpu",
           "--listen", HOST, "--port", str(port), "--base-directory", str(base),
           "--disable-auto-launch"]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=str(comfy_dir), env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    server = Server(proc, port, base, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        ready = False
        for _ in range(int(STARTUP_TIMEOUT / POLL_INTERVAL) + 1):
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited during startup ({proc.returncode}):\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(f"{server.url}/system_stats", timeout=5) as resp:
                    ready = resp.status == 200
            except (urllib.error.URLError, OSError):
                ready = False
            if ready or time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)
        if not ready:
            pytest.fail(f"ComfyUI was not ready within {STARTUP_TIMEOUT:.0f} s:\n{server.log_tail()}")
        yield server
    finally:
        _stop(proc)


# --------------------------------------------------------------------------- tests


def test_pack_imports_without_errors(comfy):
    text = comfy.log.read_text(errors="replace")
    pack_dir = str(comfy.base / "custom_nodes" / ODD_FOLDER_NAME)
    assert "Import times for custom nodes" in text, comfy.log_tail()
    summary = [line for line in text.splitlines() if pack_dir in line]
    assert summary and not any("IMPORT FAILED" in line for line in summary), "\n".join(summary) or comfy.log_tail()
    assert f"Cannot import {pack_dir}" not in text, comfy.log_tail()


def test_object_info_lists_our_nodes(comfy):
    for node_id, display in NODES.items():
        status, info = comfy.get(f"/object_info/{node_id}")
        assert status == 200 and node_id in info, (node_id, status, info)
        node = info[node_id]
        assert node["display_name"] == display
        assert node["category"].startswith("TalkingHead/"), node["category"]
        assert node["python_module"] == f"custom_nodes.{ODD_FOLDER_NAME}"
        assert node["description"]
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    status, info = comfy.get("/object_info/TalkingHead_MuxVideo")
    assert info["TalkingHead_MuxVideo"]["output_node"] is True


def test_model_folders_are_registered(comfy):
    from core import weights

    status, folders = comfy.get("/models")
    assert status == 200
    for key in weights.model_folders():
        assert key in folders, (key, folders)
        status, files = comfy.get(f"/models/{key}")
        assert status == 200 and isinstance(files, list), (key, status, files)


def test_still_video_workflow(comfy):
    from core import video

    prompt = json.loads(WORKFLOW.read_text())
    entry = comfy.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", _errors(entry)
    assert entry["status"]["completed"] is True

    files = entry["outputs"]["4"]["images"]
    assert len(files) == 1, entry["outputs"]
    out = files[0]
    assert out["type"] == "output" and out["subfolder"] == "TalkingHead", out
    assert out["filename"].startswith("still_") and out["filename"].endswith("_.mp4"), out
    path = comfy.base / "output" / out["subfolder"] / out["filename"]
    assert path.is_file(), path
    assert not list(path.parent.glob(".*partial*")), "a partial file was left behind"

    info = video.probe(path)
    assert info["video"] and info["video"]["codec"] == "h264", info
    assert (info["video"]["width"], info["video"]["height"]) == (256, 256), info
    assert info["video"]["pix_fmt"] == "yuv420p", info
    assert info["audio"] and info["audio"]["codec"] == "aac", info
    speech = video.probe(EXAMPLES / "speech.wav")["duration"]
    assert abs(info["duration"] - speech) <= 0.1, (info["duration"], speech)  # held for the whole speech

    status, raw = comfy.request("GET", f"/view?filename={out['filename']}&subfolder={out['subfolder']}&type=output")
    assert status == 200 and raw == path.read_bytes()


def test_free_memory(comfy):
    status, _ = comfy.post("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    status, _ = comfy.get("/system_stats")
    assert status == 200 and comfy.proc.poll() is None


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "missing.png"])
def test_bad_portrait_names_fail_validation(comfy, name):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["1"]["inputs"]["image"] = name
    status, reply = comfy.post("/prompt", {"prompt": prompt})
    assert status == 400, reply
    assert reply["error"]["type"] == "prompt_outputs_failed_validation", reply
    errors = reply["node_errors"]["1"]["errors"]
    assert reply["node_errors"]["1"]["class_type"] == "TalkingHead_LoadPortrait"
    assert errors[0]["type"] == "custom_validation_failed" and errors[0]["extra_info"]["input_name"] == "image", errors


def test_unload_models_passthrough_between_stages(comfy):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["9"] = {"class_type": "TalkingHead_UnloadModels", "inputs": {"family": "all", "passthrough": ["3", 0]}}
    prompt["4"]["inputs"]["images"] = ["9", 0]
    prompt["4"]["inputs"]["filename_prefix"] = "TalkingHead/unload"
    entry = comfy.run_prompt(copy.deepcopy(prompt))
    assert entry["status"]["status_str"] == "success", _errors(entry)
    assert entry["outputs"]["4"]["images"][0]["filename"].startswith("unload_")
    assert "text" in entry["outputs"]["9"]


def test_fom_workflow_with_native_video_nodes(comfy):
    """workflows/fom_animate_video.api.json as shipped (ComfyUI's own LoadVideo and
    GetVideoComponents), with the tiny official-layout checkpoint and the center detector."""
    prompt = json.loads((ROOT / "workflows" / "fom_animate_video.api.json").read_text())
    prompt["1"]["inputs"]["detector"] = "center"
    prompt["5"]["inputs"]["checkpoint"] = "tiny-cpk.pth.tar"
    entry = comfy.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", _errors(entry)
    item = entry["outputs"]["6"]["images"][0]
    mp4 = comfy.base / "output" / item["subfolder"] / item["filename"]
    from core import video

    info = video.probe(mp4)
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (256, 256, 50)
    assert info["audio"]["codec"] == "aac"


def test_liveportrait_video_driven_workflow(comfy):
    """workflows/liveportrait_video_driven.api.json with the tiny weights: the pack's PORTRAIT and
    MOTION types flow between nodes in the real server."""
    prompt = json.loads((ROOT / "workflows" / "liveportrait_video_driven.api.json").read_text())
    prompt["1"]["inputs"]["detector"] = "center"
    prompt["2"]["inputs"]["file"] = "driving_short.mp4"
    prompt["4"]["inputs"]["crop"] = "as is (already face crops)"
    entry = comfy.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", _errors(entry)
    item = entry["outputs"]["6"]["images"][0]
    from core import video

    info = video.probe(comfy.base / "output" / item["subfolder"] / item["filename"])
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (480, 600, 6)
