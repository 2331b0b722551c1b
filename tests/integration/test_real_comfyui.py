"""Opt-in integration test: the pack inside a REAL ComfyUI server (CPU), over its HTTP API.

Skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout whose requirements are installed in
the Python that runs it. The test never touches that checkout: it starts
``python main.py --cpu --base-directory <tmp>`` where ``<tmp>/custom_nodes`` holds only a
symlink to this repository under a folder name that is not a Python identifier,
``<tmp>/input`` holds the example portrait, speech and driving videos (plus a 0.6 s and a 60 s
speech clip and a 5-frame motion), and ``<tmp>/models`` holds the tiny test weights of every
model family (LivePortrait, Ditto + a tiny HuBERT, JoyVASA, SDA, FOM), placed before the server
starts. The server listens on a free port of 127.0.0.1 only and is always terminated.

``test_api_workflow`` queues every ``workflows/api/*.api.json`` with the overrides listed in
:data:`WORKFLOW_CASES` (tiny checkpoints, the ``center`` detector, short inputs) and checks the
mp4 it writes; a new workflow without an entry there fails and says so. ``test_cancel_*``
interrupt running prompts (during rendering and during the mp4 encode) and check that nothing is
left behind and that the server still works.

Optional variables:

* ``COMFYUI_PYTHON``: the interpreter for ComfyUI (default: the one running pytest).
* ``COMFYUI_PYTHONPATH``: extra entries put in front of ``PYTHONPATH`` for the server only.
  ComfyUI 0.3.x imports torchvision and torchaudio at startup; on a machine without them, a
  folder of import-only stub modules can be given here.
* ``COMFYUI_STARTUP_TIMEOUT``: seconds to wait for the server (default 180).
* ``COMFYUI_PROMPT_TIMEOUT``: seconds one queued workflow may take (default 300).

Example::

    COMFYUI_DIR=~/ComfyUI python -m pytest -q tests/integration
"""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict

import pytest

from frontend.browser import stop_process  # tools/frontend (on sys.path through conftest)
from procs import running_processes
from workflow_cases import (API_WORKFLOWS, DITTO, FOM, JOYVASA, LONG_SPEECH, SDA, WORKFLOW_CASES, Case,  # noqa: F401
                            check_mp4, load_workflow, place_inputs, place_models, saved_files, video_nodes)

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "").strip()

pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run this test")

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows" / "api"  # API format (the UI files are one level up)
WORKFLOW = WORKFLOWS / "portrait_still_video.api.json"
EXAMPLES = ROOT / "example_inputs"
ODD_FOLDER_NAME = "ComfyUI-Talking Head.toolkit (it)"
HOST = "127.0.0.1"

