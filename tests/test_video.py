import math
import os
import stat

import numpy as np
import pytest
import torch

from core import video as V
from core.audio import Audio
from core.errors import InputError


def speechlike(seconds, sr=16000, channels=1):
    t = torch.arange(int(seconds * sr)) / sr
    return Audio((0.3 * torch.sin(2 * math.pi * 300 * t))[None].repeat(channels, 1), sr)


def gradient_frames(n, h, w):
    """Frames whose mean brightness encodes their index, to check order and count after decoding."""
    base = torch.linspace(0.1, 0.9, n)[:, None, None, None]
    return base.expand(n, h, w, 3).clone()


@pytest.mark.parametrize("audio_seconds", [0.5, 2.0, 3.0])  # shorter, equal, longer than the video
def test_mp4_streams_size_count_and_audio_fitted(tmp_path, audio_seconds):
    frames = gradient_frames(50, 64, 48)
    path = V.write_video(tmp_path / "a.mp4", frames, fps=25, audio=speechlike(audio_seconds, 44100, 2), chunk=7)
    info = V.probe(path)
    assert info["video"]["codec"] == "h264" and info["video"]["pix_fmt"] == "yuv420p"
    assert (info["video"]["width"], info["video"]["height"]) == (48, 64)
    assert info["video"]["frames"] == 50 and info["video"]["fps"] == 25.0
    assert info["audio"]["codec"] == "aac" and info["audio"]["sample_rate"] == 44100 and info["audio"]["channels"] == 2
    assert V.audio_duration(path) == pytest.approx(2.0, abs=1e-3)
    decoded = np.stack(list(V.read_frames(path)))
    assert decoded.shape == (50, 64, 48, 3)
    means = decoded.reshape(50, -1).mean(1)
    assert np.all(np.diff(means) > 0)  # frame order kept
    assert abs(means[0] - 0.1 * 255) < 3 and abs(means[-1] - 0.9 * 255) < 3


def test_streaming_writer_without_known_length_fits_audio(tmp_path):
    frames = gradient_frames(30, 32, 32)
    with V.VideoWriter(tmp_path / "s.mp4", fps=25, audio=speechlike(5.0)) as w:
        for i in range(0, 30, 4):
            w.write(frames[i:i + 4])
    assert w.frames_written == 30
    assert V.probe(tmp_path / "s.mp4")["video"]["frames"] == 30
    assert V.audio_duration(tmp_path / "s.mp4") == pytest.approx(1.2, abs=1e-3)


def test_odd_sizes_are_padded_to_even(tmp_path):
    frames = torch.rand(5, 33, 17, 3)
    path = V.write_video(tmp_path / "odd.mp4", frames, fps=10)
    info = V.probe(path)
    assert (info["video"]["width"], info["video"]["height"]) == (18, 34)
    assert info["audio"] is None


