"""core.frames: the frame stream (pulled batch by batch, any number of times) and the up-front memory check of
a whole video as one IMAGE batch."""
import pytest
import torch

from core import frames as F
from core.errors import Cancelled, FramesTooLargeError, InputError, TalkingHeadError
from core.host import HOST


def counting_stream(n=10, h=4, w=6, batch=3):
    """A stream of ``n`` frames whose frame i is filled with i; ``pulls`` counts the runs of its source."""
    pulls = []

    def source():
        pulls.append(1)
        for i in range(0, n, batch):
            k = min(batch, n - i)
            yield torch.arange(i, i + k, dtype=torch.float32).reshape(k, 1, 1, 1).expand(k, h, w, 3).clone()
    return F.FrameStream(source, n, h, w, fps=25.0, label="test frames"), pulls


def test_a_stream_is_lazy_and_can_be_pulled_again():
    stream, pulls = counting_stream()
    assert pulls == [] and len(stream) == 10 and stream.nbytes == 10 * 4 * 6 * 3 * 4
    first = torch.cat(list(stream))
    again = stream.materialize()
    assert pulls == [1, 1] and torch.equal(first, again) and again[:, 0, 0, 0].tolist() == list(range(10))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 10, 25])
def test_batches_of_any_size(size):
    stream, _ = counting_stream()
    parts = list(stream.batches(size))
    assert [p.shape[0] for p in parts] == [min(size, 10 - i) for i in range(0, 10, size)]
    assert torch.cat(parts)[:, 0, 0, 0].tolist() == list(range(10))


def test_map_and_concat_keep_counts_sizes_and_order():
    a, _ = counting_stream(5, batch=2)
    b, _ = counting_stream(4, batch=4)
    halves = a.map(lambda x: x[:, ::2, ::2] / 2, 2, 3)
    assert (halves.height, halves.width, len(halves)) == (2, 3, 5)
    assert torch.cat(list(halves))[:, 0, 0, 0].tolist() == [0, 0.5, 1, 1.5, 2]
    both = F.FrameStream.concat([a, b])
    assert len(both) == 9 and torch.cat(list(both))[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    with pytest.raises(InputError, match="resize them to one size"):
        F.FrameStream.concat([a, halves])


def test_from_images_makes_views_not_copies():
    images = torch.rand(7, 4, 5, 3)
    stream = F.FrameStream.from_images(images, fps=30.0, batch_size=3)
    parts = list(stream)
    assert [p.shape[0] for p in parts] == [3, 3, 1] and parts[0].data_ptr() == images.data_ptr()
    with pytest.raises(InputError, match=r"expected an IMAGE batch \[B,H,W,3\]"):
        F.FrameStream.from_images(torch.rand(4, 5, 3))


def test_a_producer_that_lies_about_its_length_or_size_is_an_error():
    short = F.FrameStream(lambda: [torch.zeros(2, 4, 6, 3)], 3, 4, 6, label="short")
    with pytest.raises(TalkingHeadError, match="short: the producer ended after 2 of the 3 frames"):
        list(short)
    long = F.FrameStream(lambda: [torch.zeros(2, 4, 6, 3)] * 2, 3, 4, 6, label="long")
    with pytest.raises(TalkingHeadError, match="made more than the 3 frames"):
        list(long)
    wrong = F.FrameStream(lambda: [torch.zeros(2, 4, 5, 3)], 2, 4, 6, label="wrong")
    with pytest.raises(TalkingHeadError, match=r"a batch of shape \(2, 4, 5, 3\) in a stream of 6x4 frames"):
        list(wrong)


def test_cancel_stops_the_pull_between_batches(monkeypatch):
    stream, _ = counting_stream(10, batch=2)
    seen = []

    def interrupt():
        if len(seen) == 2:
            raise Cancelled("cancelled by the user")

    monkeypatch.setattr(HOST, "check_interrupt", interrupt)
    with pytest.raises(Cancelled):
        for batch in stream:
            seen.append(batch.shape[0])
    assert seen == [2, 2]


def test_a_video_that_does_not_fit_is_refused_before_any_work(monkeypatch):
    """15,000 frames of 480x600 (10 minutes at 25 fps) are 51.8 GB as float32: refused with the size, what is
    free and the way out, and the producer never runs."""
    ran = []
    huge = F.FrameStream(lambda: ran.append(1) or [], 15000, 600, 480, label="LivePortraitRender's frames")
    monkeypatch.setattr(F, "available_memory", lambda: 8 * 2 ** 30)
    with pytest.raises(FramesTooLargeError, match=r"LivePortraitRender's frames: 15000 frames of 480x600 as one "
                                                  r"IMAGE batch would need 48\.3 GiB, and 8\.0 GiB of memory is free\. "
                                                  r"Connect the stream instead"):
        huge.materialize(alternative="Connect the stream instead.")
    assert ran == []
    small, _ = counting_stream()
    assert small.materialize().shape == (10, 4, 6, 3)  # 2.9 KB fits
    monkeypatch.setattr(F, "available_memory", lambda: None)  # unknown: no refusal
    huge.check_fits()


def test_available_memory_is_a_plausible_number():
    free = F.available_memory()
    assert free is None or 2 ** 20 < free < 2 ** 50


def test_a_pull_that_stops_early_ends_the_producer_at_once(monkeypatch):
    """A cancel between batches closes the producer right away, so its clean-up (a model unload) runs now."""
    closed = []

    def source():
        try:
            for i in range(5):
                yield torch.zeros(2, 4, 6, 3)
        finally:
            closed.append(1)

    stream = F.FrameStream(source, 10, 4, 6)
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise Cancelled("cancelled by the user")

    monkeypatch.setattr(HOST, "check_interrupt", interrupt)
    pull = iter(stream)
    with pytest.raises(Cancelled):
        for _ in pull:
            pass
    assert closed == [1]


def ranged_stream(n=10, h=2, w=3, batch=3):
    """Like counting_stream, with a ``ranged`` producer that makes only the frames asked for (``made`` lists them)."""
    made = []

    def ranged(start, stop):
        for i in range(start, stop, batch):
            k = min(batch, stop - i)
            made.extend(range(i, i + k))
            yield torch.arange(i, i + k, dtype=torch.float32).reshape(k, 1, 1, 1).expand(k, h, w, 3).clone()
    return F.FrameStream(lambda: ranged(0, n), n, h, w, fps=25.0, label="ranged", ranged=ranged), made


def values(stream):
    batches = list(stream)
    return torch.cat(batches)[:, 0, 0, 0].tolist() if batches else []


@pytest.mark.parametrize("start,stop", [(0, 10), (0, 1), (2, 7), (3, 6), (9, 10), (4, 4), (0, 0), (10, 10)])
def test_sections_are_the_same_frames_as_the_whole(start, stop):
    """A section gives exactly frames start..stop-1: with a ranged producer it makes only those; without one it
    pulls from the start and stops as soon as it has them; through map, derive and concat alike."""
    plain, pulls = counting_stream(10, h=2, w=3)
    ranged, made = ranged_stream(10)
    want = list(range(start, stop))
    assert values(plain.section(start, stop)) == want and len(plain.section(start, stop)) == stop - start
    assert values(ranged.section(start, stop)) == want and made == want          # nothing else was made
    doubled = ranged.map(lambda b: b * 2, 2, 3)
    made.clear()
    assert values(doubled.section(start, stop)) == [2 * v for v in want] and made == want
    seen = []

    def around(batches, count):
        seen.append(count)
        yield from batches
    made.clear()
    assert values(ranged.derive(around).section(start, stop)) == want and seen == [stop - start] and made == want
    joined = F.FrameStream.concat([ranged_stream(4)[0], plain.section(0, 6)])   # 0..3 then 0..5
    assert values(joined.section(start, stop)) == ([0, 1, 2, 3] + list(range(6)))[start:stop]
    images = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1).expand(10, 2, 3, 3)
    assert values(F.FrameStream.from_images(images, batch_size=4).section(start, stop)) == want


