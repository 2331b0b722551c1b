"""End to end through the headless runner: the README's first command and its failure modes."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT
from procs import running_processes

WORKFLOW = ROOT / "workflows" / "portrait_still_video.json"
EXAMPLES = ROOT / "example_inputs"


def run_cli(tmp_path, *args, env=None):
    cmd = [sys.executable, str(ROOT / "run.py"), *map(str, args)]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def cli():
    """The pack's cli module and registry, loaded in-process like run.py does; the host
    settings a run changes are put back afterwards."""
    import importlib

    sys.path.insert(0, str(ROOT))
    import run

    name = run.load_pack().__name__
    yield importlib.import_module(f"{name}.headless.cli"), run.registry
    importlib.import_module(f"{name}.core.host").HOST.reset()


def outputs(tmp_path):
    out = tmp_path / "output"
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) if out.exists() else []


def test_readme_command_makes_the_video(tmp_path):
    """`python run.py workflows/portrait_still_video.json --input-dir example_inputs` (UI-format file)."""
    res = run_cli(tmp_path, WORKFLOW, "--input-dir", EXAMPLES)
    assert res.returncode == 0, res.stderr
    mp4 = Path(res.stdout.strip().splitlines()[-1])
    assert mp4 == tmp_path / "output" / "TalkingHead" / "still_00001_.mp4" and mp4.is_file()
    sys.path.insert(0, str(ROOT))
    from core import video
    from core.audio import load_audio

    info = video.probe(mp4)
    speech = load_audio(EXAMPLES / "speech.wav")
    frames = math.ceil(speech.duration * 25)
    assert info["video"]["codec"] == "h264" and info["video"]["pix_fmt"] == "yuv420p"
    assert (info["video"]["width"], info["video"]["height"]) == (256, 256)
    assert info["video"]["frames"] == frames and info["video"]["fps"] == 25
    assert info["audio"]["codec"] == "aac" and info["audio"]["sample_rate"] == 16000
    assert video.audio_duration(mp4) == pytest.approx(frames / 25, abs=2e-3)
    assert "[4/4] node 4: video" in res.stderr
    # the frames show the face crop: the first decoded frame matches LoadPortrait + ResizePad256
    first = next(video.read_frames(mp4)).astype("float32") / 255
    from core import face, image, resize

    crop, _ = face.detect_and_crop(image.load_image(EXAMPLES / "portrait.png"), face.CenterDetector(), crop_size=512)
    expected = resize.resize_pad(crop, 256)[0].numpy()
    assert abs(first - expected).mean() < 0.02  # h264 at crf 19


def test_api_format_and_overrides_with_outside_files(tmp_path):
    api = ROOT / "workflows" / "api" / "portrait_still_video.api.json"
    photo = tmp_path / "photos" / "me.png"
    photo.parent.mkdir()
    Image.new("RGB", (90, 60), (200, 120, 90)).save(photo)
    res = run_cli(tmp_path, api, "--input-dir", EXAMPLES, "--set", f"portrait.image={photo}",
                  "--set", "video.filename_prefix=mine/clip", "--set", "resize.size=128", "--set", "4.fps=10",
                  "--set", "video.extend_to_audio=false", "--quiet")
    assert res.returncode == 0, res.stderr
    assert outputs(tmp_path) == ["mine/clip_00001_.mp4"]
    sys.path.insert(0, str(ROOT))
    from core import video

    info = video.probe(tmp_path / "output" / "mine" / "clip_00001_.mp4")
    assert (info["video"]["width"], info["video"]["frames"], info["video"]["fps"]) == (128, 1, 10)


@pytest.mark.parametrize("override,message", [
    ("portrait.image=nope.png", "not found"),
    ("portrait.image=../../../etc/passwd", "outside"),
    ("audio.audio=../speech.wav", "outside"),
    ("video.filename_prefix=../../escape", "outside the output folder"),
    ("resize.size=0", "size"),
    ("portrait.detector=magic", "magic"),
])
def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path, override, message):
    res = run_cli(tmp_path, WORKFLOW, "--input-dir", EXAMPLES, "--set", override, "--quiet")
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    import re

    assert re.search(message, res.stderr), res.stderr
    assert outputs(tmp_path) == []


@pytest.mark.parametrize("name", ["/etc/passwd", "/etc/hostname", "C:\\Windows\\win.ini", "sub/../../x.png"])
def test_hostile_file_names_inside_a_shared_workflow(tmp_path, name):
    """A workflow from someone else may name any path: only the input folder is readable."""
    api = json.loads((ROOT / "workflows" / "api" / "portrait_still_video.api.json").read_text())
    api["1"]["inputs"]["image"] = name
    (tmp_path / "shared.json").write_text(json.dumps(api))
    res = run_cli(tmp_path, tmp_path / "shared.json", "--input-dir", EXAMPLES, "--quiet")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "outside" in res.stderr or "not found" in res.stderr, res.stderr
    assert outputs(tmp_path) == []


def test_corrupt_image_and_empty_audio(tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(EXAMPLES, inputs)
    (inputs / "portrait.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    res = run_cli(tmp_path, WORKFLOW, "--input-dir", inputs, "--quiet")
    assert res.returncode == 1 and "portrait.png" in res.stderr and "node 1" in res.stderr
    shutil.copy(EXAMPLES / "portrait.png", inputs / "portrait.png")
    sys.path.insert(0, str(ROOT))
    from core.audio import Audio
    from core.video import _write_wav

    _write_wav(inputs / "speech.wav", Audio(torch.zeros(1, 0), 16000))
    res = run_cli(tmp_path, WORKFLOW, "--input-dir", inputs, "--quiet")
    assert res.returncode == 1 and "speech.wav" in res.stderr and "node 2" in res.stderr
    assert outputs(tmp_path) == []


def test_missing_weights_offline(tmp_path):
    res = run_cli(tmp_path, WORKFLOW, "--input-dir", EXAMPLES, "--offline", "--quiet",
                  "--set", "portrait.detector=face-alignment sfd", "--models-dir", tmp_path / "models")
    assert res.returncode == 1
    assert "s3fd-619a316812.pth" in res.stderr and str(tmp_path / "models" / "face_detection") in res.stderr
    assert "Offline" in res.stderr and outputs(tmp_path) == []


def test_cancel_leaves_no_partial_video(tmp_path, monkeypatch, cli):
    cli_mod, registry = cli
    monkeypatch.chdir(tmp_path)

    class Interrupting:
        def __init__(self, label=""):
            self.label = label

        def __call__(self, done, total, preview=None):
            if "MuxVideo" in self.label and done == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(cli_mod, "TerminalBar", Interrupting)
    code = cli_mod.main([str(WORKFLOW), "--input-dir", str(EXAMPLES)], registry)
    assert code == 130
    assert outputs(tmp_path) == [] and not list((tmp_path / "output").rglob("*.partial*"))


def test_save_image_writes_whole_pngs_or_nothing(cli, tmp_path, monkeypatch):
    """The SaveImage / PreviewImage stand-ins write each PNG under a temporary name and rename it once complete
    (core.files.atomic_write): a write that fails leaves neither a PNG nor a temporary file behind."""
    import importlib

    module, _ = cli
    pack = module.__name__.rsplit(".", 2)[0]
    builtins = importlib.import_module(pack + ".headless.builtins")
    host = importlib.import_module(pack + ".core.host").HOST
    monkeypatch.setattr(host, "output_dir", lambda: tmp_path / "output")
    monkeypatch.setattr(host, "temp_dir", lambda: tmp_path / "temp")
    frames = torch.rand(2, 8, 12, 3)
    saved = builtins.SaveImage().save_images(frames, "shot", prompt={"1": {"class_type": "X", "inputs": {}}},
                                             extra_pnginfo={"workflow": {"nodes": []}})["ui"]["images"]
    assert [(i["filename"], i["type"]) for i in saved] == [("shot_00001_.png", "output"), ("shot_00002_.png", "output")]
    with Image.open(tmp_path / "output" / "shot_00002_.png") as png:
        assert png.size == (12, 8) and json.loads(png.text["prompt"]) == {"1": {"class_type": "X", "inputs": {}}}
        assert json.loads(png.text["workflow"]) == {"nodes": []}
    (preview,) = builtins.PreviewImage().save_images(frames[:1])["ui"]["images"]
    assert preview["type"] == "temp" and (tmp_path / "temp" / preview["filename"]).is_file()

    real_save = Image.Image.save

    def fails_half_way(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", fails_half_way)
    with pytest.raises(OSError, match="No space left"):
        builtins.SaveImage().save_images(frames[:1], "shot")
    assert sorted(p.name for p in (tmp_path / "output").iterdir()) == ["shot_00001_.png", "shot_00002_.png"]


def test_command_line_installs_its_host_hooks(cli, tmp_path):
    """run's folders and progress bars go into the host through Host.configure (as the ComfyUI bridge's do),
    which refuses a name that is no hook instead of silently keeping the default."""
    import importlib

    module, _ = cli
    host = importlib.import_module(module.__name__.rsplit(".", 2)[0] + ".core.host").HOST
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.png").write_bytes(b"")
    args = module._parser().parse_args(["run", "w.json", "--input-dir", str(tmp_path / "in"), "--output-dir",
                                        str(tmp_path / "out"), "--models-dir", str(tmp_path / "models"),
                                        "--set", f"portrait.image={tmp_path / 'photos' / 'me.png'}"])
    module._configure(args)
    assert host.input_dirs() == [tmp_path / "in", tmp_path / "photos"]
    assert host.output_dir() == tmp_path / "out" and host.models_dir == tmp_path / "models"
    assert host.progress("MuxVideo") is not None
    before = host.temp_dir
    with pytest.raises(TypeError, match="unknown host hook.*temp_folder"):
        host.configure(temp_dir=lambda: tmp_path, temp_folder=lambda: tmp_path)
    assert host.temp_dir is before  # nothing was set


def test_other_commands(tmp_path):
    res = run_cli(tmp_path, "nodes")
    assert res.returncode == 0 and "TalkingHead_MuxVideo" in res.stdout and "LoadAudio" in res.stdout
    res = run_cli(tmp_path, "weights", "list")
    assert res.returncode == 0 and "fom/vox-256" in res.stdout and "missing" in res.stdout
    res = run_cli(tmp_path, "convert", WORKFLOW, tmp_path / "api.json")
    assert res.returncode == 0
    # the shipped API file is ComfyUI's frontend's export: it also holds the audio player's value
    # ("audioUI"), which the server ignores and our converter leaves out
    shipped = json.loads((ROOT / "workflows" / "api" / "portrait_still_video.api.json").read_text())
    assert shipped["2"]["inputs"].pop("audioUI") == ""
    assert json.loads((tmp_path / "api.json").read_text()) == shipped
    res = run_cli(tmp_path, "weights", "convert", ROOT / "tests" / "fixtures" / "fom" / "tiny-cpk.pth.tar",
                  tmp_path / "fom.safetensors")
    assert res.returncode == 0 and (tmp_path / "fom.safetensors").stat().st_size > 100_000
    res = run_cli(tmp_path, "missing.json")
    assert res.returncode == 1 and "missing.json" in res.stderr


def test_shipped_workflows_are_consistent(cli, monkeypatch):
    _, registry = cli
    import importlib

    pack = cli[0].__name__.rsplit(".", 2)[0]
    runner = importlib.import_module(pack + ".headless")
    monkeypatch.setattr(importlib.import_module(pack + ".core.host").HOST, "input_dirs", lambda: [EXAMPLES])
    reg = registry()
    api_files = sorted((ROOT / "workflows" / "api").glob("*.api.json"))
    assert api_files
    for api_path in api_files:
        ui_path = ROOT / "workflows" / api_path.name.replace(".api.json", ".json")
        assert ui_path.is_file(), f"{ui_path.name} (UI format) is missing"
        api = json.loads(api_path.read_text())
        assert runner.ui_to_api(json.loads(ui_path.read_text()), reg) == runner.declared_inputs(api, reg), ui_path.name
        runner.validate(api, reg)


SHIPPED = sorted(p.name[:-len(".api.json")] for p in (ROOT / "workflows" / "api").glob("*.api.json"))


def _ui_box(node):
    """The area a UI node takes on the canvas: the editor draws its title bar above ``pos``."""
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - 30, x + w, y + h


def _rect(bounding):
    x, y, w, h = bounding
    return x, y, x + w, y + h


def _contains(outer, inner):
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workflow_layout(name):
    """Each UI workflow has its groups and notes (from NAME.meta.json), groups frame exactly
    their members, nothing overlaps, and the file is what ComfyUI's loader expects."""
    ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    meta = json.loads((ROOT / "workflows" / "api" / f"{name}.meta.json").read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert ui["groups"] and notes, f"{name}: no group or no Note"
    for note in notes:
        assert note["inputs"] == [] and note["outputs"] == []
        assert isinstance(note["widgets_values"][0], str) and note["widgets_values"][0].strip()
    # every group frames its members (title bars included); no other node's centre is inside
    members = {g["title"]: [int(i) for i in g["nodes"]] for g in meta["groups"]}
    for note in meta.get("notes", []):
        if note.get("position", "").startswith("group:"):
            members[note["position"][len("group:"):]].append(next(
                n["id"] for n in notes if n["widgets_values"][0] == note["text"]))
    assert [g["title"] for g in ui["groups"]] == list(members)
    for group in ui["groups"]:
        frame = _rect(group["bounding"])
        for node_id, node in nodes.items():
            box = _ui_box(node)
            if node_id in members[group["title"]]:
                assert _contains(frame, box), f"{name}: node {node_id} sticks out of group '{group['title']}'"
            else:
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                assert not _contains(frame, (cx, cy, cx, cy)), \
                    f"{name}: node {node_id} would be taken into group '{group['title']}'"
    boxes = {i: _ui_box(n) for i, n in nodes.items()}
    ids = sorted(boxes)
    overlaps = [(a, b) for k, a in enumerate(ids) for b in ids[k + 1:] if _overlap(boxes[a], boxes[b])]
    assert not overlaps, f"{name}: overlapping nodes {overlaps}"
    frames = [_rect(g["bounding"]) for g in ui["groups"]]
    assert not any(_overlap(a, b) for k, a in enumerate(frames) for b in frames[k + 1:]), f"{name}: groups overlap"
    # the parts of ComfyUI's workflow schema (version 0.4) the converter writes
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(nodes)
    assert ui["last_link_id"] == max((link[0] for link in ui["links"]), default=0)
    for group in ui["groups"]:
        assert isinstance(group["title"], str) and len(group["bounding"]) == 4 and group["color"].startswith("#")
        # the editor draws the title unclipped (about 0.55 em a character in its font)
        assert len(group["title"]) * group["font_size"] * 0.55 <= group["bounding"][2] - 10, \
            f"{name}: group title '{group['title']}' is wider than its group"
    for node in ui["nodes"]:
        assert isinstance(node["id"], int) and len(node["pos"]) == 2 and len(node["size"]) == 2
        assert isinstance(node["order"], int) and node["mode"] == 0 and isinstance(node["properties"], dict)
    for link_id, src, src_slot, dst, dst_slot, link_type in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == link_type


def test_convert_round_trip(cli, tmp_path):
    """`run.py convert` turns each shipped API file into a UI file (laid out with NAME.meta.json) and back
    into the same prompt. The shipped UI files themselves are what ComfyUI's frontend saves
    (tools/make_workflows.py); tests/test_frontend.py checks them in that frontend."""
    module, registry = cli
    import importlib

    runner = importlib.import_module(module.__name__.rsplit(".", 1)[0])
    reg = registry()
    for name in SHIPPED:
        api = ROOT / "workflows" / "api" / f"{name}.api.json"
        assert (ROOT / "workflows" / "api" / f"{name}.meta.json").is_file(), f"{name}.meta.json is missing"
        ui, back = tmp_path / f"{name}.json", tmp_path / f"{name}.back.json"
        assert module.main(["convert", str(api), str(ui)], registry) == 0
        assert json.loads(ui.read_text())["groups"], name
        assert module.main(["convert", str(ui), str(back)], registry) == 0
        assert json.loads(back.read_text()) == runner.declared_inputs(json.loads(api.read_text()), reg), name
    # without a sidecar the graph is laid out bare; --meta picks one
    bare = tmp_path / "bare.api.json"
    bare.write_text((ROOT / "workflows" / "api" / "portrait_still_video.api.json").read_text())
    assert module.main(["convert", str(bare), str(tmp_path / "bare.json")], registry) == 0
    assert json.loads((tmp_path / "bare.json").read_text())["groups"] == []
    meta = ROOT / "workflows" / "api" / "portrait_still_video.meta.json"
    assert module.main(["convert", str(bare), str(tmp_path / "bare.json"), "--meta", str(meta)], registry) == 0
    assert len(json.loads((tmp_path / "bare.json").read_text())["groups"]) == len(json.loads(meta.read_text())["groups"])


def test_convert_to_ui_without_tools_says_why(cli, tmp_path, monkeypatch, capsys):
    """The registry package has no tools/ (.comfyignore): API -> UI says so; UI -> API still works."""
    module, registry = cli
    tools = module.__name__.rsplit(".", 2)[0] + ".tools"
    monkeypatch.setitem(sys.modules, tools, None)  # an import of it fails as if the folder were not there
    monkeypatch.setitem(sys.modules, tools + ".layout", None)
    api = ROOT / "workflows" / "api" / "portrait_still_video.api.json"
    assert module.main(["convert", str(api), str(tmp_path / "ui.json")], registry) == 1
    assert "needs the layout engine in the pack's tools/ folder" in capsys.readouterr().err
    assert not (tmp_path / "ui.json").exists()
    assert module.main(["convert", str(WORKFLOW), str(tmp_path / "back.api.json")], registry) == 0
    assert json.loads((tmp_path / "back.api.json").read_text())


def test_workflow_pictures():
    """Every shipped workflow has its README picture and its template thumbnail: screenshots of
    ComfyUI's frontend (tools/make_workflows.py writes them)."""
    for name in SHIPPED:
        with Image.open(ROOT / "docs" / "images" / f"{name}.png") as png:
            assert png.format == "PNG" and png.width >= 800 and png.height >= 500, name
        with Image.open(ROOT / "workflows" / f"{name}.jpg") as jpg:
            assert jpg.format == "JPEG" and jpg.size == (640, 480), name
    extra = sorted(p.stem for p in (ROOT / "workflows").glob("*.jpg") if p.stem not in SHIPPED)
    assert not extra, f"thumbnails without a workflow: {extra}"




def test_portrait_file_is_not_required_when_an_image_is_connected(cli, monkeypatch, tmp_path):
    """The README's photo command: LoadImage feeds LoadPortrait's image_in, so LoadPortrait's own file
    name (portrait.png, absent from the user's input folder) must not fail validation; unconnected, it does."""
    import importlib

    module, registry = cli
    pack = module.__name__.rsplit(".", 2)[0]
    runner = importlib.import_module(pack + ".headless")
    shutil.copy(EXAMPLES / "speech.wav", tmp_path / "speech.wav")
    shutil.copy(EXAMPLES / "portrait.png", tmp_path / "me.png")
    monkeypatch.setattr(importlib.import_module(pack + ".core.host").HOST, "input_dirs", lambda: [tmp_path])
    reg = registry()
    prompt = json.loads((ROOT / "workflows" / "api" / "liveportrait_procedural.api.json").read_text())
    prompt["6"]["inputs"]["image"] = "me.png"          # the photo, through LoadImage -> image_in
    assert prompt["1"]["inputs"]["image"] == "portrait.png" and prompt["1"]["inputs"].get("image_in")
    runner.validate(prompt, reg)
    del prompt["1"]["inputs"]["image_in"]               # no IMAGE connected: the file must exist
    with pytest.raises(runner.GraphError, match="portrait.png"):
        runner.validate(prompt, reg)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is a POSIX signal")
def test_sigterm_stops_the_run_and_leaves_nothing_behind(tmp_path):
    """`kill`, `timeout` or a container stopping sends SIGTERM: the run unwinds like a cancel (exit code 143), with
    no mp4, no hidden .partial file and no ffmpeg left running, instead of Python's default of dying on the spot."""
    import signal
    import time
    import wave

    import numpy as np

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(EXAMPLES / "portrait.png", inputs / "portrait.png")
    with wave.open(str(EXAMPLES / "speech.wav"), "rb") as src:
        rate, width, channels = src.getframerate(), src.getsampwidth(), src.getnchannels()
        speech = src.readframes(src.getnframes())
    with wave.open(str(inputs / "long.wav"), "wb") as dst:  # ~60 s: a run that is still encoding when killed
        dst.setframerate(rate), dst.setsampwidth(width), dst.setnchannels(channels)
        dst.writeframes(speech * max(1, int(np.ceil(60 * rate * width * channels / len(speech)))))
    cmd = [sys.executable, str(ROOT / "run.py"), str(WORKFLOW), "--input-dir", str(inputs), "--quiet",
           "--set", "audio.audio=long.wav", "--set", "resize.size=1024", "--set", "video.preset=veryslow"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "output").rglob("*.partial*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never started writing its video"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "stopped (SIGTERM)" in err, err
    assert outputs(tmp_path) == [] and not list((tmp_path / "output").rglob("*.partial*"))
    assert [p for p in running_processes() if str(tmp_path) in p.cmdline] == [], \
        "an ffmpeg started by the run is still running"
