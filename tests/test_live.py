"""Live mode's pipeline (core.live.LiveSession) on tiny weights: the same frames as the one-thread stream, the
audio handed back on the same timeline, idle feeding, the policy when compute falls behind, bounded memory,
errors, and closing."""
import threading
import time

import numpy as np
import pytest
import torch

from core.errors import InputError
from core.face import paste_back
from core.live import HOP, LiveConfig, LiveSession, fit_image, prepare_portrait, session as S
from core.liveportrait.render import mask_template, render_frames
from core.motion.streaming import MotionStream, num_frames
from live_common import speech, tiny_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_parts(tmp_path_factory.mktemp("lmdm"), precision="fp32")


@pytest.fixture(scope="module")
def portrait(parts):
    image = torch.rand(1, 96, 80, 3, generator=torch.Generator().manual_seed(1))
    return prepare_portrait(parts, image, detector="center")


class Collect:
    """A sink that keeps everything, as a client would receive it."""

    def __init__(self, drop_video=False):
        self.items, self.drop_video = [], drop_video
        self.lock = threading.Lock()

    def __call__(self, kind, index, payload):
        with self.lock:
            self.items.append((kind, index, payload))
        return not (self.drop_video and kind == "video")

    def of(self, kind):
        with self.lock:
            return [(i, p) for k, i, p in self.items if k == kind]


def raw_frames(monkeypatch):
    """Frames reach the sink as their float32 bytes instead of a JPEG (to compare them exactly)."""
    monkeypatch.setattr(S, "encode_jpeg", lambda frame, quality: frame.numpy().tobytes())


def run_to_end(live, audio, timeout=60):
    """Push ``audio``, start, stop and wait for the end; the session is closed afterwards."""
    live.push(audio)
    live.start()
    live.stop()
    assert live.wait(timeout)
    live.close()
    return live


def session(parts, portrait, sink, **config):
    source, full = portrait
    return LiveSession(parts, source, full, sink, LiveConfig(**{"steps": 3, **config}))


