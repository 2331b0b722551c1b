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
    frames, audio = node.run(a, b, 25.0, audio_1=tone, audio_2=short, images_3=c)
    assert frames.shape == (10, 8, 6, 3) and torch.equal(frames[5:8], b)
    w, sr = audio["waveform"], audio["sample_rate"]
    assert sr == 16000 and w.shape == (1, 2, 6400)            # 10 frames at 25 fps, the first segment's rate
    assert torch.all(w[0, :, :3200] == 1)                     # segment 1, trimmed to its 5 frames
    assert w[0, :, 3200:3200 + 1900].mean() == pytest.approx(0.5, abs=0.02)  # segment 2, resampled, both channels
    assert torch.all(w[0, :, 3200 + 2100:5120] == 0)           # ...padded with silence to its 3 frames
    assert torch.all(w[0, :, 5120:] == 0)                      # segment 3 has no audio: silence
    with pytest.raises(errors.InputError, match="ResizePad256"):
        node.run(a, torch.zeros(2, 4, 4, 3), 25.0)
