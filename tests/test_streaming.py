"""Streaming API: audio pushed in small chunks yields rendered frames before the audio ends (tiny weights)."""
import pytest
import torch

import tolerance as tol
from conftest import FIXTURES
from core.liveportrait import load as L
from core.liveportrait.render import prepare_source
from core.motion.streaming import TalkingHeadStream, silence_features
from live_common import StubEncoder, speech, tiny_lmdm

LP = FIXTURES / "liveportrait" / "weights"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    models = L.load_liveportrait({k: LP / f"{k}.safetensors" for k in L.KINDS}, L.preset("tiny"))
    source = prepare_source(models, torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1)),
                            device="cpu", size=models.input_size)
    return models, source, tiny_lmdm(tmp_path_factory.mktemp("ditto")), StubEncoder()


def run(parts, audio, chunk):
    models, source, lmdm, enc = parts
    stream = TalkingHeadStream(models, source, lmdm, enc, steps=3, seed=7, device="cpu")
    out, arrivals = [], []
    for i in range(0, audio.numel(), chunk):
        for frames in stream.push(audio[i:i + chunk]):
            out.append(frames)
            arrivals.append(stream.samples_in)
    for frames in stream.flush():
        out.append(frames)
        arrivals.append(stream.samples_in)
    return torch.cat(out), arrivals, stream


def test_frames_arrive_before_the_audio_ends(parts):
    audio = speech(2.4)
    frames, arrivals, stream = run(parts, audio, 1600)  # 0.1 s chunks
    assert frames.shape[0] == 60 and frames.shape[1] == 3  # one frame per 40 ms of audio, cut to its length
    assert 0 <= frames.min() and frames.max() <= 1
    assert arrivals[0] < audio.numel() / 2, "the first frames must come while most of the audio is still to come"
    assert stream.stats["first_frame_audio_s"] == pytest.approx(arrivals[0] / 16000)
    assert stream.stats["first_frame_audio_s"] <= 1.0 and stream.stats["first_frame_wall_s"] > 0
    # every 10-frame block needs about 0.9 s of audio beyond its first frame, not the whole file
    assert all(a <= min(audio.numel(), (10 * k + 23) * 640 + 3200) for k, a in enumerate(arrivals))


def test_chunk_size_does_not_change_the_result(parts):
    audio = speech(1.6, seed=3)
    a, _, _ = run(parts, audio, 1600)
    b, _, _ = run(parts, audio, 5000)
    assert a.shape == b.shape
    # the same networks on other batch sizes: the encoder's chunks, Ditto's 3-step windows (one per 10 frames,
    # one more that only sets d0, one padded at the end), the keypoints, LivePortrait's warping and decoder
    windows = -(-a.shape[0] // 10) + 2
    net = tol.ditto_sampler(3, windows).then(tol.Net("66-bin expectations, rotation, transform", 3, tol.DEGREE_BINS))
    tol.close_network(a, b, net.then(tol.LP_STITCH).then(tol.LP_W).then(tol.LP_G))


def test_silence_buffer_and_errors(parts):
    models, source, lmdm, enc = parts
    sil = silence_features(enc)
    assert sil.shape == (70, 1024) and torch.allclose(sil, sil[:1].expand(70, -1))
    source.raw, raw = None, source.raw
    try:
        with pytest.raises(Exception, match="raw motion-extractor"):
            TalkingHeadStream(models, source, lmdm, enc)
    finally:
        source.raw = raw


def test_progress_and_cancel(parts):
    """Each motion window reports its DDIM steps through core.progress.Progress; the callback raising
    cancels the stream (the same route as the host's interrupt)."""
    from core.errors import Cancelled

    models, source, lmdm, enc = parts
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if len(calls) == 4:
            raise Cancelled("stop")

    stream = TalkingHeadStream(models, source, lmdm, enc, steps=3, seed=7, device="cpu", progress=progress)
    with pytest.raises(Cancelled, match="stop"):
        for _ in stream.push(speech(1.6)):
            pass
    assert calls == [(1, 3), (2, 3), (3, 3), (1, 3)]  # one Progress of `steps` per window
