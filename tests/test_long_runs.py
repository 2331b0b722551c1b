"""Long runs on tiny weights: LivePortraitRenderVideo and LivePortraitRender's frame stream into MuxVideo (render
straight into an mp4, memory bounded by a few batches) and many prompts queued back to back through the headless
runner (models loaded once, memory flat)."""
import ctypes
import ctypes.util
import gc
import importlib
import os
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, lp_set, sub
from test_lp_nodes import models_dir
from test_motion_nodes import write_speech_clip

MB = 1 << 20


# Torch on one thread: on a shared 2-core machine two OpenMP threads wait on each other whenever another process
# takes a core (several times slower); one thread keeps these runs short and steady.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None
LINUX = pytest.mark.skipif(LIBC is None, reason="reads /proc/self/statm")


def rss() -> int:
    """Resident memory of this process in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_rss() -> int:
    """Resident memory after the C allocator handed its free pages back: what is really held. (Untrimmed, glibc
    keeps freed batches' memory around and the figure wobbles by a few batches' size from one moment to the
    next.)"""
    if hasattr(LIBC, "malloc_trim"):  # glibc
        LIBC.malloc_trim(0)
    return rss()


def speech(seconds: float, sr: int = 16000) -> dict:
    """A ComfyUI AUDIO: a tone switched on and off a few times a second (the mouth opens and closes)."""
    t = torch.arange(int(seconds * sr)) / sr
    wave = 0.4 * torch.sin(2 * torch.pi * 220 * t) * (torch.sin(2 * torch.pi * 1.7 * t) > 0)
    return {"waveform": wave.reshape(1, 1, -1), "sample_rate": sr}


def load_portrait(nodes, h: int, w: int):
    img = Image.open(ROOT / "example_inputs" / "portrait.png").convert("RGB").resize((w, h), Image.BICUBIC)
    image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
    return nodes["TalkingHead_LoadPortrait"]().run("", "center", 256, 1.8, -0.1, image_in=image)["result"][0]


def procedural_setup(pack, tmp_path, seconds: float, h: int = 150, w: int = 120):
    """The tiny LivePortrait set in ``tmp_path/models``, a ``h`` x ``w`` portrait and ``seconds`` of speech turned
    into ProceduralMotion: ``(nodes, set, portrait, audio, motion, fps)``."""
    models_dir(tmp_path / "models")
    nodes = pack.NODE_CLASS_MAPPINGS
    portrait = load_portrait(nodes, h, w)
    lps = lp_set(pack)
    audio = speech(seconds)
    motion, fps = nodes["TalkingHead_ProceduralMotion"]().run(lps, portrait, audio, 25.0, 0, 1.0, 1.0, True)
    return nodes, lps, portrait, audio, motion, fps


def render_args(lps, portrait, motion, batch_size=4):
    """LivePortraitRender's inputs (``lps``: the LivePortrait set as LoadLivePortrait makes it)."""
    return dict(liveportrait=lps, portrait=portrait, motion=motion, relative=True, region="all",
                stitching=True, multiplier=1.0, batch_size=batch_size)


def frames_of(path) -> np.ndarray:
    from core.video import read_frames

    return np.stack(list(read_frames(path)))


