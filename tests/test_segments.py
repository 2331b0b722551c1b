"""JoinSegments / core.audio.join_segments: the story mode's concatenation keeps every speaker in sync."""
import pytest
import torch

from conftest import sub


def test_join_segments_node(pack):
    errors = sub(pack, "core.errors")
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_JoinSegments"]()
    a = torch.full((5, 8, 6, 3), 0.2)
    b = torch.full((3, 8, 6, 3), 0.7)
    c = torch.full((2, 8, 6, 3), 0.4)
    tone = {"waveform": torch.ones(1, 2, 16000), "sample_rate": 16000}    # stereo, 1 s: longer than 5 frames
    short = {"waveform": 0.5 * torch.ones(1, 1, 1000), "sample_rate": 8000}  # mono at 8 kHz, shorter than 3 frames
    frames, audio, stream = node.run(a, b, 25.0, audio_1=tone, audio_2=short, images_3=c)
    assert frames.shape == (10, 8, 6, 3) and torch.equal(frames[5:8], b)
    assert len(stream) == 10 and torch.equal(stream.materialize(), frames)
    w, sr = audio["waveform"], audio["sample_rate"]
    assert sr == 16000 and w.shape == (1, 2, 6400)            # 10 frames at 25 fps, the first segment's rate
    assert torch.all(w[0, :, :3200] == 1)                     # segment 1, trimmed to its 5 frames
    assert w[0, :, 3200:3200 + 1900].mean() == pytest.approx(0.5, abs=0.02)  # segment 2, resampled, both channels
    assert torch.all(w[0, :, 3200 + 2100:5120] == 0)           # ...padded with silence to its 3 frames
    assert torch.all(w[0, :, 5120:] == 0)                      # segment 3 has no audio: silence
    with pytest.raises(errors.InputError, match="ResizePad256"):
        node.run(a, torch.zeros(2, 4, 4, 3), 25.0)


def test_join_segments_of_frame_streams(pack):
    """frames_i (a frame stream) instead of images_i for any segment: the audio is fitted to each segment's frame
    count as with IMAGE batches, the joined frame_stream pulls each segment in turn (nothing before), the images
    output is made only when connected; one of the two inputs per segment, segments 1 and 2 needed."""
    errors, frames_mod = sub(pack, "core.errors"), sub(pack, "core.frames")
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_JoinSegments"]()
    a = torch.full((5, 8, 6, 3), 0.2)
    b = torch.full((3, 8, 6, 3), 0.7)
    tone = {"waveform": torch.ones(1, 2, 16000), "sample_rate": 16000}
    pulls = []

    def stream_of(x, name):
        def source():
            pulls.append(name)
            yield from (x[i:i + 2] for i in range(0, x.shape[0], 2))
        return frames_mod.FrameStream(source, x.shape[0], 8, 6, 25.0, label=name)

    images, audio, stream = node.run(a, b, 25.0, audio_1=tone)
    mixed_images, mixed_audio, mixed = node.run(None, b, 25.0, audio_1=tone, frames_1=stream_of(a, "a"))
    assert pulls == ["a"] and torch.equal(mixed_images, images)
    assert torch.equal(mixed_audio["waveform"], audio["waveform"]) and mixed_audio["sample_rate"] == 16000
    graph = {"7": {"class_type": "TalkingHead_JoinSegments", "inputs": {}},
             "8": {"class_type": "TalkingHead_MuxVideo", "inputs": {"frames": ["7", 2], "audio": ["7", 1]}}}
    pulls.clear()
    out, streamed_audio, joined = node.run(None, None, 25.0, audio_1=tone, frames_1=stream_of(a, "a"),
                                           frames_2=stream_of(b, "b"), prompt=graph, unique_id="7")
    assert out is None and pulls == [] and len(joined) == 8
    assert torch.equal(streamed_audio["waveform"], audio["waveform"])
    assert torch.equal(joined.materialize(), images) and pulls == ["a", "b"]
    with pytest.raises(errors.InputError, match="segment 2: connect either frames_2 .* or images_2"):
        node.run(a, None, 25.0)
    with pytest.raises(errors.InputError, match="segment 1 has frames from two inputs.*not both"):
        node.run(a, b, 25.0, frames_1=stream_of(a, "a"))
    with pytest.raises(errors.InputError, match="different frame sizes.*ResizePad256"):
        node.run(a, None, 25.0, frames_2=frames_mod.FrameStream.from_images(torch.zeros(2, 4, 4, 3)))
