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
    frames, faces = nodes["TalkingHead_LivePortraitRender"]().run(lps, portrait, motion, True, "all", True, 1.0, 2)
    assert frames.shape == (5, 90, 70, 3) and faces.shape == (5, 128, 128, 3)
    assert 0 <= frames.min() and frames.max() <= 1
    # paste-back keeps pixels far from the face; the rendered face changes the rest
    crops, _ = nodes["TalkingHead_LivePortraitRender"]().run(lps, portrait, motion, True, "all", True, 1.0, 2,
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