#: the input the pack's on-prompt hook adds to its nodes whose IMAGE outputs are made only when connected
LINKS_KEY = "talkinghead_linked_outputs"
NODES = {  # node id -> display name
    "TalkingHead_LoadPortrait": "LoadPortrait",
    "TalkingHead_ResizePad256": "ResizePad256",
    "TalkingHead_MuxVideo": "MuxVideo",
    "TalkingHead_UnloadModels": "UnloadModels",
    "TalkingHead_FOMAnimate": "FOMAnimate",
    "TalkingHead_LivePortraitExtractMotion": "LivePortraitExtractMotion",
    "TalkingHead_LoadLivePortrait": "LoadLivePortrait",
    "TalkingHead_LivePortraitRender": "LivePortraitRender",
    "TalkingHead_LivePortraitRenderVideo": "LivePortraitRenderVideo",
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
PROMPT_TIMEOUT = float(os.environ.get("COMFYUI_PROMPT_TIMEOUT", "300"))  # POST -> finished history entry
POLL_INTERVAL = 0.2

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
        self.output = base / "output"
        self.tmp = base / "tmp"  # the server's TMPDIR

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

    def alive(self) -> None:
        assert self.proc.poll() is None, f"ComfyUI exited ({self.proc.returncode}):\n{self.log_tail()}"

    def queue(self, prompt: dict, **extra) -> str:
        """``POST /prompt``; returns the prompt id."""
        status, reply = self.post("/prompt", {"prompt": prompt, "client_id": "talkinghead-it", **extra})
        assert status == 200, f"POST /prompt -> {status}: {json.dumps(reply, indent=1)}"
        assert reply.get("node_errors") == {}, reply
        return reply["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT) -> dict:
        """Poll ``/history`` (bounded) until ``prompt_id`` finished; its history entry."""
        deadline = time.monotonic() + timeout
        while True:
            status, history = self.get(f"/history/{prompt_id}")
            assert status == 200, (status, history)
            entry = history.get(prompt_id)
            if entry and (entry["status"]["completed"] or entry["status"]["status_str"] == "error"):
                return entry
            self.alive()
            if time.monotonic() > deadline:
                pytest.fail(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)

    def run_prompt(self, prompt: dict, **extra) -> dict:
        """Queue ``prompt``, poll ``/history`` (bounded) and return its history entry."""
        return self.wait(self.queue(prompt, **extra))

    def running(self) -> list:
        status, q = self.get("/queue")
        assert status == 200, (status, q)
        return [item[1] for item in q["queue_running"]]

    def pending(self) -> list:
        status, q = self.get("/queue")
        assert status == 200, (status, q)
        return [item[1] for item in q["queue_pending"]]

    def output_files(self) -> set:
        """Every file under output/ (relative paths), hidden ones included."""
        if not self.output.is_dir():
            return set()
        return {p.relative_to(self.output).as_posix() for p in self.output.rglob("*") if p.is_file()}

    def leftovers(self) -> list:
        """Temporary files the pack may leave when something goes wrong: hidden or ``.partial``
        files in output/, temp/ or the models folder, and mux work folders in the server's TMPDIR."""
        found = []
        for folder in (self.output, self.base / "temp", self.base / "models"):
            if folder.is_dir():
                found += [str(p) for p in folder.rglob("*")
                          if p.name.startswith(".") or ".partial" in p.name or p.name.startswith(".download-")]
        if self.tmp.is_dir():
            found += [str(p) for p in self.tmp.iterdir() if p.name.startswith("talkinghead")]
        return found + [f"ffmpeg process {pid}" for pid in self.ffmpeg_children()]

    def ffmpeg_children(self) -> list:
        """ffmpeg processes the server started and did not end (an encoder or decoder left running by a cancel)."""
        return [p.pid for p in running_processes() if p.ppid == self.proc.pid and "ffmpeg" in p.name]


def _errors(entry: dict) -> str:
    msgs = [m for m in entry["status"].get("messages", []) if m[0] in ("execution_error", "execution_interrupted")]
    return json.dumps(msgs, indent=1)[:6000]


def _stop(proc: subprocess.Popen) -> None:
    stop_process(proc, 20)


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
    # everything is in place BEFORE the server starts, as for a user who copied files then launched ComfyUI
    place_inputs(base / "input")
    place_models(base / "models")
    (base / "tmp").mkdir()

    env = dict(os.environ)
    extra_path = os.environ.get("COMFYUI_PYTHONPATH", "").strip()
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH", "")) if p)
    env["TALKINGHEAD_OFFLINE"] = "1"  # the tiny weights are all there is: never download
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["TMPDIR"] = str(base / "tmp")  # so the test sees temporary files the pack leaves
    for var in ("TALKINGHEAD_MODELS", "TALKINGHEAD_MODELS_DIR"):
        env.pop(var, None)  # only <base>/models

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


def test_checkpoint_combos_list_the_tiny_weights(comfy):
    """The checkpoint combos offer the files found in the models folder (official name first)."""
    def combo(node, section, name):
        status, info = comfy.get(f"/object_info/{node}")
        assert status == 200, (status, info)
        return info[node]["input"][section][name][0]

    assert {DITTO, JOYVASA} <= set(combo("TalkingHead_MotionDiT", "required", "checkpoint"))
    assert JOYVASA in combo("TalkingHead_AudioToEmbedding", "optional", "joyvasa_checkpoint")
    assert SDA in combo("TalkingHead_SDABase", "required", "checkpoint")
    assert FOM in combo("TalkingHead_FOMAnimate", "required", "checkpoint")


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
    # the frame stream passes through UnloadModels (an "any" socket) into MuxVideo's frames input
    assert prompt["4"]["inputs"]["frames"] == ["3", 1]
    prompt["9"] = {"class_type": "TalkingHead_UnloadModels", "inputs": {"family": "all", "passthrough": ["3", 1]}}
    prompt["4"]["inputs"]["frames"] = ["9", 0]
    prompt["4"]["inputs"]["filename_prefix"] = "TalkingHead/unload"
    entry = comfy.run_prompt(copy.deepcopy(prompt))
    assert entry["status"]["status_str"] == "success", _errors(entry)
    assert entry["outputs"]["4"]["images"][0]["filename"].startswith("unload_")
    assert "text" in entry["outputs"]["9"]


#: (output type, input type) pairs for the link rule; lists stand for custom nodes returning their options
LINK_CASES = [("IMAGE", "IMAGE"), ("IMAGE", "MASK"), ("*", "IMAGE"), ("IMAGE", "*"), ("STRING,INT", "INT"),
              ("STRING", "INT,FLOAT"), ("A, B", "B"), ("STRING,*", "INT"), ("INT", "FLOAT,*"), ("INT", "FLOAT,INT"),
              ("COMFY_MATCHTYPE_V3", "IMAGE"), ("IMAGE", "COMFY_MATCHTYPE_V3"), (["a", "b"], "COMBO"),
              (["a", "b"], ["a", "b"]), (["a", "b"], ["a", "c"]), (["a"], "STRING"), ("STRING", "COMBO"),
              ("TALKINGHEAD_LIVEPORTRAIT", "TALKINGHEAD_LIVEPORTRAIT"), ("TALKINGHEAD_MOTION", "TALKINGHEAD_PORTRAIT")]


def test_link_rule_is_comfyuis():
    """The headless runner accepts a link exactly when ComfyUI 0.8.0's own ``validate_node_input`` does (run in
    ComfyUI's interpreter, from its checkout), for plain, wildcard, union, MatchType and list types."""
    import importlib

    import run  # the pack loaded the way run.py loads it (headless/ imports core/ as its sibling)

    link_accepted = importlib.import_module(f"{run.load_pack().__name__}.headless.validation").link_accepted
    script = ("import json, sys\n"
              "from comfy_execution.validation import validate_node_input\n"
              "print(json.dumps([bool(validate_node_input(a, b)) for a, b in json.load(sys.stdin)]))\n")
    env = dict(os.environ)
    extra_path = os.environ.get("COMFYUI_PYTHONPATH", "").strip()
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH", "")) if p)
    res = subprocess.run([os.environ.get("COMFYUI_PYTHON") or sys.executable, "-c", script],
                         input=json.dumps(LINK_CASES), cwd=COMFYUI_DIR, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    theirs = json.loads(res.stdout.strip().splitlines()[-1])
    ours = [link_accepted(a, b) for a, b in LINK_CASES]
    assert ours == theirs, [(case, o, t) for case, o, t in zip(LINK_CASES, ours, theirs) if o != t]
    assert True in ours and False in ours


def test_workflow_saved_before_loadliveportrait_fails_naming_the_input(comfy):
    """A 0.2 prompt (each LivePortrait node with its own model/precision/device widgets, no LoadLivePortrait) is
    refused by ComfyUI before it runs, naming the missing ``liveportrait`` input of each such node, as the
    README and the headless runner's note say."""
    prompt = json.loads((WORKFLOWS / "liveportrait_procedural.api.json").read_text())
    (loader,) = [k for k, n in prompt.items() if n["class_type"] == "TalkingHead_LoadLivePortrait"]
    settings = prompt.pop(loader)["inputs"]
    users = [k for k, n in prompt.items() if n["inputs"].pop("liveportrait", None) is not None]
    for key in users:
        prompt[key]["inputs"].update(settings)
    assert len(users) == 2
    status, reply = comfy.post("/prompt", {"prompt": prompt})
    assert status == 400 and reply["error"]["type"] == "prompt_outputs_failed_validation", reply
    for key in users:
        (error,) = [e for e in reply["node_errors"][key]["errors"] if e["type"] == "required_input_missing"]
        assert error["message"] == "Required input is missing" and error["extra_info"]["input_name"] == "liveportrait"


def test_an_image_output_connected_later_is_made(comfy):
    """ComfyUI caches a node by its inputs. Run the still-portrait graph with only ResizePad256's frame stream
    connected (its IMAGE output is then not made), then again with a PreviewImage on that IMAGE output and
    nothing else changed: the node runs again (the pack's on-prompt hook put the connected outputs in its
    cache key) and the preview gets real frames, not the cached None."""
    prompt = json.loads(WORKFLOW.read_text())
    prompt["4"]["inputs"]["filename_prefix"] = "TalkingHead/linked"
    first = comfy.run_prompt(copy.deepcopy(prompt))
    assert first["status"]["status_str"] == "success", _errors(first)
    prompt["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    second = comfy.run_prompt(copy.deepcopy(prompt))
    assert second["status"]["status_str"] == "success", _errors(second)
    (preview,) = second["outputs"]["9"]["images"]  # the one still frame the graph resizes
    assert preview["type"] == "temp" and (comfy.base / "temp" / preview["subfolder"] / preview["filename"]).is_file()


def test_every_workflow_case_has_a_workflow():
    """No stale entries: each WORKFLOW_CASES key names an existing workflows/api/<key>.api.json."""
    stale = sorted(set(WORKFLOW_CASES) - set(API_WORKFLOWS))
    assert not stale, f"WORKFLOW_CASES has entries for missing workflows: {stale}"


@pytest.mark.parametrize("name", API_WORKFLOWS)
def test_api_workflow(comfy, name):
    """workflows/api/<name>.api.json through the real server on the tiny weights: success, exactly one new
    mp4 per MuxVideo in output/ with the expected size, frame count and AAC audio, nothing temporary left."""
    case = WORKFLOW_CASES.get(name)
    if case is None:
        pytest.fail(f"workflows/api/{name}.api.json has no entry in WORKFLOW_CASES ({Path(__file__).relative_to(ROOT)}): "
                    f"add the overrides it needs to run on the tiny test weights (checkpoint names, detector "
                    f"'center', short inputs) and the size, frame count and audio length of its mp4")
    prompt = load_workflow(name, case.overrides)
    writers = video_nodes(prompt)
    assert writers, f"{name}.api.json has no node that writes a video (no filename_prefix input)"
    before = comfy.output_files()
    entry = comfy.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True, _errors(entry)
    assert comfy.output_files() - before == check_outputs(comfy, entry, writers, case), "unexpected files in output/"
    assert not comfy.leftovers(), comfy.leftovers()


def check_outputs(comfy: Server, entry: dict, writers: Dict[str, dict], case: Case) -> set:
    """Each writer node reported one mp4 in output/ named after its prefix, as ``case`` expects;
    returns their paths relative to output/."""
    written = set()
    for node_id, node in writers.items():
        items = saved_files(entry["outputs"].get(node_id, {}))
        assert len(items) == 1, (node_id, entry["outputs"])
        item = items[0]
        sub, _, base = node["inputs"]["filename_prefix"].rpartition("/")
        assert item["type"] == "output" and item["subfolder"] == sub, item
        assert item["filename"].startswith(base + "_") and item["filename"].endswith("_.mp4"), item
        rel = f"{sub}/{item['filename']}" if sub else item["filename"]
        written.add(rel)
        check_mp4(comfy.output / rel, case.size, case.frames, case.seconds, case.audio_tol)
    return written


# --------------------------------------------------------------------------- cancel


def _partial_files(comfy: Server) -> list:
    return [p for p in comfy.output.rglob("*") if ".partial" in p.name] if comfy.output.is_dir() else []


#: stage -> (workflow, overrides, title of the node the interrupt must land in). Both run ~1500 frames
#: (60 s of speech), minutes on a CPU; the interrupt comes once that node reported progress.
CANCEL_CASES = {
    # the interrupt lands between LivePortraitRender's batches, which are rendered while MuxVideo pulls its
    # frame_stream (so in MuxVideo, with its hidden .partial file to remove)
    "render": ("liveportrait_procedural", {"portrait": {"detector": "center"}, "audio": {"audio": LONG_SPEECH},
                                            "video": {"filename_prefix": "TalkingHead/cancel_render"}}, "video"),
    # three streams in a chain: MuxVideo pulls FOMAnimate's frame_stream, which pulls ResizePad256's, which pulls
    # SDABase's; the interrupt lands between batches, in MuxVideo, which must remove its hidden .partial file
    "classic": ("classic_sda_fom", {**WORKFLOW_CASES["classic_sda_fom"].overrides, "audio": {"audio": LONG_SPEECH},
                                    "video": {"filename_prefix": "TalkingHead/cancel_classic"}}, "video"),
    # a still 1024x1024 frame held over the speech, encoded slowly: the interrupt lands while MuxVideo
    # streams into its hidden .partial file, which must go away
    "mux": ("portrait_still_video", {"audio": {"audio": LONG_SPEECH}, "resize": {"size": 1024},
                                     "video": {"filename_prefix": "TalkingHead/cancel_mux", "preset": "veryslow"}},
            "video"),
}


@pytest.mark.parametrize("stage", sorted(CANCEL_CASES))
def test_cancel_running_prompt(comfy, stage):
    """POST /interrupt while a long prompt runs: its history says interrupted (not success), no mp4 and no
    temporary file is left, the queue is free and the same workflow on short inputs then runs normally."""
    from comfy_ws import EventStream

    workflow, overrides, title = CANCEL_CASES[stage]
    prompt = load_workflow(workflow, overrides)
    target = next(i for i, n in prompt.items() if n.get("_meta", {}).get("title") == title)
    before = comfy.output_files()
    client_id = f"talkinghead-it-cancel-{stage}"

    def not_finished():
        comfy.alive()
        _, history = comfy.get(f"/history/{prompt_id}")
        if history.get(prompt_id):
            pytest.fail(f"prompt {prompt_id} finished before it was interrupted: {history[prompt_id]['status']}")

    with EventStream(HOST, comfy.port, client_id) as events:
        prompt_id = comfy.queue(prompt, client_id=client_id)
        # the long node is at work: it reported progress (its first batch is done)
        events.wait_for(lambda e: e["type"] == "progress" and e["data"].get("prompt_id") == prompt_id
                        and e["data"].get("node") == target and e["data"]["value"] >= 1,
                        timeout=180.0, while_waiting=not_finished)
        assert prompt_id in comfy.running(), comfy.get("/queue")
        if stage == "mux":
            assert _partial_files(comfy), "MuxVideo is writing but no hidden .partial file is in output/"
        t0 = time.monotonic()
        status, _ = comfy.post("/interrupt", {"prompt_id": prompt_id})
        assert status == 200
        interrupted = events.wait_for(lambda e: e["type"] in ("execution_interrupted", "execution_error",
                                                              "execution_success")
                                      and e["data"].get("prompt_id") == prompt_id, timeout=120.0,
                                      while_waiting=comfy.alive)
        stopped_after = time.monotonic() - t0
    assert interrupted["type"] == "execution_interrupted", interrupted
    assert interrupted["data"]["node_id"] == target, (interrupted, title)
    assert stopped_after < 60.0, f"the prompt took {stopped_after:.1f} s to stop after the interrupt"

    entry = comfy.wait(prompt_id, timeout=60.0)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False, entry["status"]
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds and "execution_success" not in kinds, kinds
    assert not entry["outputs"].get(target), entry["outputs"]
    deadline = time.monotonic() + 30
    while prompt_id in comfy.running() + comfy.pending() and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    assert prompt_id not in comfy.running() + comfy.pending(), comfy.get("/queue")

    assert comfy.output_files() == before, "the cancelled prompt left files in output/"
    assert not comfy.leftovers(), comfy.leftovers()

    # the server goes on: the same workflow on short inputs runs normally (cached models included)
    case = WORKFLOW_CASES[workflow]
    again = load_workflow(workflow, {**case.overrides,
                                     "video": {"filename_prefix": f"TalkingHead/after_cancel_{stage}"}})
    entry = comfy.run_prompt(again)
    assert entry["status"]["status_str"] == "success", _errors(entry)
    assert comfy.output_files() - before == check_outputs(comfy, entry, video_nodes(again), case)
    assert not comfy.leftovers(), comfy.leftovers()


# --------------------------------------------------------------------------- the web frontend, in a browser

UI_WORKFLOWS = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
#: fields of an /object_info entry that the frontend builds widgets and sockets from (tooltips and
#: descriptions aside, which only the pack's own nodes are required to match word for word)
FRONTEND_FIELDS = ("input_order", "output", "output_is_list", "output_name", "name", "display_name",
                   "python_module", "category", "output_node")


def _browser_ready():
    from test_frontend import _MISSING

    if _MISSING:
        pytest.skip(_MISSING)


@pytest.fixture(scope="module")
def frontend(comfy):
    """ComfyUI's own web page, served by the real server, in headless Chromium."""
    _browser_ready()
    from frontend import page
    from frontend.browser import Browser

    with Browser(1600, 1000) as browser:
        page.open_app(browser, comfy.url)
        yield browser


def _without_tooltips(spec):
    if isinstance(spec, dict):
        return {k: _without_tooltips(v) for k, v in spec.items() if k != "tooltip"}
    if isinstance(spec, list):
        return [_without_tooltips(v) for v in spec]
    return spec


def test_standin_object_info_matches_the_real_server(comfy):
    """The stand-in that CI's browser test runs against describes every node the workflows use as the
    real server does: the pack's nodes exactly, ComfyUI's own in every field the frontend reads."""
    _browser_ready()
    from frontend.standin import StandIn

    stand_in = StandIn(comfy.base, folder_name=ODD_FOLDER_NAME)  # same input/ and models/ folders
    try:
        ours = stand_in.object_info_dict()
    finally:
        import importlib
        importlib.import_module(f"{stand_in.pack.__name__}.core.host").HOST.reset()
    status, real = comfy.get("/object_info")
    assert status == 200
    used = {n["class_type"] for name in API_WORKFLOWS
            for n in json.loads((WORKFLOWS / f"{name}.api.json").read_text()).values()}
    for node_type in sorted(used | {k for k in real if k.startswith("TalkingHead_")}):
        assert node_type in ours, f"the stand-in has no {node_type}"
        if node_type.startswith("TalkingHead_"):
            assert ours[node_type] == real[node_type], node_type
        else:
            for key in FRONTEND_FIELDS:
                assert ours[node_type][key] == real[node_type][key], (node_type, key)
            assert _without_tooltips(ours[node_type]["input"]) == _without_tooltips(real[node_type]["input"]), node_type


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_ui_workflow_in_the_real_frontend(comfy, frontend, name):
    """workflows/NAME.json in ComfyUI's own page: opens cleanly, saves and exports to the shipped files,
    and the Run button (tiny checkpoints set in the widgets) ends in success with the expected mp4."""
    from frontend import page
    from test_frontend import check_opens, check_round_trip, live_layout_problems, run_from_the_ui

    ui = check_opens(frontend, name)
    page.settle(frontend, 1500)
    assert live_layout_problems(frontend) == [], name
    check_round_trip(frontend, name, ui)
    case = WORKFLOW_CASES[name]
    before = comfy.output_files()
    pid, queued = run_from_the_ui(frontend, case, PROMPT_TIMEOUT)
    entry = comfy.wait(pid)
    # what the Run button sent is what the server ran, plus the pack's on-prompt mark of which outputs of its
    # nodes are connected (part of their cache key, nodes/base.py mark_linked_outputs)
    marked = {key: node["inputs"].pop(LINKS_KEY) for key, node in entry["prompt"][2].items()
              if LINKS_KEY in node["inputs"]}
    assert entry["prompt"][2] == queued
    assert all(marked[key] == ",".join(sorted({str(v[1]) for n in queued.values() for v in n["inputs"].values()
                                                if isinstance(v, list) and v[0] == key}, key=int))
               for key in marked)
    assert comfy.output_files() - before == check_outputs(comfy, entry, video_nodes(queued), case)
    assert page.page_errors(frontend) == [], page.page_errors(frontend)


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_template_browser_in_the_real_frontend(comfy, frontend, name):
    """The real server lists each workflow as a template of the pack, and serves its JSON and thumbnail
    (the pack's own route where ComfyUI's static route cannot serve a folder name with spaces)."""
    from test_frontend import check_template

    check_template(frontend, ODD_FOLDER_NAME, name)


def test_template_browser_dialog_in_the_real_frontend(comfy, frontend):
    """As a user in the real page: Templates, the pack among the extensions, a click on each card
    opens the workflow."""
    from test_frontend import check_template_dialog

    check_template_dialog(frontend, comfy.url, ODD_FOLDER_NAME)


def test_photo_through_image_in_needs_no_portrait_file(comfy):
    """The README's photo command on the real server: LoadImage's photo feeds LoadPortrait's image_in, so
    LoadPortrait's own file name may name a file that is not in input/ (it is not used)."""
    case = WORKFLOW_CASES["liveportrait_procedural"]
    prompt = load_workflow("liveportrait_procedural", {**case.overrides, "portrait": {"detector": "center",
                                                                                       "image": "not-there.png"},
                                                        "video": {"filename_prefix": "TalkingHead/photo"}})
    before = comfy.output_files()
    entry = comfy.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", _errors(entry)
    assert comfy.output_files() - before == check_outputs(comfy, entry, video_nodes(prompt), case)


def test_pack_errors_show_a_short_type_and_our_message(comfy):
    """A user error (silent speech) reaches ComfyUI's error dialog as 'TalkingHead.InputError' with the
    pack's message, not as '<install path>.core.errors.InputError', and leaves no file behind."""
    import wave

    with wave.open(str(comfy.base / "input" / "silence.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"\0\0" * 16000)
    case = WORKFLOW_CASES["liveportrait_ditto"]
    prompt = load_workflow("liveportrait_ditto", {**case.overrides, "audio": {"audio": "silence.wav"}})
    before = comfy.output_files()
    entry = comfy.run_prompt(prompt)
    assert entry["status"]["status_str"] == "error"
    (error,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert error["exception_type"] == "TalkingHead.InputError", error
    assert "silent" in error["exception_message"] and error["node_type"] == "TalkingHead_AudioToEmbedding"
    assert comfy.output_files() == before and comfy.leftovers() == []


# --------------------------------------------------------------------------- live mode


def _get_page(comfy: Server, path: str):
    """``(status, content type, body)`` of a GET (HTTP errors returned, not raised)."""
    try:
        with urllib.request.urlopen(comfy.url + path, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_live_mode_routes_and_info(comfy):
    """Live mode inside ComfyUI: the page at ``/talkinghead/live``; ``/talkinghead/live/info`` lists the images of
    ComfyUI's input folder, read afresh (a portrait placed after the start is offered); the WebSocket route is
    there. No session is opened: the real weights are not in this models folder."""
    (comfy.base / "input" / "live_portrait.png").write_bytes((EXAMPLES / "portrait.png").read_bytes())
    status, ctype, body = _get_page(comfy, "/talkinghead/live")
    assert status == 200 and ctype.startswith("text/html"), (status, ctype, body[:300])
    assert b"<canvas" in body and body == (ROOT / "web" / "live.html").read_bytes()

    status, info = comfy.get("/talkinghead/live/info")
    assert status == 200 and isinstance(info, dict), (status, info)
    suffixes = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
    images = sorted(p.name for p in (comfy.base / "input").iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    assert "live_portrait.png" in images and "portrait.png" in images
    assert info["portraits"] == images, info
    assert (info["fps"], info["sample_rate"], info["protocol"]) == (25, 16000, 1), info
    assert info["token_required"] is False and info["sessions"] == 0, info
    # the WebSocket route answers (a plain GET is no WebSocket handshake: 400, not 404)
    status, body = comfy.get("/talkinghead/live/ws")
    assert status == 400, (status, body)
    comfy.alive()