def test_a_section_outside_the_stream_is_refused():
    stream, _ = counting_stream(5)
    for start, stop in [(-1, 2), (3, 2), (0, 6)]:
        with pytest.raises(InputError, match="not within its 5 frames"):
            stream.section(start, stop)


def test_liveportrait_sections_render_in_the_whole_renders_batches(monkeypatch):
    """LivePortrait's frame stream renders a section in the batches a whole render uses (from the batch holding its
    first frame), so each frame is computed exactly as in the whole video, and only a batch's worth more."""
    from core.liveportrait import pipeline

    calls = []

    def fake_render_pasted(models, source, x_d, full, batch_size, **kw):
        for i in range(0, x_d.shape[0], batch_size):
            chunk = x_d[i:i + batch_size]
            calls.append(chunk[:, 0, 0].tolist())
            faces = (chunk[:, :1, :1].reshape(-1, 1, 1, 1) + 0 * torch.zeros(1, 4, 4, 3))
            yield faces, None
    monkeypatch.setattr(pipeline, "render_pasted", fake_render_pasted)
    models = type("M", (), {"output_size": 4})()
    x_d = torch.arange(11, dtype=torch.float32).reshape(11, 1, 1).expand(11, 21, 3).contiguous()
    stream = pipeline.render_stream(models, None, x_d, batch_size=4)
    whole = values(stream)
    batches = list(calls)
    assert whole == list(range(11)) and batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    for start, stop in [(0, 11), (5, 7), (3, 9), (8, 11), (7, 8)]:
        calls.clear()
        assert values(stream.section(start, stop)) == list(range(start, stop))
        assert all(b in batches for b in calls) and len(calls) == (stop - 1) // 4 - start // 4 + 1
