import math
import subprocess

import numpy as np
import pytest
import torch

from core import audio as A
from core.errors import InputError


def tone(freq=440.0, seconds=1.0, sr=16000, channels=1, amp=0.5):
    t = torch.arange(int(seconds * sr)) / sr
    w = amp * torch.sin(2 * math.pi * freq * t)
    return A.Audio(w[None].repeat(channels, 1), sr)


def ffmpeg_encode(tmp_path, audio, name, extra=()):
    """Write a WAV with the stdlib, then let ffmpeg turn it into ``name`` (mp3, flac, m4a...)."""
    from core.video import _write_wav

    wav = tmp_path / "src.wav"
    _write_wav(wav, audio)
    out = tmp_path / name
    subprocess.run([A.ffmpeg_exe(), "-y", "-v", "error", "-i", str(wav), *extra, str(out)], check=True)
    return out


def test_comfy_dict_round_trip():
    a = tone(channels=2)
    d = A.to_comfy(a)
    assert d["waveform"].shape == (1, 2, 16000) and d["sample_rate"] == 16000
    b = A.from_comfy(d)
    assert torch.equal(a.waveform, b.waveform)
    with pytest.raises(InputError):
        A.from_comfy({"waveform": torch.zeros(1, 1, 5)})
    with pytest.raises(InputError):
        A.from_comfy({"waveform": torch.zeros(1, 1, 5), "sample_rate": 0})


@pytest.mark.parametrize("name,extra", [("a.wav", ()), ("a.flac", ()), ("a.mp3", ()), ("a.m4a", ("-c:a", "aac"))])
def test_load_formats_keep_rate_and_channels(tmp_path, name, extra):
    src = tone(channels=2, sr=44100, seconds=0.5)
    path = ffmpeg_encode(tmp_path, src, name, extra)
    got = A.load_audio(path)
    assert got.sample_rate == 44100 and got.channels == 2
    assert abs(got.duration - 0.5) < 0.06  # lossy codecs add priming/padding
    if name in ("a.wav", "a.flac"):  # lossless: the samples themselves (16-bit quantised)
        assert torch.allclose(got.waveform, src.waveform, atol=1e-4)


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        A.load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(InputError, match="bad.mp3"):
        A.load_audio(bad)
    empty = ffmpeg_encode(tmp_path, A.Audio(torch.zeros(1, 0), 16000), "empty.wav")
    with pytest.raises(InputError, match="no samples|no audio|could not"):
        A.load_audio(empty)


def test_mono_and_resample_match_the_signal():
    st = A.Audio(torch.stack([torch.ones(4800) * 0.2, torch.ones(4800) * 0.6]), 48000)
    mono = A.to_mono(st)
    assert mono.channels == 1 and torch.allclose(mono.waveform, torch.full((1, 4800), 0.4))
    x = tone(freq=440, seconds=1.0, sr=48000)
    y = A.resample(x, 16000)
    assert y.sample_rate == 16000 and y.num_samples == 16000
    ref = tone(freq=440, seconds=1.0, sr=16000).waveform
    # a band-limited tone survives resampling (edges excluded: filter transients)
    assert torch.allclose(y.waveform[:, 200:-200], ref[:, 200:-200], atol=2e-3)
    assert A.resample(y, 16000) is y


def test_prepare_checks_and_converts():
    out = A.prepare(A.to_comfy(tone(channels=2, sr=8000)), 16000)
    assert out.channels == 1 and out.sample_rate == 16000 and out.num_samples == 16000
    with pytest.raises(InputError, match="empty"):
        A.prepare(A.Audio(torch.zeros(1, 0), 16000))
    with pytest.raises(InputError, match="silent"):
        A.prepare(A.Audio(torch.zeros(1, 100), 16000), require_sound=True)


def test_fit_length_and_frames():
    a = tone(seconds=1.0)
    assert A.fit_length(a, 8000).num_samples == 8000
    longer = A.fit_length(a, 20000)
    assert longer.num_samples == 20000 and torch.all(longer.waveform[:, 16000:] == 0)
    assert A.samples_for_frames(25, 25, 16000) == 16000
    assert A.num_video_frames(a, 25) == 25
    assert A.num_video_frames(A.fit_length(a, 16001), 25) == 26


def test_energy_envelope_follows_loudness():
    quiet = torch.zeros(8000)
    loud = 0.8 * torch.sin(torch.arange(8000) / 16000 * 2 * math.pi * 200)
    env = A.energy_envelope(A.Audio(torch.cat([quiet, loud])[None], 16000), fps=25)
    assert env.shape == (25,)
    assert env[:12].max() < 0.01 and env[13:].min() > 0.9
    assert torch.all(A.energy_envelope(A.Audio(torch.zeros(1, 1600), 16000)) == 0)