# ----------------------------------------------------------------------------- LivePortraitRenderVideo
def test_render_video_equals_render_then_mux(pack, tmp_path):
    """The node's mp4 is LivePortraitRender + MuxVideo's: same streams, frame count, size and audio length, and the
    same decoded frames (up to codec noise); the same preview entry; without paste-back, a video of the crops."""
    nodes, lps, portrait, audio, motion, fps = procedural_setup(pack, tmp_path, 1.2)
    assert len(motion) == 30
    res = nodes["TalkingHead_LivePortraitRenderVideo"]().run(**render_args(lps, portrait, motion), fps=fps,
                                                             filename_prefix="long/direct", audio=audio,
                                                             preset="veryfast")
    direct = res["result"][0]
    assert res["ui"] == {"images": [{"filename": "direct_00001_.mp4", "subfolder": "long", "type": "output"}],
                         "animated": (True,)}
    frames, _, _ = nodes["TalkingHead_LivePortraitRender"]().run(**render_args(lps, portrait, motion))
    muxed = nodes["TalkingHead_MuxVideo"]().run(frames, fps, "long/muxed", audio=audio, preset="veryfast")
    muxed = muxed["result"][0]
    assert muxed != direct and direct == str(tmp_path / "output" / "long" / "direct_00001_.mp4")
    video = sub(pack, "core.video")
    a, b = video.probe(direct), video.probe(muxed)
    assert a["video"] == b["video"] and a["audio"] == b["audio"]
    assert (a["video"]["width"], a["video"]["height"], a["video"]["frames"]) == (120, 150, 30)
    assert video.audio_duration(direct) == pytest.approx(video.audio_duration(muxed), abs=1e-3)
    assert video.audio_duration(direct) == pytest.approx(1.2, abs=2e-3)
    fa, fb = frames_of(direct).astype(np.int16), frames_of(muxed).astype(np.int16)
    assert fa.shape == fb.shape == (30, 150, 120, 3)
    assert np.abs(fa - fb).mean() < 1.0 and np.abs(fa - fb).max() <= 24  # the same frames, up to codec noise
    # and both show the rendered frames (up to the encoder's loss: 4:2:0 chroma on a small, colourful picture)
    assert np.abs(fa - (frames.numpy() * 255).round()).mean() < 12.0
    # paste_back off: a video of the face crops at the model's output size
    crops = nodes["TalkingHead_LivePortraitRenderVideo"]().run(**render_args(lps, portrait, motion), fps=fps,
                                                               filename_prefix="long/crops", paste_back=False,
                                                               preset="ultrafast", save_output=False)
    assert crops["ui"]["images"][0]["type"] == "temp"
    info = video.probe(crops["result"][0])
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"], info["audio"]) == \
        (128, 128, 30, None)