def test_metadata_is_embedded(tmp_path):
    meta = {"prompt": '{"1": {"class_type": "X", "inputs": {"a": "b=c;#d"}}}'}
    path = V.write_video(tmp_path / "m.mp4", torch.rand(3, 16, 16, 3), metadata=meta)
    import subprocess

    out = subprocess.run([V.ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                         capture_output=True, text=True).stdout
    assert 'prompt={"1": {"class_type": "X", "inputs": {"a": "b\\=c\\;\\#d"}}}' in out


def test_failure_and_cancel_leave_no_file(tmp_path):
    target = tmp_path / "never.mp4"
    with pytest.raises(RuntimeError):
        with V.VideoWriter(target, fps=25, audio=speechlike(1)) as w:
            w.write(torch.rand(4, 16, 16, 3))
            raise RuntimeError("user pressed cancel")
    assert not target.exists()
    assert os.listdir(tmp_path) == []  # the temporary file is gone too
    with pytest.raises(InputError, match="size changed"):
        with V.VideoWriter(target) as w:
            w.write(torch.rand(2, 16, 16, 3))
            w.write(torch.rand(2, 18, 16, 3))
    assert os.listdir(tmp_path) == []
    with pytest.raises(InputError, match="empty"):
        V.write_video(target, torch.zeros(0, 16, 16, 3))
    assert os.listdir(tmp_path) == []


def test_existing_file_untouched_when_write_fails(tmp_path):
    target = tmp_path / "keep.mp4"
    target.write_bytes(b"previous result")
    with pytest.raises(ValueError):
        with V.VideoWriter(target) as w:
            w.write(torch.rand(2, 16, 16, 3))
            raise ValueError("boom")
    assert target.read_bytes() == b"previous result"


def test_audio_muxed_after_the_frames_keeps_the_guarantees(tmp_path, monkeypatch):
    """Without a known length the audio is added by a second ffmpeg run into a temporary file that
    replaces the partial one: the video gets a new file's rights, and a failed mux leaves no video,
    no temporary file, and an older video of the same name as it was."""
    umask = os.umask(0)
    os.umask(umask)
    with V.VideoWriter(tmp_path / "ok.mp4", fps=25, audio=speechlike(1.0), preset="ultrafast") as w:
        w.write(gradient_frames(10, 16, 16))
    assert V.probe(tmp_path / "ok.mp4")["audio"]["codec"] == "aac"
    assert stat.S_IMODE((tmp_path / "ok.mp4").stat().st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["ok.mp4"]
    target = tmp_path / "keep.mp4"
    target.write_bytes(b"previous result")
    monkeypatch.setattr(V.VideoWriter, "_AAC", ["-c:a", "no_such_encoder"])
    with pytest.raises(V.VideoWriteError, match="adding the audio"):
        with V.VideoWriter(target, fps=25, audio=speechlike(1.0), preset="ultrafast") as w:
            w.write(gradient_frames(10, 16, 16))
    assert target.read_bytes() == b"previous result"
    assert sorted(os.listdir(tmp_path)) == ["keep.mp4", "ok.mp4"]


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(V.VideoWriteError, match="writable"):
        V.VideoWriter(tmp_path / "a_file" / "x.mp4")  # the "folder" is a file
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere")
        with pytest.raises(V.VideoWriteError, match="writable"):
            V.VideoWriter(ro / "x.mp4")
    finally:
        ro.chmod(0o700)


def test_output_naming_and_traversal(tmp_path):
    p1, sub, name = V.output_path(tmp_path, "talks/anna")
    assert (sub, name) == ("talks", "anna_00001_.mp4") and p1.parent == tmp_path / "talks"
    p1.write_bytes(b"x")
    (tmp_path / "talks" / "anna_00007_.mp4").write_bytes(b"x")
    (tmp_path / "talks" / "annab_00099_.mp4").write_bytes(b"x")
    assert V.output_path(tmp_path, "talks/anna")[2] == "anna_00008_.mp4"
    for bad in ["../evil", "/etc/evil", "a/../../evil", "C:/evil", "", "a\x00b"]:
        with pytest.raises(InputError):
            V.output_path(tmp_path, bad)


def test_too_long_file_name_is_named_as_such(tmp_path):
    """A 300-character name fails with a message that says so (not 'is the output folder writable?')."""
    from core.video import VideoWriteError, write_video

    frames = torch.zeros(2, 16, 16, 3)
    with pytest.raises(VideoWriteError, match="too long") as info:
        write_video(tmp_path / ("x" * 300 + ".mp4"), frames, fps=25)
    assert "writable" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_write_hints():
    import errno

    from core.video import write_hint

    assert "full" in write_hint(OSError(errno.ENOSPC, "no space"), "a.mp4")
    assert "not writable" in write_hint(PermissionError(errno.EACCES, "denied"), "a.mp4")
    assert "too long" in write_hint(OSError(errno.ENAMETOOLONG, "long"), "a.mp4")
