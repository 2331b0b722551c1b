"""Audio -> motion nodes and workflows, headless on tiny weights: procedural motion (LivePortrait weights only)."""
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, lp_set, run_headless, sub
from test_lp_nodes import models_dir


def write_speech_clip(path: Path, seconds: float, start: float = 1.0) -> None:
    """A cut of example_inputs/speech.wav (16 kHz mono) as a 16-bit wav file."""
    from core.audio import load_audio

    a = load_audio(ROOT / "example_inputs" / "speech.wav")
    sr = a.sample_rate
    x = a.waveform[0, int(start * sr):int((start + seconds) * sr)].numpy()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def speech_inputs(tmp_path: Path, seconds: float = 0.6) -> Path:
    """``tmp_path/in`` with the example portrait and a short cut of the example speech."""
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    shutil.copy(ROOT / "example_inputs" / "portrait.png", inputs / "portrait.png")
    write_speech_clip(inputs / "speech.wav", seconds)
    return inputs


def run_workflow(tmp_path, name, *sets):
    return run_headless(tmp_path, name, "portrait.detector=center", *sets, inputs=tmp_path / "in",
                        models=tmp_path / "models")


def test_procedural_workflow_headless(tmp_path):
    speech_inputs(tmp_path)
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
    lps = lp_set(pack)
    motion, fps = nodes["TalkingHead_ProceduralMotion"]().run(lps, portrait, audio, 25.0, 3, 1.0, 1.0, True)
    assert len(motion) == 25 and fps == 25.0 and motion.composed
    assert float(motion.lip[:10].max()) == 0.0 and float(motion.lip[16:].min()) > 0.2
    frames, faces, _ = nodes["TalkingHead_LivePortraitRender"]().run(lps, portrait, motion, True, "all", True, 1.0, 8)
    assert frames.shape == (25, 90, 70, 3)
    still = (faces[1:10] - faces[0]).abs().max()
    talking = (faces[18:] - faces[0]).abs().amax(dim=(1, 2, 3)).min()
    assert talking > still + 1e-3  # the open mouth changes the face more than the tiny head sway alone
    errors = sub(pack, "core.errors")
    with pytest.raises(errors.InputError):
        nodes["TalkingHead_ProceduralMotion"]().run(lps, portrait, {"waveform": torch.zeros(1, 1, 0),
                                                                    "sample_rate": sr}, 25.0, 0, 1.0, 1.0, True)


def tiny_ditto_models(root: Path) -> Path:
    """models/ with the tiny LivePortrait set, a tiny Ditto LMDM (fixture weights, 4 heads) and a tiny random
    HuBERT with 1024-d output in the hubert-large-ls960-ft folder (HF layout, as a CTC model like the real one)."""
    from safetensors.torch import load_file, save_file
    from transformers import HubertConfig, HubertForCTC

    from conftest import FIXTURES

    models_dir(root)
    state = load_file(str(FIXTURES / "ditto" / "weights.safetensors"))
    lmdm = {k: v for k, v in state.items() if not k.startswith(("stitch.", "schedule."))}
    (root / "ditto").mkdir(parents=True, exist_ok=True)
    save_file(lmdm, str(root / "ditto" / "lmdm_v0.4_hubert.safetensors"), metadata={"num_heads": "4"})
    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=1024, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32,
                       conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=16,
                       do_stable_layer_norm=True, feat_extract_norm="layer", vocab_size=32)
    HubertForCTC(cfg).save_pretrained(str(root / "audio_encoders" / "hubert-large-ls960-ft"))
    return root


def test_ditto_workflow_headless(tmp_path):
    """portrait + speech -> AudioToEmbedding (HuBERT) -> MotionDiT (Ditto) -> LivePortraitRender -> mp4 with audio."""
    speech_inputs(tmp_path)
    tiny_ditto_models(tmp_path / "models")
    mp4 = run_workflow(tmp_path, "liveportrait_ditto.json", "motion.steps=4",
                       "motion.checkpoint=ditto/lmdm_v0.4_hubert.safetensors")
    from core import video

    info = video.probe(mp4)
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (480, 600, 15)
    assert info["audio"]["codec"] == "aac" and video.audio_duration(mp4) == pytest.approx(0.6, abs=2e-3)


