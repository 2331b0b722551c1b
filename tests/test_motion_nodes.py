"""Audio -> motion nodes and workflows, headless on tiny weights: procedural motion (LivePortrait weights only)."""
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, sub
from test_lp_nodes import models_dir


def write_speech_clip(path: Path, seconds: float, start: float = 1.0) -> None:
    """A cut of examples/speech.wav (16 kHz mono) as a 16-bit wav file."""
    from core.audio import load_audio

    a = load_audio(ROOT / "examples" / "speech.wav")
    sr = a.sample_rate
    x = a.waveform[0, int(start * sr):int((start + seconds) * sr)].numpy()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def run_workflow(tmp_path, name, *sets):
    res = subprocess.run([sys.executable, str(ROOT / "run.py"), str(ROOT / "workflows" / name),
                          "--input-dir", str(tmp_path / "in"), "--models-dir", str(tmp_path / "models"), "--offline",
                          "--set", "portrait.detector=center", *[a for s in sets for a in ("--set", s)], "--quiet"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.strip().splitlines()[-1])


def test_procedural_workflow_headless(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(ROOT / "examples" / "portrait.png", inputs / "portrait.png")
    write_speech_clip(inputs / "speech.wav", 0.6)
    models_dir(tmp_path / "models")
    mp4 = run_workflow(tmp_path, "liveportrait_procedural.json")
    from core import video

    info = video.probe(mp4)
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (480, 600, 15)
    assert info["audio"]["codec"] == "aac" and video.audio_duration(mp4) == pytest.approx(0.6, abs=2e-3)


def test_procedural_node_drives_mouth_and_eyes(pack, tmp_path):
    """The node's motion carries lip/eye ratios that follow the audio; the renderer turns them into different faces."""
    models_dir(tmp_path / "models")
    nodes = pack.NODE_CLASS_MAPPINGS
    portrait = nodes["TalkingHead_LoadPortrait"]().run("", "center", 256, 1.8, -0.1,
                                                       image_in=torch.rand(1, 90, 70, 3))["result"][0]
    sr = 16000
    t = torch.arange(sr) / sr
    speech = torch.where(t < 0.5, torch.zeros_like(t), 0.5 * torch.sin(2 * torch.pi * 220 * t))  # silence, then tone
    audio = {"waveform": speech.reshape(1, 1, -1), "sample_rate": sr}
    motion, fps = nodes["TalkingHead_ProceduralMotion"]().run(portrait, audio, 25.0, 3, 1.0, 1.0, True)
    assert len(motion) == 25 and fps == 25.0 and motion.composed
    assert float(motion.lip[:10].max()) == 0.0 and float(motion.lip[16:].min()) > 0.2
    frames, faces = nodes["TalkingHead_LivePortraitRender"]().run(portrait, motion, True, "all", True, 1.0, 8, "fp32")
    assert frames.shape == (25, 90, 70, 3)
    still = (faces[1:10] - faces[0]).abs().max()
    talking = (faces[18:] - faces[0]).abs().amax(dim=(1, 2, 3)).min()
    assert talking > still + 1e-3  # the open mouth changes the face more than the tiny head sway alone
    errors = sub(pack, "core.errors")
    with pytest.raises(errors.InputError):
        nodes["TalkingHead_ProceduralMotion"]().run(portrait, {"waveform": torch.zeros(1, 1, 0), "sample_rate": sr},
                                                    25.0, 0, 1.0, 1.0, True)
