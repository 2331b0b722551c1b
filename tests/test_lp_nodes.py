"""LivePortrait nodes: the video-driven workflow headless on the tiny weights, the nodes under
the fake ComfyUI, and the missing-weights message."""
import shutil
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, ROOT, lp_set, mp4_facts, run_headless, sub

WEIGHTS = FIXTURES / "liveportrait" / "weights"


def models_dir(root: Path) -> Path:
    folder = root / "liveportrait"
    folder.mkdir(parents=True, exist_ok=True)
    for f in WEIGHTS.iterdir():
        shutil.copy(f, folder / f.name)
    return root


def test_video_driven_workflow_headless(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(ROOT / "example_inputs" / "portrait.png", inputs / "portrait.png")
    shutil.copy(FIXTURES / "driving_short.mp4", inputs / "driving.mp4")
    mp4 = run_headless(tmp_path, "liveportrait_video_driven.json", "portrait.detector=center",
                       "motion.crop=as is (already face crops)", inputs=inputs, models=models_dir(tmp_path / "models"))
    size, codec, seconds = mp4_facts(mp4)
    assert size == (480, 600, 6) and codec == "aac" and seconds == pytest.approx(6 / 25, abs=2e-3)


def test_nodes_under_comfy(comfy_pack):
    models_dir(Path(comfy_pack.folder_paths.models_dir))
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    portrait_node = nodes["TalkingHead_LoadPortrait"]()
    res = portrait_node.run("", "center", 256, 1.8, -0.1, image_in=torch.rand(1, 90, 70, 3))
    portrait = res["result"][0]
    lps = lp_set(comfy_pack)
    (motion,) = nodes["TalkingHead_LivePortraitExtractMotion"]().run(
        lps, torch.rand(5, 64, 64, 3), 30.0, "as is (already face crops)", "center", 2)
    assert len(motion) == 5 and motion.fps == 30.0
    mm = comfy_pack.comfy
    assert len(mm.current_loaded_models) == 7  # F, M, W, G and the three MLPs, under ComfyUI's manager
    frames, faces, _ = nodes["TalkingHead_LivePortraitRender"]().run(lps, portrait, motion, True, "all", True, 1.0, 2)
    assert frames.shape == (5, 90, 70, 3) and faces.shape == (5, 128, 128, 3)
    assert 0 <= frames.min() and frames.max() <= 1
    # paste-back keeps pixels far from the face; the rendered face changes the rest
    crops, _, _ = nodes["TalkingHead_LivePortraitRender"]().run(lps, portrait, motion, True, "all", True, 1.0, 2,
                                                                paste_back=False, keep_model_loaded=False)
    assert crops.shape == (5, 128, 128, 3)
    assert mm.current_loaded_models == [] and sub(comfy_pack, "core.cache").CACHE.entries("liveportrait") == []


def test_missing_weights_message(pack, monkeypatch, tmp_path):
    monkeypatch.setenv("TALKINGHEAD_OFFLINE", "1")
    errors = sub(pack, "core.errors")
    with pytest.raises(errors.WeightsMissingError) as err:
        pack.NODE_CLASS_MAPPINGS["TalkingHead_LoadLivePortrait"]().run("human", "fp32")
    msg = str(err.value)
    assert "appearance_feature_extractor.pth" in msg and "huggingface.co/KwaiVGI/LivePortrait" in msg
    assert str(tmp_path / "models" / "liveportrait") in msg and "MIT" in msg


def test_motion_driven_workflow_headless(tmp_path):
    """workflows/liveportrait_motion_driven.json: a saved motion + speech -> LivePortraitRender -> mp4."""
    from core.liveportrait.motion import Motion

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(ROOT / "example_inputs" / "portrait.png", inputs / "portrait.png")
    shutil.copy(ROOT / "example_inputs" / "speech.wav", inputs / "speech.wav")
    Motion.load(ROOT / "example_inputs" / "motion.safetensors").frames(0, 5).save(inputs / "motion.safetensors")
    mp4 = run_headless(tmp_path, "liveportrait_motion_driven.json", "portrait.detector=center", inputs=inputs,
                       models=models_dir(tmp_path / "models"))
    size, codec, _ = mp4_facts(mp4)
    assert size == (480, 600, 5) and codec == "aac"


def test_save_and_load_motion_nodes(pack, tmp_path):
    from core.liveportrait.motion import Motion

    motion = Motion.load(ROOT / "example_inputs" / "motion.safetensors")
    saved = pack.NODE_CLASS_MAPPINGS["TalkingHead_SaveMotion"]().run(motion, "talks/m")
    path = Path(saved["result"][0])
    assert path == tmp_path / "output" / "talks" / "m_00001_.safetensors" and "50 frames" in saved["ui"]["text"][0]
    (tmp_path / "input").mkdir()
    shutil.copy(path, tmp_path / "input" / "m.safetensors")
    loader = pack.NODE_CLASS_MAPPINGS["TalkingHead_LoadMotion"]
    assert loader.VALIDATE_INPUTS("m.safetensors") is True and "outside" in loader.VALIDATE_INPUTS("../x.safetensors")
    back, fps = loader().run("m.safetensors")
    assert fps == 25.0 and torch.equal(back.exp, motion.exp) and torch.equal(back.yaw, motion.yaw)
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(2)}, tmp_path / "input" / "bad.safetensors")
    errors = sub(pack, "core.errors")
    with pytest.raises(errors.InputError, match="not a motion file"):
        loader().run("bad.safetensors")


