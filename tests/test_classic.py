"""The classic pipeline end to end on tiny weights: SDABase -> ResizePad256 -> FOMAnimate -> MuxVideo, one and two
speakers, and SDABase's node behaviour."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tolerance as tol
from conftest import FIXTURES, ROOT, sub
from test_motion_nodes import speech_inputs


def classic_models(root: Path) -> Path:
    (root / "sda").mkdir(parents=True, exist_ok=True)
    (root / "fom").mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "sda" / "tiny-grid.dat", root / "sda" / "tiny-grid.dat")
    shutil.copy(FIXTURES / "fom" / "tiny-cpk.pth.tar", root / "fom" / "tiny-cpk.pth.tar")
    return root


def run_classic(tmp_path, workflow, *sets):
    inputs = speech_inputs(tmp_path)
    classic_models(tmp_path / "models")
    args = [sys.executable, str(ROOT / "run.py"), str(ROOT / "workflows" / workflow), "--input-dir", str(inputs),
            "--models-dir", str(tmp_path / "models"), "--offline", "--quiet"]
    for s in sets:
        args += ["--set", s]
    res = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    from core import video

    mp4 = Path(res.stdout.strip().splitlines()[-1])
    return video.probe(mp4), video.audio_duration(mp4)


def test_classic_workflow_headless(tmp_path):
    info, seconds = run_classic(tmp_path, "classic_sda_fom.json", "portrait.detector=center",
                                "sda.face_alignment=already aligned", "sda.checkpoint=tiny-grid.dat",
                                "animate.checkpoint=tiny-cpk.pth.tar")
    # 0.6 s of speech at GRID's framing (50 kHz, 2000-sample hop, 8000 samples of padding) -> 15 frames
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (256, 256, 15)
    assert info["audio"]["codec"] == "aac" and seconds == pytest.approx(0.6, abs=2e-3)


def test_two_speakers_workflow_headless(tmp_path):
    sets = ["animate 1.checkpoint=tiny-cpk.pth.tar", "animate 2.checkpoint=tiny-cpk.pth.tar"]
    for i in (1, 2):
        sets += [f"portrait {i}.detector=center", f"sda {i}.face_alignment=already aligned",
                 f"sda {i}.checkpoint=tiny-grid.dat"]
    info, seconds = run_classic(tmp_path, "classic_two_speakers.json", *sets)
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (256, 256, 30)
    assert seconds == pytest.approx(1.2, abs=2e-3)


def test_sda_node(pack, tmp_path, monkeypatch):
    classic_models(tmp_path / "models")
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_SDABase"]()
    sr = 16000
    t = torch.arange(int(0.5 * sr)) / sr
    audio = {"waveform": (0.3 * torch.sin(2 * torch.pi * 180 * t)).reshape(1, 1, -1), "sample_rate": sr}
    face = torch.rand(1, 40, 30, 3, generator=torch.Generator().manual_seed(0))
    frames, used, fps, stream = node.run(face, audio, "already aligned", 3, "tiny-grid.dat", chunk_frames=4)
    assert frames.shape == (12, 16, 12, 3) and fps == 25.0  # (25000 + 8000 - 10000) // 2000 + 1 at 50 kHz
    assert fps == 25.0 and 0 <= frames.min() and frames.max() <= 250 / 255 + tol.elementwise_bound(2, 1.0)
    assert used["sample_rate"] == 50000 and used["waveform"].shape[-1] == 25000
    # the frame_stream output: the same frames, generated chunk by chunk anew on each pull
    assert (len(stream), stream.height, stream.width, stream.fps) == (12, 16, 12, 25.0)
    assert [b.shape[0] for b in stream] == [4, 4, 4] and torch.equal(torch.cat(list(stream)), frames)
    again, _, _, _ = node.run(face, audio, "already aligned", 3, "tiny-grid.dat", chunk_frames=12)
    other, _, _, _ = node.run(face, audio, "already aligned", 4, "tiny-grid.dat")
    # chunking changes only the GRU's matmul blocking (float rounding of the same network)
    tol.close_network(frames, again, tol.SDA)
    assert not torch.allclose(frames, other, atol=1e-3)
    core_sda = sub(pack, "core.sda")
    monkeypatch.setattr(core_sda, "face_alignment_landmarks", lambda *a, **k: (lambda img: None))
    errors = sub(pack, "core.errors")
    with pytest.raises(errors.InputError, match="already aligned"):
        node.run(face, audio, "align (face landmarks)", 0, "tiny-grid.dat")


def test_sda_node_frame_stream_loads_its_model_when_pulled(pack, tmp_path):
    """Only SDABase's frame_stream connected: nothing is generated when the node runs; the stream, pulled later (its
    model meanwhile unloaded), loads the model again through the cache and, with keep_model_loaded off, frees it
    when the pull ends; every pull gives the frames of the IMAGE output."""
    classic_models(tmp_path / "models")
    cache = sub(pack, "core.cache").CACHE
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_SDABase"]()
    sr = 16000
    audio = {"waveform": (0.3 * torch.sin(2 * torch.pi * 180 * torch.arange(8000) / sr)).reshape(1, 1, -1),
             "sample_rate": sr}
    face = torch.rand(1, 40, 30, 3, generator=torch.Generator().manual_seed(0))
    expected, _, _, _ = node.run(face, audio, "already aligned", 5, "tiny-grid.dat", chunk_frames=5)
    graph = {"3": {"class_type": "TalkingHead_SDABase", "inputs": {}},
             "4": {"class_type": "TalkingHead_ResizePad256", "inputs": {"frames": ["3", 3]}},
             "6": {"class_type": "TalkingHead_MuxVideo", "inputs": {"fps": ["3", 2], "audio": ["3", 1]}}}
    frames, used, fps, stream = node.run(face, audio, "already aligned", 5, "tiny-grid.dat", chunk_frames=5,
                                         keep_model_loaded=False, prompt=graph, unique_id="3")
    assert frames is None and fps == 25.0 and used["sample_rate"] == 50000
    assert len(cache.entries("sda")) == 1  # kept for the pull
    cache.unload("sda")
    assert [b.shape[0] for b in stream] == [5, 5, 2] and cache.entries("sda") == []
    assert torch.equal(stream.materialize(), expected) and cache.entries("sda") == []


def test_sda_and_hubert_under_comfyui_memory_management(comfy_pack, tmp_path):
    """ComfyUI's ModelPatcher assigns ``model.device`` on load/offload; SDAModel and transformers' HuBERT expose
    ``device`` as a read-only property, so the bridge must hand them over in a holder."""
    from test_motion_nodes import tiny_ditto_models

    models = Path(comfy_pack.folder_paths.models_dir)
    classic_models(models)
    tiny_ditto_models(models)
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    sr = 16000
    audio = {"waveform": 0.3 * torch.sin(2 * torch.pi * 150 * torch.arange(8000) / sr).reshape(1, 1, -1),
             "sample_rate": sr}
    frames, _, _, _ = nodes["TalkingHead_SDABase"]().run(torch.rand(1, 40, 30, 3), audio, "already aligned", 0,
                                                          "tiny-grid.dat")
    (emb,) = nodes["TalkingHead_AudioToEmbedding"]().run(audio, "HuBERT-large (Ditto)")
    assert frames.shape[0] == 12 and emb.features.shape[1] == 1024
    loaded = comfy_pack.comfy.current_loaded_models
    assert len(loaded) >= 2 and all(getattr(lm.model.model, "device", None) is not None for lm in loaded)
    nodes["TalkingHead_UnloadModels"]().run("all")
    assert comfy_pack.comfy.current_loaded_models == []
