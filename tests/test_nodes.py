"""Node contract: the pack as ComfyUI loads it, headless and inside a (fake) ComfyUI."""
import ast
import gc
import weakref
from pathlib import Path

import pytest
import torch

from conftest import ROOT, sub

COMFY_MODULES = {"comfy", "folder_paths", "nodes", "server", "execution", "comfy_extras", "comfy_api", "app"}
OWN_PACKAGES = {"core", "nodes", "weights", "workflows", "tests"}


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield 0, a.name
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or ""


def test_core_never_imports_comfyui_and_pack_uses_relative_imports():
    for path in (ROOT / "core").rglob("*.py"):
        for level, name in _imports(path):
            if level == 0:
                assert name.split(".")[0] not in COMFY_MODULES, f"{path} imports {name}"
    for path in list((ROOT / "core").rglob("*.py")) + list((ROOT / "nodes").rglob("*.py")) + [ROOT / "__init__.py"]:
        for level, name in _imports(path):
            if level == 0:
                assert name.split(".")[0] not in OWN_PACKAGES, f"{path}: absolute import of the pack's own {name}"


def test_pack_loads_from_odd_folder_name_with_complete_specs(pack):
    mappings, names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert set(mappings) == {"TalkingHead_LoadPortrait", "TalkingHead_ResizePad256", "TalkingHead_MuxVideo",
                             "TalkingHead_LoadLivePortrait",
                             "TalkingHead_UnloadModels", "TalkingHead_FOMAnimate", "TalkingHead_LivePortraitRender",
                             "TalkingHead_LivePortraitRenderVideo",
                             "TalkingHead_LivePortraitExtractMotion", "TalkingHead_SaveMotion",
                             "TalkingHead_LoadMotion", "TalkingHead_ProceduralMotion",
                             "TalkingHead_AudioToEmbedding", "TalkingHead_MotionDiT",
                             "TalkingHead_JoinSegments", "TalkingHead_SDABase", "TalkingHead_VideoFrames"}
    assert names["TalkingHead_ResizePad256"] == "ResizePad256" and names["TalkingHead_MuxVideo"] == "MuxVideo"
    assert names["TalkingHead_LoadPortrait"] == "LoadPortrait"
    for node_id, cls in mappings.items():
        assert node_id.startswith("TalkingHead_") and set(names) == set(mappings)
        assert cls.CATEGORY.startswith("TalkingHead") and cls.DESCRIPTION
        assert callable(getattr(cls(), cls.FUNCTION))
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, decl in spec.get(section, {}).items():
                assert len(decl) == 2 and decl[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    assert sub(pack, "core.host").HOST.name == "standalone"


def test_resize_node_matches_core(pack):
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_ResizePad256"]()
    img = torch.rand(3, 40, 30, 3)
    out, stream = node.run(img, 64, "pad", "constant", 0.0, "bilinear")
    core_resize = sub(pack, "core.resize")
    assert out.device.type == "cpu" and torch.equal(out, core_resize.resize_pad(img, 64))
    # the frame_stream output: the same frames, resized batch by batch on each pull
    assert (len(stream), stream.height, stream.width) == (3, 64, 64)
    assert torch.equal(torch.cat(list(stream)), out) and torch.equal(stream.materialize(), out)


def test_resize_node_takes_and_gives_a_frame_stream(pack):
    """ResizePad256's frames input: resized batch by batch as its frame_stream output is pulled (the upstream stream
    pulled again each time); the images output is made only when connected; exactly one input."""
    frames, errors = sub(pack, "core.frames"), sub(pack, "core.errors")
    core_resize = sub(pack, "core.resize")
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_ResizePad256"]()
    img = torch.rand(7, 40, 30, 3)
    pulls = []

    def source():
        pulls.append(1)
        yield from (img[i:i + 4] for i in range(0, 7, 4))

    upstream = frames.FrameStream(source, 7, 40, 30, 25.0, label="upstream")
    expected = core_resize.resize_pad(img, 64, mode="crop")
    out, stream = node.run(None, 64, "crop", "constant", 0.0, "bilinear", frames=upstream)
    assert torch.equal(out, expected) and pulls == [1]
    assert (len(stream), stream.height, stream.width, stream.fps) == (7, 64, 64, 25.0)
    assert [b.shape[0] for b in stream] == [4, 3] and pulls == [1, 1]
    assert torch.equal(stream.materialize(), expected) and pulls == [1, 1, 1]
    graph = {"2": {"class_type": "TalkingHead_ResizePad256", "inputs": {}},
             "3": {"class_type": "TalkingHead_FOMAnimate", "inputs": {"driving_frames": ["2", 1]}}}
    out, stream = node.run(None, 64, "crop", "constant", 0.0, "bilinear", frames=upstream, prompt=graph,
                           unique_id="2")
    assert out is None and pulls == [1, 1, 1]  # nothing is resized until the stream is pulled
    out, stream = node.run(img, 64, "crop", "constant", 0.0, "bilinear", prompt=graph, unique_id="2")
    assert out is None and torch.equal(stream.materialize(), expected)
    with pytest.raises(errors.InputError, match="connect either frames .* or images"):
        node.run(None, 64, "pad", "constant", 0.0, "bilinear")
    with pytest.raises(errors.InputError, match="not both"):
        node.run(img, 64, "pad", "constant", 0.0, "bilinear", frames=upstream)


# ----------------------------------------------------------------------------- inside ComfyUI
def test_bridge_registers_folders_and_host(comfy_pack):
    fp = comfy_pack.folder_paths
    host = sub(comfy_pack, "core.host").HOST
    assert host.name == "comfyui"
    for key in ("face_detection", "fom", "liveportrait", "sda", "ditto", "joyvasa"):
        assert fp.get_folder_paths(key) == [str(Path(fp.models_dir) / key)]
    # a file dropped into ComfyUI's models folder is what the weights manager finds
    target = Path(fp.models_dir) / "fom" / "vox-cpk.pth.tar"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert sub(comfy_pack, "core.weights").resolve("fom/vox-256", download=False) == target
    # an extra_model_paths.yaml entry (another folder for the same key) is searched too
    other = Path(fp.base_path) / "elsewhere" / "sda"
    other.mkdir(parents=True)
    (other / "grid.dat").write_bytes(b"x")
    fp.add_model_folder_path("sda", str(other))
    assert sub(comfy_pack, "core.weights").resolve("sda/grid", download=False) == other / "grid.dat"


def test_missing_weights_offline_names_comfy_models_folder(comfy_pack, monkeypatch):
    monkeypatch.setenv("TALKINGHEAD_OFFLINE", "1")
    errors = sub(comfy_pack, "core.errors")
    node = comfy_pack.NODE_CLASS_MAPPINGS["TalkingHead_LoadPortrait"]()
    with pytest.raises(errors.WeightsMissingError) as err:
        node.run("", "face-alignment sfd", 256, 1.8, -0.1, image_in=torch.rand(1, 64, 64, 3))
    msg = str(err.value)
    assert "s3fd-619a316812.pth" in msg
    assert str(Path(comfy_pack.folder_paths.models_dir) / "face_detection") in msg
    assert "adrianbulat.com" in msg


def test_mux_node_in_comfy_naming_ui_metadata_and_progress(comfy_pack):
    fp = comfy_pack.folder_paths
    utils = __import__("comfy.utils", fromlist=["x"])
    utils.updates.clear()
    node = comfy_pack.NODE_CLASS_MAPPINGS["TalkingHead_MuxVideo"]()
    audio = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    res = node.run(torch.rand(40, 32, 32, 3), 25.0, "talks/t", audio=audio, prompt={"1": {"class_type": "X"}},
                   extra_pnginfo={"workflow": {"nodes": []}})
    ui = res["ui"]["images"][0]
    assert ui == {"filename": "t_00001_.mp4", "subfolder": "talks", "type": "output"}
    path = Path(fp.get_output_directory()) / "talks" / "t_00001_.mp4"
    assert res["result"] == (str(path),) and path.is_file()
    assert utils.updates and utils.updates[-1][:2] == (2, 2)  # 40 frames in chunks of 32
    res2 = node.run(torch.rand(2, 32, 32, 3), 25.0, "talks/t", save_output=False)
    assert res2["ui"]["images"][0]["type"] == "temp"
    assert (Path(fp.get_temp_directory()) / "talks" / "t_00001_.mp4").is_file()
    video = sub(comfy_pack, "core.video")
    import subprocess

    meta = subprocess.run([video.ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                          capture_output=True, text=True).stdout
    assert 'prompt={"1": {"class_type": "X"}}' in meta and "workflow=" in meta


def test_mux_node_writes_a_frame_stream_batch_by_batch(pack, tmp_path):
    """MuxVideo's frames input: the stream is pulled in the writer's chunks (never whole), the last frame is held
    to the audio's end, and exactly one of frames / images must be connected."""
    frames, errors = sub(pack, "core.frames"), sub(pack, "core.errors")
    made = []

    def source():
        for i in range(0, 40, 7):
            made.append(min(7, 40 - i))
            yield torch.full((made[-1], 32, 32, 3), i / 40)

    stream = frames.FrameStream(source, 40, 32, 32, 25.0, label="test stream")
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_MuxVideo"]()
    audio = {"waveform": 0.1 * torch.randn(1, 1, 32000), "sample_rate": 16000}  # 2 s: 50 frames at 25 fps
    res = node.run(fps=25.0, filename_prefix="s/s", frames=stream, audio=audio, extend_to_audio=True,
                   preset="ultrafast")
    info = sub(pack, "core.video").probe(res["result"][0])
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (32, 32, 50)
    assert sum(made) == 40 and max(made) == 7  # produced in the producer's batches, pulled once
    with pytest.raises(errors.InputError, match="connect either frames .* or images"):
        node.run(fps=25.0, filename_prefix="s/none")
    with pytest.raises(errors.InputError, match="not both"):
        node.run(torch.rand(2, 32, 32, 3), 25.0, "s/both", frames=stream)
    assert sorted(p.name for p in (tmp_path / "output" / "s").iterdir()) == ["s_00001_.mp4"]


def test_outputs_made_only_when_linked(pack):
    """nodes/base: linked_outputs reads which of a node's outputs the graph takes (None when it cannot tell),
    image_output materialises a stream only for a linked slot, and check_outputs skips outputs left as None."""
    base, frames = sub(pack, "nodes.base"), sub(pack, "core.frames")
    prompt = {"3": {"class_type": "A", "inputs": {"x": 1.0, "keep": True}},
              "4": {"class_type": "B", "inputs": {"a": ["3", 2], "b": ["3", 0], "c": ["5", 1], "d": "3"}},
              "5": {"class_type": "C", "inputs": {"again": ["3", 2], "flag": [3, True]}}}
    assert base.linked_outputs(prompt, "3") == {0, 2} and base.linked_outputs(prompt, 3) == {0, 2}
    assert base.linked_outputs(prompt, "5") == {1} and base.linked_outputs(prompt, "4") == set()
    assert base.linked_outputs(None, "3") is None and base.linked_outputs(prompt, None) is None
    assert base.linked_outputs(prompt, "99") is None  # not in this graph (an expanded node): make everything
    pulls = []
    images = torch.rand(3, 4, 4, 3)
    stream = frames.FrameStream(lambda: pulls.append(1) or [images], 3, 4, 4)
    assert base.image_output(stream, 1, {0, 2}, "x", "") is None and pulls == []
    assert torch.equal(base.image_output(stream, 0, {0, 2}, "x", ""), images) and pulls == [1]
    assert torch.equal(base.image_output(stream, 1, None, "x", ""), images) and pulls == [1, 1]
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_LivePortraitRender"]
    base.check_outputs(node, (None, None, stream))  # nothing to check, nothing pulled
    assert pulls == [1, 1]
    checks = sub(pack, "core.checks")
    with pytest.raises(checks.NonFiniteOutputError, match="LivePortraitRender's face_frames output has 1 NaN"):
        base.check_outputs(node, (None, torch.tensor([[[[float("nan"), 0.0, 0.0]]]]), stream))


def test_linked_outputs_go_into_the_cache_key(pack):
    """ComfyUI caches a node by its inputs: the on-prompt hook writes which IMAGE outputs of LivePortraitRender
    are connected into its inputs, so connecting one more output changes its cache key (a cached None is never
    handed on); nodes that do not make outputs on demand, and other packs' nodes, are left as they are."""
    base = sub(pack, "nodes.base")
    routes = sub(pack, "nodes.web_routes")
    prompt = {"5": {"class_type": "TalkingHead_LivePortraitRender", "inputs": {"motion": ["4", 0]}},
              "6": {"class_type": "TalkingHead_MuxVideo", "inputs": {"frames": ["5", 2], "fps": 25.0}},
              "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
              "4": {"class_type": "TalkingHead_LoadMotion", "inputs": {"motion_file": "m.safetensors"}}}
    body = {"prompt": prompt, "client_id": "x"}
    assert routes.on_prompt(body) is body
    assert prompt["5"]["inputs"][base.LINKS_KEY] == "1,2"
    assert base.LINKS_KEY not in prompt["6"]["inputs"] and base.LINKS_KEY not in prompt["4"]["inputs"]
    assert base.LINKS_KEY not in prompt["7"]["inputs"]
    del prompt["7"]
    routes.on_prompt(body)
    assert prompt["5"]["inputs"][base.LINKS_KEY] == "2"
    assert routes.on_prompt({"no": "prompt"}) == {"no": "prompt"}


def test_cancel_mid_mux_leaves_nothing(comfy_pack):
    mm = comfy_pack.comfy
    utils = __import__("comfy.utils", fromlist=["x"])
    calls = []

    def hook(value, total, preview, node_id=None):
        calls.append(value)
        if value == 2:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    utils.set_progress_bar_global_hook(hook)
    try:
        node = comfy_pack.NODE_CLASS_MAPPINGS["TalkingHead_MuxVideo"]()
        with pytest.raises(mm.InterruptProcessingException):
            node.run(torch.rand(200, 32, 32, 3), 25.0, "cancelled")
    finally:
        utils.set_progress_bar_global_hook(None)
    out = Path(comfy_pack.folder_paths.get_output_directory())
    assert calls == [1, 2]
    assert [p.name for p in out.rglob("*") if p.is_file()] == []


def test_models_take_part_in_comfy_memory_management(comfy_pack):
    mm = comfy_pack.comfy
    cache = sub(comfy_pack, "core.cache").CACHE
    model = cache.get("fom", "k", lambda: torch.nn.Linear(8, 8), torch.device("cpu"))
    assert [lm.model.model for lm in mm.current_loaded_models] == [model]
    mm.unload_all_models()  # ComfyUI's "free memory" evicts ours like any other model
    assert mm.current_loaded_models == []
    assert cache.get("fom", "k", lambda: None, torch.device("cpu")) is model  # back on the next use
    assert len(mm.current_loaded_models) == 1
    ref = weakref.ref(model)
    del model
    calls = mm.soft_empty_cache_calls
    node = comfy_pack.NODE_CLASS_MAPPINGS["TalkingHead_UnloadModels"]()
    marker = object()
    res = node.run("fom", passthrough=marker)
    assert res["result"] == (marker,) and "unloaded 1 model" in res["ui"]["text"][0]
    gc.collect()
    assert ref() is None and mm.current_loaded_models == [] and mm.soft_empty_cache_calls > calls
    assert cache.entries() == []


def test_all_parts_of_a_model_load_in_one_request(comfy_pack, monkeypatch):
    """On a full GPU, loading one part of a model must not evict a part loaded just before it: the
    parts go to ComfyUI in one load_models_gpu request, which evicts only models outside it."""
    mm = comfy_pack.comfy
    cache = sub(comfy_pack, "core.cache").CACHE
    cpu = torch.device("cpu")
    parts = {name: torch.nn.Linear(32, 32) for name in "abcd"}
    part_bytes = sum(p.numel() * p.element_size() for p in parts["a"].parameters())
    monkeypatch.setattr(mm, "device_memory", 4 * part_bytes)  # room for the model and nothing else
    cache.get("liveportrait", "k", lambda: parts, cpu)
    other = cache.get("sda", "o", lambda: torch.nn.Linear(32, 32), cpu)  # another model evicts one part
    assert len(mm.current_loaded_models) == 4
    cache.get("liveportrait", "k", lambda: None, cpu)  # the next use of the four parts
    resident = [lm.model.model for lm in mm.current_loaded_models]
    assert all(any(p is r for r in resident) for p in parts.values())
    assert not any(other is r for r in resident)  # the other model made the room
    patchers = cache.entries("liveportrait")[0].handle
    assert all(h.loaded for h in patchers)


def test_unload_node_spec(pack):
    cls = pack.NODE_CLASS_MAPPINGS["TalkingHead_UnloadModels"]
    fams = cls.INPUT_TYPES()["required"]["family"][0]
    assert fams[0] == "all" and {"face", "fom", "sda", "liveportrait", "motion"} <= set(fams)
    assert cls.RETURN_TYPES == ("*",) and cls.OUTPUT_NODE and cls.IS_CHANGED() != cls.IS_CHANGED()


def test_face_detector_nets_are_managed_by_comfy(comfy_pack):
    """A weights-backed detector's network is a ModelPatcher in ComfyUI's list, and unloads."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from safetensors.torch import save_file

    folder = Path(comfy_pack.folder_paths.models_dir) / "face_detection"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_file(s3fd().state_dict(), folder / "s3fd.safetensors")
    portrait = sub(comfy_pack, "core.face")
    det = portrait.get_detector("face-alignment sfd", "cpu", download=False)
    mm = comfy_pack.comfy
    assert [lm.model.model for lm in mm.current_loaded_models] == [det.net]
    assert portrait.get_detector("face-alignment sfd", "cpu", download=False) is det  # cached
    sub(comfy_pack, "core.cache").CACHE.unload("face")
    assert mm.current_loaded_models == []


def test_unload_node_links_between_stages_under_comfy_rules(pack):
    """LoadPortrait -> ResizePad256 -> UnloadModels -> MuxVideo: every link passes the same type
    rule as ComfyUI's server (UnloadModels' wildcard is the __ne__ kind, which every ComfyUI accepts)."""
    import importlib

    runner = importlib.import_module(f"{pack.__name__}.headless")
    prompt = {
        "1": {"class_type": "TalkingHead_LoadPortrait",
              "inputs": {"image": "", "detector": "center", "crop_size": 64, "scale": 1.8, "vy": -0.1}},
        "2": {"class_type": "TalkingHead_ResizePad256",
              "inputs": {"images": ["1", 1], "size": 16, "mode": "pad", "pad_mode": "constant", "pad_value": 0.0,
                         "interpolation": "bilinear"}},
        "3": {"class_type": "TalkingHead_UnloadModels", "inputs": {"family": "all", "passthrough": ["2", 0]}},
        "4": {"class_type": "TalkingHead_MuxVideo", "inputs": {"images": ["3", 0], "fps": 25.0, "filename_prefix": "x"}},
    }
    runner.validate(prompt, pack.NODE_CLASS_MAPPINGS)