def test_animal_model_set(pack, tmp_path, monkeypatch):
    """The animal set: liveportrait_animals/base_models_v1.1/*.pth (official layout) plus the HUMAN stitching file;
    a missing animal file is named with its own download address."""
    monkeypatch.setenv("TALKINGHEAD_OFFLINE", "1")
    lp = sub(pack, "core.liveportrait")
    errors = sub(pack, "core.errors")
    ids = lp.file_ids("animal")
    assert ids["warping_module"] == "liveportrait_animals/warping_module"
    assert ids["stitching_retargeting_module"] == "liveportrait/stitching_retargeting_module"
    with pytest.raises(ValueError, match="animal v1.0"):
        lp.file_ids("cat")
    models = tmp_path / "models"
    human = models_dir(models) / "liveportrait"
    animal = models / "liveportrait_animals" / "base_models_v1.1"
    animal.mkdir(parents=True)
    from safetensors.torch import load_file

    for kind in lp.KINDS[:4]:  # the official files are .pth state dicts: write them that way
        torch.save(load_file(str(human / f"{kind}.safetensors")), animal / f"{kind}.pth")
        (human / f"{kind}.safetensors").unlink()  # the animal set must not pick up human files
    paths = lp.resolve_paths("animal", download=False)
    assert paths["motion_extractor"] == animal / "motion_extractor.pth"
    assert paths["stitching_retargeting_module"] == human / "stitching_retargeting_module.safetensors"
    (motion,) = pack.NODE_CLASS_MAPPINGS["TalkingHead_LivePortraitExtractMotion"]().run(
        lp_set(pack, model="animal"), torch.rand(3, 64, 64, 3), 25.0, "as is (already face crops)", "center", 2)
    assert len(motion) == 3
    with pytest.raises(errors.WeightsMissingError) as err:
        lp.resolve_paths("animal v1.0", download=False)
    assert "liveportrait_animals/base_models/appearance_feature_extractor.pth" in str(err.value)


