"""A video as a frame stream: core.video.video_stream / open_video, the VideoFrames node, and
LivePortraitExtractMotion reading a stream (the face found in a few frames, the video cut batch by batch)."""
import gc
import io
import os
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, lp_set, sub
from procs import running_processes

DRIVING = FIXTURES / "driving_short.mp4"


def ffmpeg_children():
    """This process's child processes that are ffmpeg (a decoder left running would be one)."""
    return [p.pid for p in running_processes() if p.ppid == os.getpid() and "ffmpeg" in p.name]


def test_video_stream_gives_load_videos_frames_on_every_pull(pack):
    video = sub(pack, "core.video")
    stream = video.video_stream(DRIVING, batch_size=4)
    frames, fps = video.load_video(DRIVING)
    assert (stream.count, stream.height, stream.width, stream.fps) == (*frames.shape[:3], fps) == (6, 256, 256, 25)
    assert [b.shape[0] for b in stream] == [4, 2]
    assert torch.equal(torch.cat(list(stream)), frames) and torch.equal(stream.materialize(), frames)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")
def test_a_pull_that_stops_early_ends_the_decoder(pack):
    stream = sub(pack, "core.video").video_stream(DRIVING, batch_size=2)
    pull = iter(stream)
    next(pull)
    assert ffmpeg_children()  # the decoder is running
    pull.close()
    assert ffmpeg_children() == []


def test_video_frames_node_streams_what_get_video_components_decodes(pack):
    builtins = sub(pack, "headless.builtins")
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_VideoFrames"]()
    clip = builtins.HeadlessVideoFile(DRIVING)  # what the headless LoadVideo gives
    stream, audio, fps = node.run(clip)
    images, want_audio, want_fps = builtins.GetVideoComponents().execute(clip)
    assert torch.equal(stream.materialize(), images) and fps == want_fps == 25.0
    assert audio["sample_rate"] == want_audio["sample_rate"] and torch.equal(audio["waveform"],
                                                                             want_audio["waveform"])


def test_video_frames_node_spills_an_uploaded_video_and_removes_it_with_the_stream(pack, tmp_path):
    """ComfyUI's VideoFromFile may hold an upload in memory (a BytesIO): it is written once to the temp folder,
    decoded from there on every pull, and deleted when the stream is."""
    HOST = sub(pack, "core.host").HOST
    temp = Path(HOST.temp_dir())

    class Upload:  # the part of ComfyUI's VideoFromFile the node uses
        def __init__(self, data):
            self.data = io.BytesIO(data)

        def get_stream_source(self):
            self.data.seek(0)
            return self.data

        def get_frame_rate(self):
            return Fraction(25)

    stream, audio, fps = pack.NODE_CLASS_MAPPINGS["TalkingHead_VideoFrames"]().run(Upload(DRIVING.read_bytes()))
    spilled = list(temp.glob("talkinghead_*"))
    assert len(spilled) == 1 and fps == 25.0 and audio["sample_rate"] == 16000
    frames, _ = sub(pack, "core.video").load_video(DRIVING)
    assert torch.equal(stream.materialize(), frames) and torch.equal(stream.materialize(), frames)
    del stream
    gc.collect()
    assert list(temp.glob("talkinghead_*")) == []


def test_video_frames_node_takes_a_video_made_of_frames(pack):
    """A VIDEO with its frames in memory already (CreateVideo's) is streamed from them."""
    images = torch.rand(5, 16, 24, 3)
    clip = sub(pack, "headless.builtins").HeadlessVideo(images, None, Fraction(30))
    stream, audio, fps = pack.NODE_CLASS_MAPPINGS["TalkingHead_VideoFrames"]().run(clip)
    assert audio is None and fps == 30.0 and torch.equal(stream.materialize(), images)


def test_a_silent_video_has_no_audio_and_a_broken_one_is_an_error(pack, tmp_path):
    video = sub(pack, "core.video")
    silent = tmp_path / "silent.mp4"
    video.write_video(silent, torch.rand(4, 32, 32, 3), fps=25.0)
    stream, audio = video.open_video(silent)
    assert audio is None and stream.count == 4
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(DRIVING.read_bytes()[:300])
    with pytest.raises(sub(pack, "core.errors").InputError, match="broken.mp4"):
        video.open_video(broken)


def test_extract_motion_from_a_stream_equals_from_an_image_batch(pack, tmp_path):
    """The driving crop found on a stream (one pull keeping the few frames the face is looked for in) and the motion
    extracted batch by batch are those of the whole IMAGE batch."""
    from test_lp_nodes import models_dir

    models_dir(tmp_path / "models")
    video = sub(pack, "core.video")
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_LivePortraitExtractMotion"]()
    lps = lp_set(pack)
    images, _ = video.load_video(DRIVING)
    stream = video.video_stream(DRIVING, batch_size=4)
    for crop in ("detect face (one box for the video)", "as is (already face crops)"):
        (want,) = node.run(lps, images, 25.0, crop, "center", 4)
        (got,) = node.run(lps, None, 25.0, crop, "center", 4, driving_frames=stream)
        assert len(got) == len(want) == 6
        for name in ("exp", "pitch", "yaw", "roll", "t", "scale"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (crop, name)
    with pytest.raises(sub(pack, "core.errors").InputError, match="connect either driving_frames"):
        node.run(lps, images, 25.0, "as is (already face crops)", "center", 4, driving_frames=stream)