def test_pipeline_makes_the_frames_of_the_one_thread_stream(parts, portrait, monkeypatch):
    """Not realtime: every frame of the pushed audio, bit-equal to MotionStream + render + paste-back run one
    after another in one thread; the audio comes back on the same timeline; the end says how many."""
    raw_frames(monkeypatch)
    audio = speech(2.3).numpy()
    sink = Collect()
    live = session(parts, portrait, sink, realtime=False, seed=5)
    for i in range(0, audio.size, 1600):
        assert live.push(audio[i:i + 1600])
    live.start()
    live.stop()
    assert live.wait(120) and live.error is None
    live.close()

    source, full = portrait
    ref = MotionStream(parts.lp_models, source, parts.lmdm, parts.encoder, steps=3, seed=5)
    blocks = []
    for i in range(0, audio.size, 16000):          # the session feeds up to a second at a time
        blocks += ref.push(audio[i:i + 16000])
    blocks += ref.flush()
    want = []
    for _, x_d in blocks:
        for j in range(x_d.shape[0]):
            face = next(iter(render_frames(parts.lp_models, source, x_d[j:j + 1], batch_size=1, device="cpu",
                                           precision="fp32")))
            want.append(paste_back(full, face.permute(0, 2, 3, 1), source.record, mask=mask_template(),
                                   antialias=False, premultiplied=False)[0])
    video = sink.of("video")
    assert [i for i, _ in video] == list(range(num_frames(audio.size))) == list(range(len(want)))
    shape = tuple(full.shape[1:])
    for (i, payload), frame in zip(video, want):
        got = torch.from_numpy(np.frombuffer(payload, np.float32).reshape(shape).copy())
        assert torch.equal(got, frame), f"frame {i}"
    # the audio: contiguous from sample 0, the pushed samples as int16
    audio_out = sink.of("audio")
    assert [i for i, _ in audio_out] == list(np.cumsum([0] + [len(p) // 2 for _, p in audio_out])[:-1])
    echoed = np.frombuffer(b"".join(p for _, p in audio_out), "<i2")
    assert np.array_equal(echoed, np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16))
    assert sink.of("end") == [(num_frames(audio.size), audio.size)]
    st = live.stats()
    assert st["frames_sent"] == len(want) and st["frames_dropped_late"] == 0 and st["silence_fed_s"] == 0


def test_jpeg_frames_are_the_portrait_size(parts, portrait):
    from PIL import Image
    import io

    sink = Collect()
    live = session(parts, portrait, sink, realtime=False, jpeg_quality=90)
    run_to_end(live, speech(0.5).numpy())
    _, full = portrait
    frames = sink.of("video")
    assert len(frames) == num_frames(8000)
    img = np.asarray(Image.open(io.BytesIO(frames[0][1])).convert("RGB"), np.float32) / 255
    assert img.shape == tuple(full.shape[1:])
    # JPEG at quality 90 of a noisy picture: a few levels on average, never a black or white frame
    assert 0.05 < img.mean() < 0.95


def test_idle_then_speech_is_one_stream(parts, portrait, monkeypatch):
    """Realtime: with nothing pushed the session feeds silence at the wall clock (the portrait keeps moving:
    frames keep coming); speech then continues the same motion stream (no restart, so no cut): the keypoints
    equal one MotionStream fed the same silence and speech."""
    raw_frames(monkeypatch)
    fed = []
    real_push = MotionStream.push

    def spy(self, samples):
        fed.append(np.asarray(samples, np.float32).copy())
        return real_push(self, samples)

    monkeypatch.setattr(MotionStream, "push", spy)
    keypoints = []
    real_put = LiveSession._put

    def put(self, q, item):
        if q is self._blocks and isinstance(item, tuple):
            keypoints.append(item)
        return real_put(self, q, item)

    monkeypatch.setattr(LiveSession, "_put", put)
    sink = Collect()
    live = session(parts, portrait, sink, realtime=True, latency=30.0, seed=2).start()
    deadline = time.monotonic() + 60
    while live.stats()["silence_fed_s"] < 1.2 and time.monotonic() < deadline:
        time.sleep(0.05)
    audio = speech(1.0, seed=4).numpy()
    live.push(audio)
    time.sleep(0.3)
    live.stop()
    assert live.wait(120) and live.error is None
    live.close()
    st = live.stats()
    assert st["silence_fed_s"] >= 1.2 and st["frames_dropped_late"] == 0 and st["silence_skipped_s"] == 0
    assert any(np.array_equal(x, audio) for x in fed), "the speech is fed as pushed"
    # idle frames came before the speech's frames, and every frame of the timeline came, in order
    end_frames, end_samples = sink.of("end")[0]
    assert end_samples == sum(x.size for x in fed) and end_frames == num_frames(end_samples)
    assert [i for i, _ in sink.of("video")] == list(range(end_frames))
    # one stream: the same keypoints as a MotionStream fed the same pieces
    source, _ = portrait
    ref = MotionStream(parts.lp_models, source, parts.lmdm, parts.encoder, steps=3, seed=2)
    want = [b for x in list(fed) for b in real_push(ref, x)] + ref.flush()
    assert [f for f, _ in keypoints] == [f for f, _ in want]
    for (_, a), (_, b) in zip(keypoints, want):
        assert torch.equal(a, b)
    # the audio timeline: silence, then the speech, contiguous
    audio_out = sink.of("audio")
    starts = [i for i, _ in audio_out]
    assert starts == list(np.cumsum([0] + [len(p) // 2 for _, p in audio_out])[:-1])


def test_falling_behind_lowers_steps_drops_late_frames_and_stays_in_sync(parts, portrait, monkeypatch):
    """A renderer far slower than real time: the motion windows use fewer steps, frames that would be late
    are dropped (the ones sent are in order and on time for their deadline when rendering began), audio is
    never dropped, and the end still covers the whole timeline."""
    real = S.render_frames

    def slow(*args, **kwargs):
        time.sleep(0.25)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(S, "render_frames", slow)
    sink = Collect()
    live = session(parts, portrait, sink, realtime=True, latency=0.6, steps=8, min_steps=2)
    live.start()
    audio = speech(3.0).numpy()
    for i in range(0, audio.size, 3200):
        live.push(audio[i:i + 3200])
        time.sleep(0.2)
    live.stop()
    assert live.wait(120) and live.error is None
    live.close()
    st = live.stats()
    video = [i for i, _ in sink.of("video")]
    end_frames, end_samples = sink.of("end")[0]
    assert st["frames_dropped_late"] > 0 and st["steps_lowered"] >= 1 and live.motion.steps < 8
    assert video == sorted(set(video)) and video and video[-1] < end_frames
    assert st["frames_sent"] + st["frames_dropped_late"] == end_frames
    samples = sum(len(p) // 2 for _, p in sink.of("audio"))
    assert samples == end_samples and end_frames == num_frames(end_samples)


def test_idle_time_is_skipped_when_the_motion_falls_behind(parts, portrait, monkeypatch):
    """Policy 3: motion slower than the clock while idle -> the silence in between is skipped (whole frames),
    the timeline jumps, and audio and frame indices stay on one timeline."""
    real = MotionStream.push

    def slow(self, samples):
        time.sleep(0.5)
        return real(self, samples)

    monkeypatch.setattr(MotionStream, "push", slow)
    sink = Collect()
    live = session(parts, portrait, sink, realtime=True, max_lag=0.3, latency=5.0).start()
    time.sleep(3.0)
    live.stop()
    assert live.wait(60) and live.error is None
    live.close()
    st = live.stats()
    assert st["silence_skipped_s"] > 0
    end_frames, end_samples = sink.of("end")[0]
    audio = sink.of("audio")
    assert audio[-1][0] + len(audio[-1][1]) // 2 == end_samples          # the last audio ends the timeline
    assert any(b[0] > a[0] + len(a[1]) // 2 for a, b in zip(audio, audio[1:])), "a skipped stretch"
    gaps = [b[0] - (a[0] + len(a[1]) // 2) for a, b in zip(audio, audio[1:])]
    assert all(g >= 0 and g % HOP == 0 for g in gaps), "whole frames are skipped, nothing overlaps"
    assert all(i < end_frames for i, _ in sink.of("video"))


def test_inbox_is_bounded_and_bad_audio_is_refused(parts, portrait):
    sink = Collect()
    live = session(parts, portrait, sink, realtime=False, max_audio_s=1.0)
    assert live.push(np.zeros(12000, np.float32))
    assert not live.push(np.zeros(8000, np.float32)), "more than max_audio_s waits"
    assert live.queued_s == pytest.approx(0.75)
    with pytest.raises(InputError, match="NaN"):
        live.push(np.array([0.0, np.nan], np.float32))
    live.stop()
    with pytest.raises(InputError, match="stopped"):
        live.push(np.zeros(10, np.float32))
    live.close()


def test_client_that_does_not_read_loses_frames_not_memory(parts, portrait):
    sink = Collect(drop_video=True)
    live = session(parts, portrait, sink, realtime=False)
    run_to_end(live, speech(0.8).numpy())
    st = live.stats()
    assert st["frames_dropped_client"] == num_frames(12800) and st["frames_sent"] == 0


def test_a_failing_renderer_ends_the_session_with_a_message(parts, portrait, monkeypatch):
    def broken(*args, **kwargs):
        yield torch.full((1, 3, 128, 128), float("nan"))

    monkeypatch.setattr(S, "render_frames", broken)
    sink = Collect()
    live = session(parts, portrait, sink, realtime=False)
    run_to_end(live, speech(0.8).numpy())
    errors = sink.of("error")
    assert len(errors) == 1 and "NaN" in errors[0][1] and not sink.of("end")


def test_close_mid_stream_ends_every_worker(parts, portrait):
    sink = Collect()
    live = session(parts, portrait, sink, realtime=True, latency=5.0).start()
    live.push(speech(3.0).numpy())
    time.sleep(0.5)
    live.close()
    assert not any(t.is_alive() for t in live._threads)
    assert live.queued_s == 0


def test_config_and_portrait_checks(parts):
    with pytest.raises(InputError, match="min_steps"):
        LiveConfig(steps=2, min_steps=3)
    with pytest.raises(InputError, match="jpeg_quality"):
        LiveConfig(jpeg_quality=100)
    big = torch.rand(1, 1000, 600, 3)
    assert tuple(fit_image(big, 512).shape) == (1, 512, 307, 3)
    small = torch.rand(1, 100, 60, 3)
    assert torch.equal(fit_image(small, 512), small)
