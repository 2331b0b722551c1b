"""Finite-or-refuse at every node boundary: NaN/inf audio, images, speech features, motion and numbers are
refused where they enter a node (naming the node and input, or the file), audio shorter than one video frame is
refused, and a model that makes NaN from finite input is stopped before its frames reach anything (naming the node).

The file-level cases (a NaN float WAV, a WAV or FLAC cut short) are in test_audio.py.
"""
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT, lp_set, sub
from test_classic import classic_models
from test_lp_nodes import models_dir
from test_motion_nodes import speech_inputs, tiny_ditto_models

NAN = float("nan")

# The tiny networks gain nothing from a second thread, and lose a lot when the CPU is shared.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ============================================================================ helpers
def _nan_audio(samples=48000, bad=12, channels=1, sr=16000):
    """An AUDIO dict (as ComfyUI's LoadAudio makes it) with ``bad`` NaN/inf samples in the first channel."""
    w = 0.3 * torch.sin(torch.arange(samples) / 7.0).repeat(1, channels, 1)
    if bad:
        w[0, 0, 1000:1000 + bad - 1] = NAN
        w[0, 0, 5] = float("-inf")
    return {"waveform": w, "sample_rate": sr}


def _nan_image(frames=3, h=16, w=12):
    """An IMAGE batch with one NaN and one inf pixel value, both in its middle frame."""
    x = torch.rand(frames, h, w, 3, generator=torch.Generator().manual_seed(0))
    x[frames // 2, 2, 3, 0] = NAN
    x[frames // 2, 4, 5, 1] = float("inf")
    return x


def _motion(pack, n=6, bad=None):
    Motion = sub(pack, "core.liveportrait.motion").Motion
    k = torch.linspace(0, 1, n)
    m = Motion(exp=0.01 * torch.randn(n, 21, 3, generator=torch.Generator().manual_seed(0)), pitch=3 * k, yaw=-2 * k,
               roll=k, t=torch.zeros(n, 3), scale=torch.ones(n), fps=25.0)
    if bad:
        getattr(m, bad).view(-1)[1] = NAN
    return m


def _embeddings(pack, frames=5, bad=True):
    af = sub(pack, "core.audio_features")
    feats = torch.randn(frames, 8, generator=torch.Generator().manual_seed(0))
    if bad:
        feats[2, 3] = float("inf")
    return af.AudioEmbeddings(features=feats, spec={"encoder": "x"}, fps=25.0)


def _portrait(pack, image=None):
    img = image if image is not None else torch.rand(1, 90, 70, 3, generator=torch.Generator().manual_seed(0))
    return pack.NODE_CLASS_MAPPINGS["TalkingHead_LoadPortrait"]().run("", "center", 256, 1.8, -0.1,
                                                                       image_in=img)["result"][0]


def _files(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _call(cls, **kwargs):
    """Run a node the way ComfyUI and the headless runner do: ``getattr(instance, FUNCTION)(**inputs)``."""
    return getattr(cls(), cls.FUNCTION)(**kwargs)


# ============================================================================ the checks themselves
def test_checks_count_in_slices_and_only_on_failure(pack, monkeypatch):
    checks = sub(pack, "core.checks")
    monkeypatch.setattr(checks, "SLICE", 7)  # many slices even for these small tensors
    x = torch.zeros(5, 6, 4)
    assert checks.all_finite(x) and checks.count_nonfinite(x) == 0 and checks.bad_image(x) is None
    x[0, 0, 0], x[4, 5, 3], x[2, 1, 1] = NAN, float("inf"), float("-inf")
    assert not checks.all_finite(x) and checks.count_nonfinite(x) == 3
    assert checks.count_nonfinite(x.transpose(0, 2)) == 3  # not contiguous: sliced along its first dimension
    assert checks.count_nonfinite(x.numpy()) == 3  # numpy arrays too
    assert checks.bad_image(x[..., None]) == "3 NaN/inf values in 3 of 5 frames"  # an IMAGE [B,H,W,C]
    assert checks.all_finite(torch.arange(10)) and checks.all_finite(np.arange(10))  # integers are always finite
    # the fast path is a sum: finite values that overflow it are still finite (the exact check decides)
    assert checks.all_finite(torch.full((10,), 3e38)) and checks.bad_image(torch.full((2, 2, 2, 3), 3e38)) is None
    assert checks.all_finite(torch.full((100, 100), 60000.0, dtype=torch.float16))
    assert checks.count_nonfinite(torch.tensor([3e38, 3e38, NAN])) == 1
    assert checks.bad_audio({"waveform": x[:1, :1], "sample_rate": 16000}) == "1 NaN/inf sample of 4"
    assert checks.bad_number(NAN) == "the value nan" and checks.bad_number(25.0) is None
    assert checks.bad_number(float("inf")) == "the value inf"
    m = _motion(pack, bad="yaw")
    m.exp[3, 4] = NAN
    assert checks.bad_motion(m) == "4 NaN/inf values (exp: 3, yaw: 1)"
    assert checks.bad_motion(_motion(pack)) is None
    assert checks.bad_embeddings(_embeddings(pack)) == "1 NaN/inf value (features: 1)"
    assert checks.bad_portrait(SimpleNamespace(crop=torch.zeros(1, 4, 4, 3), full=torch.full((1, 4, 4, 3), NAN))) \
        == "48 NaN/inf values (full: 48)"


def test_non_finite_output_error_is_a_pack_error(pack):
    checks, errors = sub(pack, "core.checks"), sub(pack, "core.errors")
    with pytest.raises(errors.TalkingHeadError, match="X's frames output has 2 NaN/inf values in 1 of 3 frames "
                                                      "although the node's inputs were finite") as err:
        checks.require_finite_output("image", _nan_image(), "X's frames output")
    assert isinstance(err.value, checks.NonFiniteOutputError) and not isinstance(err.value, errors.InputError)
    checks.require_finite_output("image", torch.rand(2, 4, 4, 3), "X's frames output")


# ============================================================================ every node input
def _bad_values(pack):
    """socket type -> (a non-finite value of it, the start of what the message must say about it)."""
    return {
        "AUDIO": (_nan_audio(), "12 NaN/inf samples of 48000"),
        "IMAGE": (_nan_image(), "2 NaN/inf values in 1 of 3 frames"),
        "FLOAT": (NAN, "the value nan"),
        "TALKINGHEAD_MOTION": (_motion(pack, bad="pitch"), "1 NaN/inf value (pitch: 1)"),
        "TALKINGHEAD_AUDIO_EMBEDS": (_embeddings(pack), "1 NaN/inf value (features: 1)"),
        "TALKINGHEAD_PORTRAIT": (SimpleNamespace(crop=_nan_image(1), full=torch.rand(1, 8, 8, 3)),
                                 "2 NaN/inf values (crop: 2)"),
    }


def test_every_node_refuses_non_finite_inputs_naming_node_and_input(pack, monkeypatch):
    """Each AUDIO, IMAGE, FLOAT, portrait, motion and embeddings input of every node, one at a time (the other
    inputs left empty): refused as it enters, before any model loads, with the node and the input named."""
    monkeypatch.setenv("TALKINGHEAD_OFFLINE", "1")  # nothing may load or download: the check comes first
    errors = sub(pack, "core.errors")
    bad = _bad_values(pack)
    seen = set()
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        spec = cls.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for name, decl in declared.items():
            if not isinstance(decl[0], str) or decl[0] not in bad:
                continue
            value, what = bad[decl[0]]
            kwargs = {n: None for n in spec.get("required", {})}
            kwargs[name] = value
            with pytest.raises(errors.InputError) as err:
                _call(cls, **kwargs)
            assert f"{cls.DISPLAY_NAME}'s {name} input has {what}" in str(err.value), (cls.DISPLAY_NAME, name)
            seen.add(f"{cls.DISPLAY_NAME}.{name}")
    assert {"SDABase.audio", "AudioToEmbedding.audio", "ProceduralMotion.audio", "MuxVideo.audio",
            "LivePortraitRenderVideo.audio", "JoinSegments.audio_1", "JoinSegments.audio_4"} <= seen
    assert {"LoadPortrait.image_in", "FOMAnimate.portrait", "FOMAnimate.driving", "SDABase.face", "MuxVideo.images",
            "ResizePad256.images", "LivePortraitExtractMotion.driving", "JoinSegments.images_2"} <= seen
    assert {"MotionDiT.embeddings", "MotionDiT.portrait", "LivePortraitRender.motion", "LivePortraitRender.portrait",
            "LivePortraitRenderVideo.motion", "SaveMotion.motion", "ProceduralMotion.portrait"} <= seen
    assert {"MuxVideo.fps", "ProceduralMotion.fps", "LivePortraitRender.multiplier"} <= seen


def test_nan_audio_is_refused_by_the_audio_nodes_before_a_model_loads(pack, tmp_path, monkeypatch):
    """The issue's cases: AudioToEmbedding checked silence but not NaN; MuxVideo wrote a full-scale click. Both
    now refuse, say how many samples are bad and what to do, and nothing is loaded or written."""
    af = sub(pack, "core.audio_features")
    errors = sub(pack, "core.errors")
    monkeypatch.setattr(af, "get_encoder", lambda *a, **k: pytest.fail("an encoder was loaded for NaN audio"))
    nodes = pack.NODE_CLASS_MAPPINGS
    with pytest.raises(errors.InputError) as err:
        nodes["TalkingHead_AudioToEmbedding"]().run(_nan_audio(), "HuBERT-large (Ditto)")
    assert str(err.value).startswith("AudioToEmbedding's audio input has 12 NaN/inf samples of 48000: the audio is "
                                     "damaged. Re-export it")
    with pytest.raises(errors.InputError, match="MuxVideo's audio input has 12 NaN/inf samples of 96000"):
        nodes["TalkingHead_MuxVideo"]().run(torch.rand(4, 16, 16, 3), 25.0, "talk", audio=_nan_audio(channels=2))
    with pytest.raises(errors.InputError, match=r"MuxVideo's images input has 2 NaN/inf values in 1 of 3 frames"):
        nodes["TalkingHead_MuxVideo"]().run(_nan_image(), 25.0, "talk")
    assert _files(tmp_path / "output") == []


def test_audio_shorter_than_one_frame_is_refused_by_the_nodes_that_make_frames(pack, tmp_path, monkeypatch):
    """A 1-sample file gave a 0.04 s video with no warning: AudioToEmbedding, ProceduralMotion and SDABase refuse
    it, saying how long it is and the minimum."""
    classic_models(tmp_path / "models")
    af = sub(pack, "core.audio_features")
    errors = sub(pack, "core.errors")
    monkeypatch.setattr(af, "get_encoder", lambda *a, **k: pytest.fail("an encoder was loaded for 1 sample"))
    nodes = pack.NODE_CLASS_MAPPINGS
    one = {"waveform": torch.full((1, 1, 1), 0.5), "sample_rate": 16000}
    minimum = r"is only 0\.0001 s long \(1 sample at 16000 Hz\), shorter than one video frame at 25 fps \(0\.040 s\)"
    with pytest.raises(errors.InputError, match="AudioToEmbedding's audio input " + minimum):
        nodes["TalkingHead_AudioToEmbedding"]().run(one, "HuBERT-large (Ditto)")
    with pytest.raises(errors.InputError, match="ProceduralMotion's audio input " + minimum):
        nodes["TalkingHead_ProceduralMotion"]().run(None, None, one, 25.0, 0, 1.0, 1.0, True)  # before the portrait is read
    face = torch.rand(1, 40, 30, 3)
    with pytest.raises(errors.InputError, match="SDABase's audio input " + minimum):
        nodes["TalkingHead_SDABase"]().run(face, one, "already aligned", 0, "tiny-grid.dat")
    # one frame's worth (0.04 s) is enough: one frame
    frame = {"waveform": 0.3 * torch.randn(1, 1, 640), "sample_rate": 16000}
    frames, _, _, _ = nodes["TalkingHead_SDABase"]().run(face, frame, "already aligned", 0, "tiny-grid.dat")
    assert frames.shape[0] == 1
    # the still-face workflow muxes the speech straight away: MuxVideo refuses it too, and writes nothing
    with pytest.raises(errors.InputError, match="MuxVideo's audio input " + minimum):
        nodes["TalkingHead_MuxVideo"]().run(torch.rand(1, 32, 32, 3), 25.0, "one", audio=one, extend_to_audio=True)
    assert _files(tmp_path / "output") == []
    nodes["TalkingHead_MuxVideo"]().run(torch.rand(1, 32, 32, 3), 25.0, "one", audio=frame, extend_to_audio=True)
    assert len(_files(tmp_path / "output")) == 1


def test_nan_image_refused_by_load_portrait(pack):
    errors = sub(pack, "core.errors")
    img = _nan_image(1, 90, 70)
    with pytest.raises(errors.InputError) as err:
        _portrait(pack, img)
    assert str(err.value).startswith("LoadPortrait's image_in input has 2 NaN/inf values in 1 of 1 frames: the "
                                     "picture is not valid")
    img[0, 2, 3, 0] = img[0, 4, 5, 1] = 0.5  # the same picture made finite loads
    assert _portrait(pack, img).full.shape == (1, 90, 70, 3)


def test_nan_motion_file_refused_by_load_motion(pack, tmp_path):
    (tmp_path / "input").mkdir()
    _motion(pack, bad="t").save(tmp_path / "input" / "nan.safetensors")
    _motion(pack).save(tmp_path / "input" / "fine.safetensors")
    loader = pack.NODE_CLASS_MAPPINGS["TalkingHead_LoadMotion"]()
    errors = sub(pack, "core.errors")
    with pytest.raises(errors.InputError, match=r"motion file 'nan.safetensors' has 1 NaN/inf value \(t: 1\)"):
        loader.run("nan.safetensors")
    motion, fps = loader.run("fine.safetensors")
    assert len(motion) == 6 and fps == 25.0


def test_headless_load_video_refuses_a_nan_sound_track_instead_of_dropping_it(pack, tmp_path):
    """The headless LoadVideo treats a video without sound as "no audio"; a sound track with NaN samples is an error
    naming the file, as it would be at the next node inside ComfyUI, not a silent video."""
    video = sub(pack, "core.video")
    (tmp_path / "input").mkdir()
    _nan_wav(tmp_path / "nan.wav", samples=16000)
    for name, audio in (("nan.mkv", ["-i", str(tmp_path / "nan.wav"), "-c:a", "copy"]), ("mute.mkv", [])):
        subprocess.run([video.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=32x32:r=25:d=0.4",
                        *audio, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(tmp_path / "input" / name)], check=True)
    load_video = sub(pack, "headless.builtins").BUILTIN_NODES["LoadVideo"]()
    errors = sub(pack, "core.errors")
    with pytest.raises(errors.InputError, match="audio file 'nan.mkv' has 12 NaN/inf samples of 16000"):
        load_video.execute("nan.mkv")
    (mute,) = load_video.execute("mute.mkv")
    assert mute.get_components()["audio"] is None and mute.get_components()["images"].shape[0] == 10


def test_motion_dit_refuses_nan_embeddings_before_loading(pack, monkeypatch):
    dit = sub(pack, "core.motion.dit")
    errors = sub(pack, "core.errors")
    monkeypatch.setattr(dit, "generate_motion", lambda *a, **k: pytest.fail("MotionDiT ran on NaN features"))
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_MotionDiT"]()
    with pytest.raises(errors.InputError, match=r"MotionDiT's embeddings input has 1 NaN/inf value \(features: 1\)"):
        node.run(None, _embeddings(pack), _portrait(pack), "ditto/x.safetensors", 2, 2.0, 0, 1.0, 1.0, 1.0, "Neutral")


# ============================================================================ outputs
def test_model_output_with_nan_is_stopped_naming_the_node(pack, monkeypatch):
    """FOMAnimate, MotionDiT and AudioToEmbedding from finite inputs, their model made to overflow: the error names
    the node and the output instead of handing NaN on (black frames, or a crash in a later node)."""
    checks = sub(pack, "core.checks")
    nodes = pack.NODE_CLASS_MAPPINGS
    fom, frame_streams = sub(pack, "core.fom"), sub(pack, "core.frames")
    monkeypatch.setattr(fom, "get_fom", lambda *a, **k: SimpleNamespace(input_size=8))

    def animated(make):  # core.fom.frame_stream made to give `make(count)` as the animation
        return lambda model, portrait, driving, **k: frame_streams.FrameStream.from_images(make(len(driving)))

    monkeypatch.setattr(fom, "frame_stream", animated(_nan_image))
    with pytest.raises(checks.NonFiniteOutputError, match=r"FOMAnimate's frames output has 2 NaN/inf values in 1 "
                                                          r"of 3 frames although the node's inputs were finite"):
        nodes["TalkingHead_FOMAnimate"]().run(torch.rand(1, 32, 32, 3), torch.rand(3, 32, 32, 3), "x", True, True,
                                              False, 8, "fp32")
    # only the frame_stream output connected: no IMAGE is made, and the stream refuses the batch as it is made
    graph = {"5": {"class_type": "TalkingHead_FOMAnimate", "inputs": {}},
             "6": {"class_type": "TalkingHead_MuxVideo", "inputs": {"frames": ["5", 1]}}}
    frames, stream = nodes["TalkingHead_FOMAnimate"]().run(torch.rand(1, 32, 32, 3), torch.rand(3, 32, 32, 3), "x",
                                                           True, True, False, 8, "fp32", prompt=graph, unique_id="5")
    assert frames is None and len(stream) == 3
    with pytest.raises(checks.NonFiniteOutputError, match=r"FOMAnimate's frame stream has 2 NaN/inf values in 1 of 3 "
                                                          r"frames"):
        list(stream)
    monkeypatch.setattr(fom, "frame_stream", animated(lambda n: torch.rand(n, 8, 8, 3)))
    frames, stream = nodes["TalkingHead_FOMAnimate"]().run(torch.rand(1, 32, 32, 3), torch.rand(3, 32, 32, 3), "x",
                                                           True, True, False, 8, "fp32")
    assert frames.shape[0] == 3 and len(stream) == 3
    dit = sub(pack, "core.motion.dit")
    monkeypatch.setattr(dit, "generate_motion", lambda *a, **k: _motion(pack, bad="exp"))
    no_set = SimpleNamespace(source=lambda portrait: None)  # a LivePortrait set not needed here
    with pytest.raises(checks.NonFiniteOutputError, match=r"MotionDiT's motion output has 1 NaN/inf value \(exp: 1\)"):
        nodes["TalkingHead_MotionDiT"]().run(no_set, _embeddings(pack, bad=False), None, "x", 2, 2.0, 0, 1.0, 1.0,
                                             1.0, "Neutral")
    af = sub(pack, "core.audio_features")
    monkeypatch.setattr(af, "compute_embeddings", lambda *a, **k: _embeddings(pack))
    with pytest.raises(checks.NonFiniteOutputError, match="AudioToEmbedding's embeddings output has 1 NaN/inf"):
        nodes["TalkingHead_AudioToEmbedding"]().run(_nan_audio(bad=0), "HuBERT-large (Ditto)")


def test_liveportrait_renderers_never_hand_on_nan_frames(pack, tmp_path, monkeypatch):
    """LivePortraitRender (IMAGE outputs, and its frame stream into MuxVideo) and LivePortraitRenderVideo (the same
    stream written by MuxVideo's code) on the tiny weights, their renderer made to produce one NaN pixel in the
    second batch: refused, naming the node, and the video writer leaves no file (not even a partial one)."""
    models_dir(tmp_path / "models")
    render = sub(pack, "core.liveportrait.render")
    checks = sub(pack, "core.checks")
    real = render.render_pasted

    def overflowing(*args, **kwargs):
        for i, (faces, frames) in enumerate(real(*args, **kwargs)):
            if i == 1:
                faces = faces.clone()
                faces[0, 5, 5, 0] = NAN
                frames = None if frames is None else frames.clone()
                if frames is not None:
                    frames[0, 5, 5, 0] = NAN
            yield faces, frames

    monkeypatch.setattr(sub(pack, "core.liveportrait.pipeline"), "render_pasted", overflowing)  # both renderers
    monkeypatch.setattr(render, "render_pasted", overflowing)  # render_to_video (library use)
    portrait, motion, lps = _portrait(pack), _motion(pack), lp_set(pack)
    nodes = pack.NODE_CLASS_MAPPINGS
    with pytest.raises(checks.NonFiniteOutputError, match="LivePortraitRender's frames output has 1 NaN/inf value in "
                                                          "1 of 6 frames"):
        nodes["TalkingHead_LivePortraitRender"]().run(lps, portrait, motion, True, "all", True, 1.0, 2)
    # only the stream connected (as in the shipped workflows): each batch is checked as MuxVideo pulls it
    graph = {"7": {"class_type": "TalkingHead_LivePortraitRender", "inputs": {}},
             "8": {"class_type": "TalkingHead_MuxVideo", "inputs": {"frames": ["7", 2]}}}
    none, _, stream = nodes["TalkingHead_LivePortraitRender"]().run(lps, portrait, motion, True, "all", True, 1.0, 2,
                                                                    prompt=graph, unique_id="7")
    assert none is None
    with pytest.raises(checks.NonFiniteOutputError, match="a batch of LivePortraitRender's frame_stream output has "
                                                          "1 NaN/inf value in 1 of 2 frames"):
        nodes["TalkingHead_MuxVideo"]().run(fps=25.0, filename_prefix="lp/stream", frames=stream, preset="ultrafast")
    with pytest.raises(checks.NonFiniteOutputError, match="a batch of LivePortraitRenderVideo's frames has "
                                                          "1 NaN/inf value in 1 of 2 frames"):
        nodes["TalkingHead_LivePortraitRenderVideo"]().run(lps, portrait, motion, True, "all", True, 1.0, 2, 25.0,
                                                           "lp/video", preset="ultrafast")
    assert _files(tmp_path / "output") == []


# ============================================================================ end to end
def _nan_wav(path: Path, samples=9600, sr=16000, bad=12):
    """A 32-bit float WAV (the common format that can hold NaN) of a tone with ``bad`` NaN samples."""
    x = (0.3 * np.sin(np.arange(samples) / 7.0)).astype("<f4")
    x[100:100 + bad] = np.nan
    data = x.tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sr, sr * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _run(tmp_path, workflow, *sets):
    args = [sys.executable, str(ROOT / "run.py"), str(ROOT / "workflows" / workflow), "--input-dir",
            str(tmp_path / "in"), "--models-dir", str(tmp_path / "models"), "--offline", "--quiet"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)


CLASSIC = ("classic_sda_fom.json", classic_models,
           ["portrait.detector=center", "sda.face_alignment=already aligned", "sda.checkpoint=tiny-grid.dat",
            "animate.checkpoint=tiny-cpk.pth.tar"])
DITTO = ("liveportrait_ditto.json", tiny_ditto_models, ["portrait.detector=center", "motion.steps=4",
                                                        "motion.checkpoint=ditto/lmdm_v0.4_hubert.safetensors"])


@pytest.mark.parametrize("workflow,models,sets", [CLASSIC, DITTO], ids=["classic", "ditto"])
def test_nan_speech_file_fails_the_run_and_writes_no_video(tmp_path, workflow, models, sets):
    """The issue's first symptom: Ditto exited 0 with a black square over the face, the classic pipeline wrote black
    frames or failed in FOMAnimate. Now the run fails (exit code 1) at the audio, naming the file and the count."""
    speech_inputs(tmp_path)
    _nan_wav(tmp_path / "in" / "speech.wav")
    models(tmp_path / "models")
    res = _run(tmp_path, workflow, *sets)
    assert res.returncode != 0
    assert "'speech.wav' has 12 NaN/inf samples of 9600" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert "FOMAnimate" not in res.stderr and "Points cannot contain NaN" not in res.stderr
    assert _files(tmp_path / "output") == []


def test_one_sample_speech_file_fails_the_classic_run(tmp_path):
    speech_inputs(tmp_path)
    _nan_wav(tmp_path / "in" / "speech.wav", samples=1, bad=0)
    classic_models(tmp_path / "models")
    res = _run(tmp_path, CLASSIC[0], *CLASSIC[2])
    assert res.returncode != 0
    assert "SDABase's audio input is only 0.0001 s long (1 sample at 16000 Hz)" in res.stderr, res.stderr
    assert _files(tmp_path / "output") == []


def test_cut_speech_file_makes_the_video_and_says_how_much_was_read(tmp_path):
    """The README's still-portrait workflow (no model weights) with a WAV cut at 50 %: the video of the part that is
    there is made, and the run says the file is cut short and how much was read."""
    (tmp_path / "in").mkdir()
    shutil.copy(ROOT / "example_inputs" / "portrait.png", tmp_path / "in" / "portrait.png")
    from test_motion_nodes import write_speech_clip

    write_speech_clip(tmp_path / "in" / "whole.wav", 0.6)
    data = (tmp_path / "in" / "whole.wav").read_bytes()
    (tmp_path / "in" / "speech.wav").write_bytes(data[:len(data) - 4800 * 2])  # 16-bit: 0.3 s of 0.6 s missing
    res = _run(tmp_path, "portrait_still_video.json")
    assert res.returncode == 0, res.stderr
    assert "'speech.wav' is cut short: read 0.30 s of the 0.60 s its header declares (50 %)" in res.stderr
    from core import video

    mp4 = Path(res.stdout.strip().splitlines()[-1])
    assert video.probe(mp4)["video"]["frames"] == math.ceil(0.3 * 25)


# ============================================================================ inside ComfyUI
def test_nan_audio_from_comfyuis_load_audio_is_refused(comfy_pack):
    """Inside ComfyUI the AUDIO usually comes from ComfyUI's own LoadAudio, which checks nothing: the node's entry
    check is what stops it. Called the way ComfyUI's executor calls a node."""
    errors = sub(comfy_pack, "core.errors")
    cls = comfy_pack.NODE_CLASS_MAPPINGS["TalkingHead_AudioToEmbedding"]
    with pytest.raises(errors.InputError, match="AudioToEmbedding's audio input has 12 NaN/inf samples of 96000"):
        _call(cls, audio=_nan_audio(channels=2, sr=48000), encoder="HuBERT-large (Ditto)")
    cls = comfy_pack.NODE_CLASS_MAPPINGS["TalkingHead_MuxVideo"]
    with pytest.raises(errors.InputError, match="MuxVideo's images input has 2 NaN/inf values"):
        _call(cls, images=_nan_image(), fps=25.0, filename_prefix="t")
    assert _files(Path(comfy_pack.folder_paths.get_output_directory())) == []