# ------------------------------------------------------------------------ damaged files
def float_wav(path, samples, sr=16000, declared_bytes=None):
    """A 32-bit float WAV (the one common format that can store NaN/inf) of ``samples`` [T] or [T, C];
    ``declared_bytes`` overrides the data chunk's size field (a cut file, or 0xFFFFFFFF for a streamed one)."""
    import struct

    x = np.asarray(samples, dtype="<f4")
    ch = 1 if x.ndim == 1 else x.shape[1]
    data = x.tobytes()
    fmt = struct.pack("<HHIIHH", 3, ch, sr, sr * 4 * ch, 4 * ch, 32)
    size = len(data) if declared_bytes is None else declared_bytes
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + body)
    return path


def test_non_finite_samples_are_refused_naming_the_file_and_count(tmp_path):
    x = 0.3 * tone(seconds=1.0).waveform[0].numpy()
    x[100:112] = float("nan")
    x[5000] = float("inf")
    with pytest.raises(InputError) as err:
        A.load_audio(float_wav(tmp_path / "broken take.wav", x))
    msg = str(err.value)
    assert "'broken take.wav'" in msg and "13 NaN/inf samples of 16000" in msg and "Re-export" in msg
    # stereo: every channel's samples count
    st = np.stack([x, np.zeros_like(x)], axis=1)
    with pytest.raises(InputError, match=r"13 NaN/inf samples of 32000"):
        A.load_audio(float_wav(tmp_path / "stereo.wav", st))
    x[:] = 0.1  # the same file format with finite values loads
    assert A.load_audio(float_wav(tmp_path / "fine.wav", x)).num_samples == 16000


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "cut short" in r.getMessage()]


def test_truncated_wav_is_used_with_a_warning_saying_how_much_was_read(tmp_path, caplog):
    caplog.set_level("WARNING")
    whole = ffmpeg_encode(tmp_path, tone(seconds=2.0), "whole.wav")  # 16-bit PCM, as most files are
    data = whole.read_bytes()
    header = len(data) - 2 * 16000 * 2
    (tmp_path / "cut.wav").write_bytes(data[:header + 16000 * 2])  # the body cut at 50 %
    got = A.load_audio(tmp_path / "cut.wav")
    assert got.duration == pytest.approx(1.0)
    (msg,) = _warnings(caplog)
    assert "'cut.wav'" in msg and "read 1.00 s of the 2.00 s its header declares (50 %)" in msg
    caplog.clear()
    assert A.load_audio(whole).duration == pytest.approx(2.0) and _warnings(caplog) == []
    # a WAV written to a pipe declares no size (0xFFFFFFFF): nothing to compare, no warning
    A.load_audio(float_wav(tmp_path / "piped.wav", np.zeros(800) + 0.1, declared_bytes=0xFFFFFFFF))
    assert _warnings(caplog) == []


def test_truncated_flac_warns_and_other_formats_are_not_guessed(tmp_path, caplog):
    caplog.set_level("WARNING")
    flac = ffmpeg_encode(tmp_path, tone(seconds=2.0), "whole.flac")
    assert A.declared_seconds(flac) == pytest.approx(2.0)
    data = flac.read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[:len(data) // 2])
    got = A.load_audio(tmp_path / "cut.flac")
    (msg,) = _warnings(caplog)
    assert f"read {got.duration:.2f} s of the 2.00 s" in msg and got.duration < 1.5
    caplog.clear()
    A.load_audio(flac)
    mp3 = ffmpeg_encode(tmp_path, tone(seconds=2.0), "whole.mp3")
    assert A.declared_seconds(mp3) is None  # a bitrate estimate at best: not compared
    assert _warnings(caplog) == []


def test_audio_shorter_than_one_video_frame_is_refused():
    where = "SomeNode's audio input"
    with pytest.raises(InputError, match=r"only 0\.0001 s long \(1 sample at 16000 Hz\), shorter than one video "
                                         r"frame at 25 fps \(0\.040 s\)"):
        A.require_one_frame(A.Audio(torch.ones(1, 1) * 0.1, 16000), 25.0, where)
    with pytest.raises(InputError, match="SomeNode's audio input is empty"):
        A.require_one_frame(A.Audio(torch.zeros(1, 0), 16000), 25.0, where)
    assert A.require_one_frame(A.to_comfy(A.Audio(torch.zeros(1, 640), 16000)), 25.0, where).num_samples == 640
    with pytest.raises(InputError, match="SomeNode"):
        A.require_one_frame(A.Audio(torch.zeros(1, 639), 16000), 25.0, where)
    assert A.require_one_frame(A.Audio(torch.zeros(1, 534), 16000), 30.0, where).num_samples == 534  # 533.3 needed