def tiny_joyvasa_models(root: Path) -> Path:
    """models/ with the tiny LivePortrait set, the tiny JoyVASA generator (its config in the safetensors metadata)
    and a motion template pickle with the official structure."""
    import json
    import pickle

    from safetensors.torch import load_file, save_file

    from conftest import FIXTURES

    models_dir(root)
    fix = FIXTURES / "joyvasa"
    state = {k: v for k, v in load_file(str(fix / "weights.safetensors")).items() if not k.startswith("retarget.")}
    (root / "joyvasa").mkdir(parents=True, exist_ok=True)
    save_file(state, str(root / "joyvasa" / "motion_generator_hubert_chinese.safetensors"),
              metadata={"joyvasa_config": (fix / "config.json").read_text()})
    io = load_file(str(fix / "io.safetensors"))
    template = {k[len("template."):]: v.numpy() for k, v in io.items() if k.startswith("template.")}
    (root / "joyvasa" / "motion_template.pkl").write_bytes(pickle.dumps(template))
    assert json.loads((fix / "config.json").read_text())
    return root


def test_joyvasa_workflow_headless(tmp_path):
    """portrait + speech -> AudioToEmbedding (JoyVASA's HuBERT) -> MotionDiT (JoyVASA) -> render -> mp4 with audio;
    one motion frame per video frame of the audio."""
    speech_inputs(tmp_path)
    tiny_joyvasa_models(tmp_path / "models")
    ckpt = "joyvasa/motion_generator_hubert_chinese.safetensors"
    mp4 = run_workflow(tmp_path, "liveportrait_joyvasa.json", f"embeddings.joyvasa_checkpoint={ckpt}",
                       f"motion.checkpoint={ckpt}")
    from core import video

    info = video.probe(mp4)
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (480, 600, 15)
    assert info["audio"]["codec"] == "aac"


def test_motion_dit_checks_embeddings(pack, tmp_path):
    """MotionDiT refuses embeddings made for the other model, naming the AudioToEmbedding setting to use."""
    tiny_joyvasa_models(tmp_path / "models")
    tiny_ditto_models(tmp_path / "models")
    nodes = pack.NODE_CLASS_MAPPINGS
    portrait = nodes["TalkingHead_LoadPortrait"]().run("", "center", 256, 1.8, -0.1,
                                                       image_in=torch.rand(1, 90, 70, 3))["result"][0]
    sr = 16000
    audio = {"waveform": 0.3 * torch.sin(2 * torch.pi * 200 * torch.arange(int(0.5 * sr)) / sr).reshape(1, 1, -1),
             "sample_rate": sr}
    jv = "joyvasa/motion_generator_hubert_chinese.safetensors"
    (emb_j,) = nodes["TalkingHead_AudioToEmbedding"]().run(audio, "JoyVASA (its own HuBERT)", joyvasa_checkpoint=jv)
    # one 4 s window of 100 rows; JoyVASA's own frame count covers the audio plus its 1280/640 zero padding
    assert emb_j.features.shape == (100, 32) and emb_j.num_frames == (8000 + 1280 + 640) // 640
    errors = sub(pack, "core.errors")
    dit = nodes["TalkingHead_MotionDiT"]()
    lps = lp_set(pack)
    with pytest.raises(errors.InputError, match="AudioToEmbedding"):
        dit.run(lps, emb_j, portrait, "ditto/lmdm_v0.4_hubert.safetensors", 2, 2.0, 0, 1.0, 1.0, 1.0, "Neutral")
    motion, fps = dit.run(lps, emb_j, portrait, jv, 2, 2.0, 0, 1.0, 1.0, 1.0, "Neutral")
    assert motion.composed and len(motion) == 13 and fps == 25.0  # ceil(0.5 s * 25) frames
    again, _ = dit.run(lps, emb_j, portrait, jv, 2, 2.0, 0, 1.0, 1.0, 1.0, "Neutral")
    other, _ = dit.run(lps, emb_j, portrait, jv, 2, 2.0, 1, 1.0, 1.0, 1.0, "Neutral")
    assert torch.equal(motion.exp, again.exp) and not torch.equal(motion.exp, other.exp)  # seeded
    # lip_strength scales only the mouth keypoints' motion away from the portrait's own expression
    closed, _ = dit.run(lps, emb_j, portrait, jv, 2, 2.0, 0, 1.0, 1.0, 0.0, "Neutral")
    lips = [6, 12, 14, 17, 19, 20]
    others = [i for i in range(21) if i not in lips]
    assert torch.equal(closed.exp[:, others], motion.exp[:, others])
    assert torch.allclose(closed.exp[:, lips], closed.exp[:1, lips].expand(len(closed), -1, -1))
    (emb_d,) = nodes["TalkingHead_AudioToEmbedding"]().run(audio, "HuBERT-large (Ditto)")
    with pytest.raises(errors.InputError, match="JoyVASA"):
        dit.run(lps, emb_d, portrait, jv, 2, 2.0, 0, 1.0, 1.0, 1.0, "Neutral")
    m_d, _ = dit.run(lps, emb_d, portrait, "ditto/lmdm_v0.4_hubert.safetensors", 3, 2.0, 0, 1.0, 1.0, 1.0, "Happy")
    assert m_d.composed and len(m_d) == 13