def test_render_node_makes_what_is_connected(pack, tmp_path, monkeypatch):
    """LivePortraitRender in a graph (hidden PROMPT + UNIQUE_ID): frames / face_frames are made only when a node
    takes them; frame_stream renders nothing until it is pulled, then the frames of the IMAGE output, on every pull.
    keep_model_loaded off: the networks stay for the stream and go after each full pull of it, or right away when
    only IMAGE outputs were asked for. A video too large for memory as one IMAGE is refused before any work,
    pointing to the stream."""
    models_dir(tmp_path / "models")
    nodes = pack.NODE_CLASS_MAPPINGS
    cls = nodes["TalkingHead_LivePortraitRender"]
    assert cls.RETURN_NAMES == ("frames", "face_frames", "frame_stream")
    assert cls.RETURN_TYPES == ("IMAGE", "IMAGE", "TALKINGHEAD_FRAMES")
    assert cls.INPUT_TYPES()["hidden"] == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}
    portrait = nodes["TalkingHead_LoadPortrait"]().run("", "center", 256, 1.8, -0.1,
                                                       image_in=torch.rand(1, 90, 70, 3))["result"][0]
    motion = sub(pack, "core.liveportrait").Motion.load(ROOT / "example_inputs" / "motion.safetensors").frames(0, 5)
    lps = lp_set(pack)
    cache = sub(pack, "core.cache").CACHE
    pipeline = sub(pack, "core.liveportrait.pipeline")
    renders = []
    real = pipeline.render_pasted

    def counted(*args, **kwargs):
        renders.append(args[3] is not None)  # pasted back?
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "render_pasted", counted)
    args = (lps, portrait, motion, True, "all", True, 1.0, 2)
    frames, faces, stream = cls().run(*args)  # a direct call: nothing known about the graph, everything made
    assert frames.shape == (5, 90, 70, 3) and faces.shape == (5, 128, 128, 3) and renders == [True]

    def graph(*slots):  # node "7" is the renderer; node "8" takes the given outputs
        return {"7": {"class_type": cls.NODE_ID, "inputs": {}},
                "8": {"class_type": "TalkingHead_MuxVideo", "inputs": {f"in{s}": ["7", s] for s in slots}}}

    renders.clear()
    out = cls().run(*args, keep_model_loaded=False, prompt=graph(2), unique_id="7")
    assert out[:2] == (None, None) and renders == []  # nothing rendered yet
    assert len(cache.entries("liveportrait")) == 1  # kept for the stream, which has not been pulled
    assert (len(out[2]), out[2].height, out[2].width, out[2].fps) == (5, 90, 70, 25.0)
    assert torch.equal(out[2].materialize(), frames) and renders == [True]
    assert cache.entries("liveportrait") == []  # unloaded after the full pull
    assert torch.equal(out[2].materialize(), frames)  # pulled again: loaded, rendered, unloaded again
    assert renders == [True, True] and cache.entries("liveportrait") == []

    renders.clear()
    made, none, _ = cls().run(*args, keep_model_loaded=False, prompt=graph(0), unique_id="7")
    assert torch.equal(made, frames) and none is None and renders == [True]
    assert cache.entries("liveportrait") == []  # only an IMAGE output: unloaded right away
    none, made, crops = cls().run(*args, prompt=graph(1), unique_id="7")
    assert none is None and torch.equal(made, faces) and renders == [True, False]  # crops only, no paste-back
    assert (crops.height, crops.width) == (90, 70)  # the stream follows paste_back...
    crops = cls().run(*args, paste_back=False, prompt=graph(2), unique_id="7")[2]
    assert (crops.height, crops.width) == (128, 128) and torch.equal(crops.materialize(), faces)  # ...off: crops

    errors = sub(pack, "core.errors")
    monkeypatch.setattr(sub(pack, "core.frames"), "available_memory", lambda: 100_000)
    renders.clear()
    with pytest.raises(errors.FramesTooLargeError, match=r"LivePortraitRender's frames output: 5 frames of 70x90 "
                                                         r"as one IMAGE batch would need .* connect LivePortraitRender's "
                                                         r"frame_stream output to MuxVideo's frames input"):
        cls().run(*args, prompt=graph(0), unique_id="7")
    with pytest.raises(errors.FramesTooLargeError):  # keep_model_loaded off: freed on the error, stream or not
        cls().run(*args, keep_model_loaded=False, prompt=graph(0, 2), unique_id="7")
    assert cache.entries("liveportrait") == []
    with pytest.raises(errors.FramesTooLargeError, match=r"frames and face_frames outputs: 5 frames of 70x90 and of "
                                                         r"128x128 as IMAGE batches"):
        cls().run(*args)
    assert renders == []  # refused before any work
    assert cls().run(*args, prompt=graph(2), unique_id="7")[2] is not None  # the stream needs no such memory
