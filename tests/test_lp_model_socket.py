"""LoadLivePortrait: the LivePortrait model set is chosen and loaded once per graph, and every LivePortrait node
takes it (and the portrait's source, made once) from there; workflows saved before it still run headless."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, lp_set, sub
from test_lp_nodes import models_dir
from test_motion_nodes import speech_inputs, tiny_ditto_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_graph(pack, tmp_path, name, overrides):
    """``workflows/api/<name>.api.json`` run in this process with the headless executor (the models in
    ``tmp_path/models``, the inputs in ``tmp_path/in``); returns the executor's result."""
    headless = sub(pack, "headless")
    builtins = sub(pack, "headless.builtins")
    host = sub(pack, "core.host").HOST
    host.configure(models_dir=tmp_path / "models", input_dirs=lambda: [tmp_path / "in"])
    registry = {**builtins.BUILTIN_NODES, **pack.NODE_CLASS_MAPPINGS}
    prompt = headless.load_workflow(ROOT / "workflows" / "api" / f"{name}.api.json", registry)
    prompt = headless.apply_overrides(prompt, overrides, registry=registry)
    return headless.execute(prompt, registry)


def _count(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_one_load_and_one_source_per_graph(pack, tmp_path, monkeypatch):
    """portrait + speech -> AudioToEmbedding -> MotionDiT -> LivePortraitRender: MotionDiT and the renderer both
    need LivePortrait (the portrait's own motion, then the rendering); the five networks load once and the
    portrait's source (motion extractor + appearance volume) is made once. A second run of the graph loads
    nothing; with the renderer's keep_model_loaded off, the set is unloaded when the graph is done."""
    speech_inputs(tmp_path)
    tiny_ditto_models(tmp_path / "models")
    lp = sub(pack, "core.liveportrait")
    loads = _count(monkeypatch, lp, "load_liveportrait")
    sources = _count(monkeypatch, sub(pack, "core.liveportrait.pipeline"), "portrait_source")
    overrides = ["portrait.detector=center", "motion.steps=2", "motion.checkpoint=ditto/lmdm_v0.4_hubert.safetensors",
                 "liveportrait.precision=fp32", "liveportrait.device=cpu"]
    result = _run_graph(pack, tmp_path, "liveportrait_ditto", overrides)
    assert len(loads) == 1 and len(sources) == 1
    assert list((tmp_path / "output").rglob("*.mp4"))
    consumers = [n for n in json.loads((ROOT / "workflows" / "api" / "liveportrait_ditto.api.json").read_text())
                 .values() if "liveportrait" in n["inputs"]]
    assert {n["class_type"] for n in consumers} == {"TalkingHead_MotionDiT", "TalkingHead_LivePortraitRender"}
    assert result["outputs"]
    # the cache keeps the networks: running the graph again loads nothing
    _run_graph(pack, tmp_path, "liveportrait_ditto", overrides)
    assert len(loads) == 1
    cache = sub(pack, "core.cache").CACHE
    assert len(cache.entries("liveportrait")) == 1
    _run_graph(pack, tmp_path, "liveportrait_ditto", overrides + ["render.keep_model_loaded=false"])
    assert len(loads) == 1 and cache.entries("liveportrait") == []


def test_the_set_holds_no_networks_and_no_portraits(pack, tmp_path):
    """The set refers to the cache: an unload really frees the networks (the next use loads them again), and the
    sources it remembers go with their portraits."""
    import gc
    import weakref

    models_dir(tmp_path / "models")
    lps = lp_set(pack)
    portrait = pack.NODE_CLASS_MAPPINGS["TalkingHead_LoadPortrait"]().run(
        "", "center", 256, 1.8, -0.1, image_in=torch.rand(1, 90, 70, 3))["result"][0]
    first = lps.source(portrait)
    assert lps.source(portrait) is first and first.feature_3d is not None
    models = weakref.ref(lps.models())
    sub(pack, "core.cache").CACHE.unload("liveportrait")
    gc.collect()
    assert models() is None  # nothing kept the unloaded networks alive
    again = lps.source(portrait)  # loads the set again, and makes the source with the new networks
    assert again is not first and torch.allclose(again.feature_3d, first.feature_3d)
    ref = weakref.ref(portrait)
    del portrait, first, again
    gc.collect()
    assert ref() is None  # the set did not keep the portrait alive
    other = pack.NODE_CLASS_MAPPINGS["TalkingHead_LoadPortrait"]().run(
        "", "center", 256, 1.8, -0.1, image_in=torch.rand(1, 60, 60, 3))["result"][0]
    lps.source(other)
    assert len(lps._sources) == 1  # the source of the dropped portrait was forgotten


def test_every_liveportrait_node_takes_the_set(pack):
    """The choice of model set, precision and device is made on LoadLivePortrait only."""
    names = ["LivePortraitExtractMotion", "LivePortraitRender", "LivePortraitRenderVideo", "ProceduralMotion",
             "MotionDiT"]
    for name in names:
        spec = pack.NODE_CLASS_MAPPINGS[f"TalkingHead_{name}"].INPUT_TYPES()
        declared = {**spec["required"], **spec.get("optional", {})}
        assert declared["liveportrait"][0] == "TALKINGHEAD_LIVEPORTRAIT", name
        assert "liveportrait" in spec["required"], name
        assert "model" not in declared and "precision" not in declared, name
    loader = pack.NODE_CLASS_MAPPINGS["TalkingHead_LoadLivePortrait"]
    assert loader.RETURN_TYPES == ("TALKINGHEAD_LIVEPORTRAIT",)
    for path in sorted((ROOT / "workflows" / "api").glob("*.api.json")):
        prompt = json.loads(path.read_text())
        users = [n for n in prompt.values() if n["class_type"][len("TalkingHead_"):] in names]
        loaders = [k for k, n in prompt.items() if n["class_type"] == "TalkingHead_LoadLivePortrait"]
        assert len(loaders) == (1 if users else 0), path.name
        assert all(n["inputs"]["liveportrait"] == [loaders[0], 0] for n in users), path.name


def test_a_workflow_saved_before_the_loader_runs_headless(tmp_path):
    """A 0.2 UI workflow (each LivePortrait node with its own model/precision/device widgets, stored by position)
    is read as it was saved, rewired to one LoadLivePortrait, runs, and the runner says what it changed and what
    to do in ComfyUI."""
    old = json.loads((ROOT / "tests" / "fixtures" / "workflows_0.2" / "liveportrait_procedural.json").read_text())
    assert not any(s.get("name") == "liveportrait" for n in old["nodes"] for s in n.get("inputs") or [])
    speech_inputs(tmp_path)
    models_dir(tmp_path / "models")
    res = subprocess.run([sys.executable, str(ROOT / "run.py"),
                          str(ROOT / "tests" / "fixtures" / "workflows_0.2" / "liveportrait_procedural.json"),
                          "--input-dir", str(tmp_path / "in"), "--models-dir", str(tmp_path / "models"), "--offline",
                          "--set", "portrait.detector=center", "--quiet"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "was saved by an older version of the pack" in res.stderr
    assert "ProceduralMotion): its model set (human, precision auto, device auto) now comes from " \
           "LoadLivePortrait" in res.stderr
    assert "Required input is missing: liveportrait" in res.stderr
    assert Path(res.stdout.strip().splitlines()[-1]).is_file()


def test_upgrade_api_rewires_each_choice_once(pack):
    legacy = sub(pack, "nodes.legacy")
    prompt = {
        "1": {"class_type": "TalkingHead_LivePortraitRender",
              "inputs": {"model": "animal", "precision": "fp16", "device": "cuda", "auto_download": False,
                         "portrait": ["9", 0], "motion": ["3", 0]}},
        "3": {"class_type": "TalkingHead_MotionDiT",
              "inputs": {"model": "animal", "precision": "fp16", "device": "cuda", "auto_download": False,
                         "keep_model_loaded": True}},
        "4": {"class_type": "TalkingHead_LivePortraitRender", "inputs": {}},  # all defaults
        "5": {"class_type": "TalkingHead_LivePortraitRender", "inputs": {"liveportrait": ["1", 0]}},  # already new
    }
    new, notes = legacy.upgrade_api(prompt)
    assert "model" in prompt["1"]["inputs"]  # the given prompt is not modified
    loaders = {k: n for k, n in new.items() if n["class_type"] == "TalkingHead_LoadLivePortrait"}
    assert len(loaders) == 2
    (animal,) = [k for k, n in loaders.items() if n["inputs"]["model"] == "animal"]
    assert loaders[animal]["inputs"] == {"model": "animal", "precision": "fp16", "device": "cuda",
                                         "auto_download": False}
    assert new["1"]["inputs"]["liveportrait"] == new["3"]["inputs"]["liveportrait"] == [animal, 0]
    assert "model" not in new["1"]["inputs"] and "precision" not in new["3"]["inputs"]
    assert new["3"]["inputs"]["device"] == "cuda"  # MotionDiT keeps its own device for the motion model
    assert new["5"] == prompt["5"] and len(notes) == 4
    assert legacy.upgrade_api(new) == (new, [])


def test_render_stream_equals_render_images_on_every_pull(pack, tmp_path):
    """core.liveportrait.pipeline.render_stream: the frames render_images makes (pasted back, or the face crops),
    made batch by batch on each pull, the same on a second pull and on a pull after the networks were unloaded
    (the set loads them again through the cache)."""
    models_dir(tmp_path / "models")
    lp, pipeline = sub(pack, "core.liveportrait"), sub(pack, "core.liveportrait.pipeline")
    cache = sub(pack, "core.cache").CACHE
    lps = lp_set(pack)
    portrait = pack.NODE_CLASS_MAPPINGS["TalkingHead_LoadPortrait"]().run(
        "", "center", 256, 1.8, -0.1, image_in=torch.rand(1, 90, 70, 3, generator=torch.Generator().manual_seed(1)))
    portrait = portrait["result"][0]
    motion = lp.Motion.load(ROOT / "example_inputs" / "motion.safetensors").frames(0, 6)
    models, source = lps.models(), lps.source(portrait)
    x_d = lp.motion_keypoints(models, source, motion)
    pasted, faces = pipeline.render_images(models, source, x_d, full=portrait.full, batch_size=4, device="cpu",
                                           precision="fp32")
    stream = pipeline.render_stream(lps, source, x_d, full=portrait.full, batch_size=4, label="test frames", fps=25.0)
    crops = pipeline.render_stream(models, source, x_d, batch_size=4, device="cpu", precision="fp32")
    assert (len(stream), stream.height, stream.width, stream.fps) == (6, 90, 70, 25.0)
    assert (len(crops), crops.height, crops.width) == (6, 128, 128)
    first = [b.clone() for b in stream]
    assert [b.shape[0] for b in first] == [4, 2]  # the renderer's batches, as they are made
    assert torch.equal(torch.cat(first), pasted)
    assert torch.equal(stream.materialize(), pasted)  # pulled again: rendered again, the same frames
    assert torch.equal(crops.materialize(), faces) and torch.equal(crops.materialize(), faces)
    cache.unload("liveportrait")
    assert cache.entries("liveportrait") == []
    assert torch.equal(stream.materialize(), pasted)  # the set loaded its networks again for this pull
    assert len(cache.entries("liveportrait")) == 1