def test_render_video_cancel_leaves_no_file(pack, tmp_path, monkeypatch):
    """A cancel after some batches went into ffmpeg leaves neither the mp4 nor its temporary file."""
    nodes, lps, portrait, audio, motion, fps = procedural_setup(pack, tmp_path, 3.0)
    host, errors = sub(pack, "core.host").HOST, sub(pack, "core.errors")
    video = sub(pack, "core.video")
    writes = []
    original = video.VideoWriter.write
    monkeypatch.setattr(video.VideoWriter, "write", lambda self, f: (writes.append(len(f)), original(self, f)))
    checks_after_write = []

    def interrupt():  # the user cancels a few batches after the first frames reached ffmpeg
        if writes:
            checks_after_write.append(1)
            if len(checks_after_write) == 4:
                raise errors.Cancelled("cancelled by the user")

    monkeypatch.setattr(host, "check_interrupt", interrupt)
    with pytest.raises(errors.Cancelled):
        nodes["TalkingHead_LivePortraitRenderVideo"]().run(**render_args(lps, portrait, motion, batch_size=2), fps=fps,
                                                           filename_prefix="long/cancel", audio=audio,
                                                           preset="ultrafast")
    assert writes and sum(writes) < len(motion) == 75  # frames had reached ffmpeg, not all
    assert (tmp_path / "output" / "long").is_dir()
    left = [p for d in ("output", "temp") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert left == []  # no mp4, no .partial


def flat_memory_run(pack, tmp_path, monkeypatch, make_video):
    """600 frames of 320x256 rendered and written by ``make_video(nodes, lps, portrait, audio, motion, fps)`` (which
    returns the node's result): the memory the run holds stays a few writer chunks above what was there before it
    ran (an IMAGE batch of the video would be 590 MB), and neither the resident nor the Python-traced memory grows
    from the 150th frame to the 600th. The networks' forward pass is swapped for a cheap stand-in with the same
    output (their cost is per batch and they keep nothing; the real ones run in the tests above): the motion, the
    keypoints, the paste-back into the full portrait, the stream, the uint8 conversion and the pipe into ffmpeg are
    the nodes' own."""
    h, w, n = 320, 256, 600
    nodes, lps, portrait, audio, motion, fps = procedural_setup(pack, tmp_path, n / 25, h, w)
    assert len(motion) == n
    render = sub(pack, "core.liveportrait.render")

    def stand_in(models, feature_3d, x_s, x_d):
        size = int(models.config["output_size"])
        shade = torch.sigmoid(x_d.reshape(x_d.shape[0], -1)[:, :3] * 20).float()
        return {"out": shade[:, :, None, None].expand(-1, -1, size, size).contiguous(), "occlusion_map": None}

    monkeypatch.setattr(render, "warp_decode", stand_in)
    video = sub(pack, "core.video")
    trace = []  # (frames written, held memory, python-traced bytes) after every write into ffmpeg
    original = video.VideoWriter.write

    def write(self, frames):
        original(self, frames)
        trace.append((self.frames_written, live_rss(), tracemalloc.get_traced_memory()[0]))

    monkeypatch.setattr(video.VideoWriter, "write", write)
    gc.collect()
    before = live_rss()
    tracemalloc.start()
    try:
        res = make_video(nodes, lps, portrait, audio, motion, fps)
    finally:
        tracemalloc.stop()
    info = video.probe(res["result"][0])
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (w, h, n)
    assert video.audio_duration(res["result"][0]) == pytest.approx(n / 25, abs=2e-3)
    chunk = 32  # MuxVideo pulls the stream 32 frames at a time (core.video.write_video)
    assert [t[0] for t in trace] == list(range(chunk, n, chunk)) + [n]
    frames_mb = n * h * w * 3 * 4 / MB  # the video as an IMAGE batch (float32): 590 MB
    chunk_mb = chunk * h * w * 3 * 4 / MB  # one chunk as float32: 31 MB
    held = [(f, (m - before) / MB) for f, m, _ in trace]
    assert max(m for _, m in held) < 3 * chunk_mb < frames_mb / 6, held  # a few chunks' worth, not the video
    at_150 = next(i for i, t in enumerate(trace) if t[0] >= 150)
    growth = max(t[1] for t in trace[at_150:]) - trace[at_150][1]
    py_growth = max(t[2] for t in trace[at_150:]) - trace[at_150][2]
    assert growth < 8 * MB, held  # keeping the frames from 150 on would add 440 MB
    assert py_growth < 1 * MB, [(f, p // 1024) for f, _, p in trace]


@LINUX
def test_render_video_memory_does_not_grow_with_length(pack, tmp_path, monkeypatch):
    """LivePortraitRenderVideo: 600 frames with flat memory (:func:`flat_memory_run`)."""
    def make_video(nodes, lps, portrait, audio, motion, fps):
        return nodes["TalkingHead_LivePortraitRenderVideo"]().run(**render_args(lps, portrait, motion, batch_size=4),
                                                                  fps=fps, filename_prefix="long/memory", audio=audio,
                                                                  preset="ultrafast")
    flat_memory_run(pack, tmp_path, monkeypatch, make_video)


@LINUX
def test_frame_stream_into_mux_memory_does_not_grow_with_length(pack, tmp_path, monkeypatch):
    """LivePortraitRender's frame_stream -> MuxVideo's frames (as the shipped workflows connect them, IMAGE outputs
    not connected): 600 frames with flat memory (:func:`flat_memory_run`); the renderer itself renders nothing."""
    graph = {"4": {"class_type": "TalkingHead_LivePortraitRender", "inputs": {}},
             "5": {"class_type": "TalkingHead_MuxVideo", "inputs": {"frames": ["4", 2]}}}

    def make_video(nodes, lps, portrait, audio, motion, fps):
        frames, faces, stream = nodes["TalkingHead_LivePortraitRender"]().run(
            **render_args(lps, portrait, motion, batch_size=4), keep_model_loaded=False, prompt=graph, unique_id="4")
        assert frames is None and faces is None and len(stream) == len(motion)
        return nodes["TalkingHead_MuxVideo"]().run(fps=fps, filename_prefix="long/stream", frames=stream, audio=audio,
                                                   preset="ultrafast")
    flat_memory_run(pack, tmp_path, monkeypatch, make_video)
    assert sub(pack, "core.cache").CACHE.entries("liveportrait") == []  # keep_model_loaded off: gone after the pull


# ----------------------------------------------------------------------------- many prompts, one process
@pytest.fixture
def cli():
    """The headless runner in this process, loaded the way run.py loads it; the host settings a run changes are put
    back afterwards."""
    sys.path.insert(0, str(ROOT))
    import run

    name = run.load_pack().__name__
    yield importlib.import_module(f"{name}.headless.cli"), run.registry, name
    importlib.import_module(f"{name}.core.host").HOST.reset()


@LINUX
def test_twenty_prompts_back_to_back(cli, tmp_path, monkeypatch, capsys):
    """20 prompts (the procedural workflow, alternately through LivePortraitRender + MuxVideo and through
    LivePortraitRenderVideo) in one process: the LivePortrait networks load once and the same cached objects serve
    every prompt; resident memory stays flat after the first few prompts."""
    cli_mod, registry, name = cli
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TALKINGHEAD_OFFLINE", "1")
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(ROOT / "example_inputs" / "portrait.png").convert("RGB").resize((192, 240)).save(inputs / "portrait.png")
    write_speech_clip(inputs / "speech.wav", 0.2)
    models_dir(tmp_path / "models")
    cache = importlib.import_module(f"{name}.core.cache").CACHE
    loads = {}
    get = cache.get

    def counting_get(family, key, loader, *args, **kwargs):
        def counted():
            loads[family] = loads.get(family, 0) + 1
            return loader()
        return get(family, key, counted, *args, **kwargs)

    monkeypatch.setattr(cache, "get", counting_get)
    workflows = ["liveportrait_procedural.api.json", "liveportrait_procedural_long.api.json"]
    memory, models = [], []
    try:
        for i in range(20):
            argv = [str(ROOT / "workflows" / "api" / workflows[i % 2]), "--input-dir", str(inputs),
                    "--models-dir", str(tmp_path / "models"), "--offline", "--quiet",
                    "--set", "portrait.detector=center", "--set", "4.batch_size=8", "--set", f"motion.seed={i}"]
            argv += ["--set", "video.preset=ultrafast"]  # MuxVideo or LivePortraitRenderVideo
            assert cli_mod.main(argv, registry) == 0, capsys.readouterr().err
            entries = [e for e in cache.entries("liveportrait") if str(tmp_path) in str(e.key)]
            assert len(entries) == 1
            models.append(entries[0].model)
            gc.collect()
            memory.append(live_rss())
            if i == 0:
                first = dict(loads)
        out = capsys.readouterr().out.split()
        assert len(out) == 20 and len(set(out)) == 20 and all(p.endswith(".mp4") for p in out)
        assert loads == first and first["liveportrait"] == 1, loads  # loaded by the first prompt, reused after
        assert all(m is models[0] for m in models)
        growth = max(memory[4:]) - memory[4]
        assert growth < 8 * MB, [m // MB for m in memory]  # keeping each prompt's results would add 4 MB a prompt
        from core import video

        for path in out[:2]:
            info = video.probe(path)
            assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (192, 240, 5)
    finally:
        for entry in cache.entries("liveportrait"):
            if str(tmp_path) in str(entry.key):
                cache.unload("liveportrait", key=entry.key[1])
